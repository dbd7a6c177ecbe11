//! OperatorService: status for operators, and the custodians' ceremonies.

use serde_json::{json, Map};

use crate::audit::{EventKind, Outcome};
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use super::{report, Ctx};
use crate::core::CoreError;
use crate::gate::Call;
use crate::policy::Action;
use crate::proto::{self, operator_service_server::OperatorService};
use crate::seal::{IssuedShare, ShareSpec};
use crate::secret::Pin;

pub struct OperatorApi {
    ctx: Ctx,
    /// Where a backup finds the audit key file and the token's storage
    /// (or why the token's storage could not be found).
    backup: Option<BackupTarget>,
}

/// What `Backup` needs besides the core.
pub struct BackupTarget {
    pub state_dir: std::path::PathBuf,
    pub token: Result<crate::backup::token::TokenStore, crate::backup::BackupError>,
}

/// The size of a backup's chunks on the wire.
const BACKUP_CHUNK: usize = 64 * 1024;
/// How long a backup stream waits for its reader to take the next chunk
/// before it is given up (and its slot freed).
const BACKUP_SEND_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl OperatorApi {
    pub fn new(ctx: Ctx) -> Self {
        OperatorApi { ctx, backup: None }
    }

    /// Serves `Backup` for this state directory and token.
    pub fn with_backup(mut self, target: BackupTarget) -> Self {
        self.backup = Some(target);
        self
    }
}

fn store_procedure(target: &Option<BackupTarget>) -> String {
    match target.as_ref().map(|t| &t.token) {
        Some(Ok(crate::backup::token::TokenStore::Vendor(p))) => p.clone(),
        _ => String::new(),
    }
}

fn core_result<T>(r: Result<Result<T, CoreError>, Status>) -> Result<T, Status> {
    r.and_then(|r| r.map_err(Status::from))
}

fn issued(shares: Vec<IssuedShare>) -> Vec<proto::IssuedShare> {
    shares
        .into_iter()
        .map(|s| proto::IssuedShare {
            label: s.label,
            // The share leaves its zeroizing type here, at the protobuf edge.
            share: s.share.as_str().to_string(),
            encrypted: s.encrypted,
        })
        .collect()
}

fn pin_field(field: &'static str, bytes: &mut Vec<u8>) -> Result<Pin, Status> {
    let pin = Pin::from_bytes(bytes).map_err(|reason| {
        Status::from(CoreError::InvalidArgument {
            field,
            reason: reason.to_string(),
        })
    });
    bytes.zeroize();
    pin
}

#[tonic::async_trait]
impl OperatorService for OperatorApi {
    async fn metrics(
        &self,
        request: Request<proto::MetricsRequest>,
    ) -> Result<Response<proto::MetricsResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "Metrics", Action::KeyRead)
            .await?;
        let render = self.ctx.gate.metrics_page();
        let res = tokio::task::spawn_blocking(move || render())
            .await
            .map_err(|e| Status::internal(e.to_string()))
            .map(|text| proto::MetricsResponse { text });
        self.ctx
            .finish_best_effort(&call, res)
            .await
            .map(Response::new)
    }

    async fn audit_hash(
        &self,
        request: Request<proto::AuditHashRequest>,
    ) -> Result<Response<proto::AuditHashResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "AuditHash", Action::AuditHash)
            .await?;
        let context = request.into_inner().context;
        // A person's look-ups, not a scan of an identifier space: each
        // value counts against the uid's rate; a refusal is audited once
        // per interval, as an alert.
        self.ctx
            .gate
            .take(&call, crate::limits::Limit::AuditHash, context.len() as u64)
            .await?;
        let mut extra = Map::new();
        extra.insert("values".into(), json!(context.len()));
        let res = match crate::core::validate::check_context(&context) {
            // The pairs have an encryption context's limits; the message
            // names this request's field.
            Err(crate::core::CoreError::InvalidArgument { reason, .. }) => {
                Err(Status::invalid_argument(format!("context: {reason}")))
            }
            Err(e) => Err(Status::from(e)),
            Ok(()) => {
                // The phase and the digest are read together, on the core.
                let (unsealed, digest) = self
                    .ctx
                    .run(&call, move |c| {
                        let unsealed = c.phase() == crate::seal::Phase::Unsealed;
                        (unsealed, unsealed.then(|| c.context_digest(&context)))
                    })
                    .await?;
                match digest {
                    Some(digest) if unsealed => {
                        let hashes: Result<std::collections::HashMap<String, String>, Status> =
                            digest
                                .iter()
                                .map(|(k, v)| match v.as_str() {
                                    Some(h) => Ok((k.clone(), h.to_string())),
                                    None => Err(Status::failed_precondition(
                                        "sealed: context values can be hashed only while unsealed",
                                    )),
                                })
                                .collect();
                        extra.insert("context".into(), serde_json::Value::Object(digest));
                        hashes.map(|hashes| proto::AuditHashResponse { hashes })
                    }
                    _ => Err(Status::failed_precondition(
                        "sealed: context values can be hashed only while unsealed (the key is the keyring's)",
                    )),
                }
            }
        };
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }

    type BackupStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<proto::BackupChunk, Status>> + Send + 'static>,
    >;

    async fn backup(
        &self,
        request: Request<proto::BackupRequest>,
    ) -> Result<Response<Self::BackupStream>, Status> {
        let call = self
            .ctx
            .authorize(&request, "Backup", Action::Backup)
            .await?;
        // Each backup is a whole file in memory until it is handed to the
        // transport: one streamed at a time, and a few an hour per uid (a
        // small file handed over at once is held by the connection until
        // read).
        self.ctx
            .gate
            .take(&call, crate::limits::Limit::Backups, 1)
            .await?;
        let slot = self.ctx.gate.backup_slot();
        let target = match &self.backup {
            _ if slot.is_none() => Err(Status::resource_exhausted(
                "backup: another backup is being taken or streamed; one at a time (a stream whose reader stops is given up after 60 s)",
            )),
            None => Err(Status::unimplemented("this daemon serves no backups")),
            Some(t) => match &t.token {
                Ok(store) => Ok((t.state_dir.clone(), store.clone())),
                Err(why) => Err(Status::failed_precondition(format!(
                    "backup: the token's storage could not be found: {why}"
                ))),
            },
        };
        let res = match target {
            Ok((dir, store)) => {
                core_result(self.ctx.run(&call, move |c| c.backup(&store, &dir)).await)
                    .map(|t| (t, store_procedure(&self.backup)))
            }
            Err(s) => Err(s),
        };
        let mut extra = Map::new();
        if let Ok((t, _)) = &res {
            extra.insert("backup".into(), json!(t.id));
            extra.insert("bytes".into(), json!(t.bytes.len()));
            extra.insert("generation".into(), json!(t.header.generation));
        }
        let (taken, procedure) = self.ctx.finish(&call, extra, res).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let info = proto::BackupInfo {
            id: taken.id.clone(),
            bytes: taken.bytes.len() as u64,
            generation: taken.header.generation,
            created_at: taken.header.created_at,
            set_id: taken.header.deployment.set_id.clone(),
            sealed: taken.header.sealed,
            token_files: taken.header.token_files,
            vendor_procedure: procedure,
            chain_head_seq: taken.header.chain_head.as_ref().map_or(0, |h| h.seq),
        };
        tokio::spawn(async move {
            let mut info = Some(info);
            for chunk in taken.bytes.chunks(BACKUP_CHUNK) {
                let msg = proto::BackupChunk {
                    data: chunk.to_vec(),
                    info: info.take(),
                };
                match tokio::time::timeout(BACKUP_SEND_WAIT, tx.send(Ok(msg))).await {
                    Ok(Ok(())) => {}
                    // Gone, or not reading: the file and the slot go.
                    _ => return,
                }
            }
        });
        // The slot goes with the stream: freed when the reader has taken
        // the last chunk or goes away.
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            move |chunk| {
                let _held = &slot;
                chunk
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn acknowledge_tampering(
        &self,
        request: Request<proto::AcknowledgeTamperingRequest>,
    ) -> Result<Response<proto::AcknowledgeTamperingResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "AcknowledgeTampering", Action::KeyAdmin)
            .await?;
        let reason = request.into_inner().reason;
        let mut extra = Map::new();
        extra.insert("reason".into(), crate::audit::summary(&reason));
        extra.insert("ALERT".into(), json!("TAMPERING ACKNOWLEDGEMENT"));
        let res = self.acknowledge_inner(&call, reason).await;
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "Status", Action::Status)
            .await?;
        let s = self
            .ctx
            .finish_best_effort(&call, self.ctx.run(&call, |c| c.status()).await)
            .await?;
        let guard = self.ctx.gate.guard();
        // Key names and the forwarder's target only for the roles that may
        // list keys (an app sees the daemon's health, not the key table).
        let sees_keys = matches!(call.role(), "admin" | "auditor");
        let mut reply = report::core_status(s, sees_keys);
        report::add_guard(&mut reply, guard, sees_keys);
        let conns = self.ctx.connections.stats();
        reply.connections_open = conns.open as u64;
        reply.connections_refused = conns.refused;
        reply.connections_timed_out = conns.timed_out;
        reply.dev_mode = self.ctx.dev_mode;
        reply.caller = report::caller(&call);
        Ok(Response::new(reply))
    }

    async fn ping(
        &self,
        _request: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingResponse>, Status> {
        Ok(Response::new(proto::PingResponse {}))
    }

    async fn init(
        &self,
        request: Request<proto::InitRequest>,
    ) -> Result<Response<proto::InitResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "Init", Action::Ceremony)
            .await?;
        let res = self.init_inner(&call, request.into_inner()).await;
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn unseal(
        &self,
        request: Request<proto::UnsealRequest>,
    ) -> Result<Response<proto::UnsealResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "Unseal", Action::Ceremony)
            .await?;
        let r = request.into_inner();
        let res = match if r.reset {
            Ok(())
        } else {
            self.ctx.gate.share_rate(&call).map_err(Status::from)
        } {
            Ok(()) => self.unseal_inner(&call, r).await,
            Err(s) => Err(s),
        };
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn seal(
        &self,
        request: Request<proto::SealRequest>,
    ) -> Result<Response<proto::SealResponse>, Status> {
        let call = self.ctx.authorize(&request, "Seal", Action::Seal).await?;
        let res = core_result(self.ctx.run(&call, |c| c.ceremonies().seal()).await)
            .map(|_| proto::SealResponse {});
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn rekey_start(
        &self,
        request: Request<proto::RekeyStartRequest>,
    ) -> Result<Response<proto::RekeyStartResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "RekeyStart", Action::Ceremony)
            .await?;
        let r = request.into_inner();
        let res = core_result(
            self.ctx
                .run(&call, move |c| {
                    c.ceremonies().rekey_start(ShareSpec {
                        shares: r.shares,
                        threshold: r.threshold,
                        recipients: &r.recipients,
                        labels: &r.labels,
                    })
                })
                .await,
        )
        .map(|(id, threshold)| proto::RekeyStartResponse {
            rekey_id: id,
            current_threshold: threshold.into(),
        });
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn rekey_submit(
        &self,
        request: Request<proto::RekeyShareRequest>,
    ) -> Result<Response<proto::RekeySubmitResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "RekeySubmit", Action::Ceremony)
            .await?;
        let res = match self.ctx.gate.share_rate(&call).map_err(Status::from) {
            Ok(()) => self.rekey_submit_inner(&call, request.into_inner()).await,
            Err(s) => Err(s),
        };
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn rekey_verify(
        &self,
        request: Request<proto::RekeyShareRequest>,
    ) -> Result<Response<proto::RekeyVerifyResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "RekeyVerify", Action::Ceremony)
            .await?;
        let share = request.into_inner().share;
        let res = match self.ctx.gate.share_rate(&call).map_err(Status::from) {
            Err(s) => {
                let mut share = share;
                share.zeroize();
                Err(s)
            }
            Ok(()) => core_result(
                self.ctx
                    .run(&call, move |c| {
                        let mut share = share;
                        let r = c.ceremonies().rekey_verify(&share);
                        share.zeroize();
                        r
                    })
                    .await,
            )
            .map(|p| proto::RekeyVerifyResponse {
                received: p.received as u32,
                threshold: p.threshold.into(),
                committed: p.complete,
                set_id: p.set_id,
            }),
        };
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn rekey_cancel(
        &self,
        request: Request<proto::RekeyCancelRequest>,
    ) -> Result<Response<proto::RekeyCancelResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "RekeyCancel", Action::Ceremony)
            .await?;
        let res = core_result(self.ctx.run(&call, |c| c.ceremonies().rekey_cancel()).await)
            .map(|_| proto::RekeyCancelResponse {});
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn reload_policy(
        &self,
        request: Request<proto::ReloadPolicyRequest>,
    ) -> Result<Response<proto::ReloadPolicyResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "ReloadPolicy", Action::Reload)
            .await?;
        let res = self
            .ctx
            .gate
            .reload_policy(&call)
            .map(|_| proto::ReloadPolicyResponse {})
            .map_err(|e| {
                Status::invalid_argument(format!("policy: {e}; the previous policy stays in force"))
            });
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }
}

impl OperatorApi {
    async fn acknowledge_inner(
        &self,
        call: &Call,
        reason: String,
    ) -> Result<proto::AcknowledgeTamperingResponse, Status> {
        crate::core::validate::reason("reason", &reason).map_err(Status::from)?;
        let actor = call.actor();
        let ack = self.ctx.run(call, move |c| {
            let r = c.acknowledge_tampering(&actor);
            if let Ok(a) = &r {
                c.event(EventKind::TamperingAcknowledged, Outcome::Ok,
                    json!({"ALERT": if a.complete { "REGISTRY ROLLBACK ACCEPTED" } else { "REGISTRY ROLLBACK ACKNOWLEDGED, NOT YET ACCEPTED" },
                           "reason": reason, "by_uid": actor.uid, "by": actor.principal,
                           "approvals": a.approvals, "approvals_needed": a.approvals_needed,
                           "replayed": a.replayed}),
                );
            }
            r
        })
        .await?
        .map_err(Status::from)?;
        Ok(proto::AcknowledgeTamperingResponse {
            accepted: ack.what,
            complete: ack.complete,
            approvals: ack.approvals as u32,
            approvals_needed: ack.approvals_needed as u32,
            unverified: ack.unverified.unwrap_or_default(),
            replayed: ack.replayed,
            lost: ack.lost,
        })
    }

    async fn init_inner(
        &self,
        call: &Call,
        mut r: proto::InitRequest,
    ) -> Result<proto::InitResponse, Status> {
        // The state first: on an initialised daemon the PIN fields do not
        // matter, and saying they are empty would mislead.
        if let Err(e) = self
            .ctx
            .run(call, |c| c.ceremonies().check_init_allowed())
            .await?
        {
            r.user_pin.zeroize();
            r.so_pin.zeroize();
            return Err(Status::from(e));
        }
        let user = pin_field("user_pin", &mut r.user_pin)?;
        let so = pin_field("so_pin", &mut r.so_pin)?;
        let (shares, threshold) = (r.shares, r.threshold);
        let out = self
            .ctx
            .run(call, move |c| {
                c.ceremonies().init(
                    ShareSpec {
                        shares,
                        threshold,
                        recipients: &r.recipients,
                        labels: &r.labels,
                    },
                    user,
                    so,
                )
            })
            .await??;
        let status = self.ctx.run(call, |c| c.status()).await?;
        Ok(proto::InitResponse {
            shares: issued(out),
            set_id: status.seal.set_id,
            threshold: status.seal.threshold.into(),
        })
    }

    async fn unseal_inner(
        &self,
        call: &Call,
        mut r: proto::UnsealRequest,
    ) -> Result<proto::UnsealResponse, Status> {
        if r.reset {
            self.ctx
                .run(call, |c| c.ceremonies().unseal_reset())
                .await??;
            let s = self.ctx.run(call, |c| c.status()).await?;
            return Ok(proto::UnsealResponse {
                sealed: s.seal.phase != crate::seal::Phase::Unsealed,
                received: 0,
                threshold: s.seal.threshold.into(),
                set_id: s.seal.set_id,
            });
        }
        let share = std::mem::take(&mut r.share);
        let accept = r.accept_restore_window;
        let p = self
            .ctx
            .run(call, move |c| {
                let mut share = share;
                let r = c.ceremonies().unseal(&share, accept);
                share.zeroize();
                r
            })
            .await??;
        Ok(proto::UnsealResponse {
            sealed: !p.complete,
            received: p.received as u32,
            threshold: p.threshold.into(),
            set_id: p.set_id,
        })
    }

    async fn rekey_submit_inner(
        &self,
        call: &Call,
        r: proto::RekeyShareRequest,
    ) -> Result<proto::RekeySubmitResponse, Status> {
        let share = r.share;
        let (p, new) = self
            .ctx
            .run(call, move |c| {
                let mut share = share;
                let r = c.ceremonies().rekey_submit(&share);
                share.zeroize();
                r
            })
            .await??;
        // The new set's id comes with its shares, from the same step (a
        // second Status call could race a cancel).
        let (new_set_id, new_shares) = match new {
            Some(set) => (set.set_id, issued(set.shares)),
            None => (String::new(), Vec::new()),
        };
        Ok(proto::RekeySubmitResponse {
            received: p.received as u32,
            threshold: p.threshold.into(),
            complete: p.complete,
            new_shares,
            new_set_id,
        })
    }
}
