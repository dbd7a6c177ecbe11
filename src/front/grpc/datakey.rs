//! DataKeyService: the applications' API. Each item is authorized by the
//! policy (or a break-glass grant) after its key is known, and audited with
//! its key, version, outcome and HMAC'd context before the reply is sent.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};
use tonic::{Request, Response, Status};

use super::{caller_of, Ctx};
use crate::core::{self, validate, CoreResult, Item};
use crate::gate::{code, Caller, DataCall, Use};
use crate::policy::Identity;
use crate::proto::{self, data_key_service_server::DataKeyService};

mod watch {
    //! One `WatchKeys` subscriber: key changes as the core publishes them,
    //! a heartbeat every 250 ms, and the end of the stream when the gate
    //! says the subscription may not go on (sealed, role withdrawn).

    use std::time::Duration;

    use tokio::sync::broadcast::error::RecvError;
    use tokio::sync::mpsc::Sender;
    use tonic::Status;

    use crate::core::KeyChange;
    use crate::gate::Watcher;
    use crate::proto::{key_event::Kind, KeyEvent};

    /// The heartbeat period (clients stop using cached keys after 750 ms
    /// of silence).
    pub const HEARTBEAT: Duration = Duration::from_millis(250);

    fn event(kind: Kind) -> KeyEvent {
        KeyEvent {
            kind: kind as i32,
            ..KeyEvent::default()
        }
    }

    /// Streams to `tx` until the subscriber goes or the gate ends it; the
    /// watcher (and the uid's stream slot) goes when this returns.
    pub async fn follow(watcher: Watcher, tx: Sender<Result<KeyEvent, Status>>) {
        let mut changes = watcher.subscribe();
        // A new subscriber knows nothing of what changed before it
        // subscribed: it starts by forgetting everything.
        if tx.send(Ok(event(Kind::Reset))).await.is_err() {
            return;
        }
        let mut beat = tokio::time::interval(HEARTBEAT);
        let mut access = watcher.access_epoch();
        loop {
            let ev = tokio::select! {
                _ = beat.tick() => {
                    if let Err(end) = watcher.check() {
                        let _ = tx.send(Ok(event(Kind::Reset))).await;
                        let _ = tx.send(Err(Status::from(end))).await;
                        return;
                    }
                    // The policy changed, or a break-glass grant came or
                    // went: what this caller may use can have changed.
                    let now = watcher.access_epoch();
                    if now != access {
                        access = now;
                        event(Kind::Reset)
                    } else {
                        event(Kind::Heartbeat)
                    }
                }
                change = changes.recv() => match change {
                    Ok(KeyChange::Changed { name, key_id, state }) => KeyEvent {
                        kind: Kind::Changed as i32,
                        key: name,
                        key_id,
                        state: state.to_string(),
                    },
                    Ok(KeyChange::Reset) | Err(RecvError::Lagged(_)) => event(Kind::Reset),
                    Err(RecvError::Closed) => return,
                },
            };
            // A subscriber that went away, or stopped reading for long
            // enough to fill the channel, is dropped.
            if tx.try_send(Ok(ev)).is_err() {
                return;
            }
        }
    }
}

pub struct DataKeyApi {
    ctx: Ctx,
}

impl DataKeyApi {
    pub fn new(ctx: Ctx) -> Self {
        DataKeyApi { ctx }
    }

    /// Runs a data-key operation and audits every item (its context
    /// HMAC'd).
    async fn run<T, R, F>(
        &self,
        caller: Caller,
        op: &'static str,
        contexts: Vec<HashMap<String, String>>,
        requests: R,
        f: F,
    ) -> Result<Vec<CoreResult<T>>, Status>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&core::Keywarden, R, core::Gate<'_>) -> CoreResult<Vec<Item<T>>> + Send + 'static,
    {
        let items = contexts.len();
        let details = move |c: &core::Keywarden| {
            // Only a context within its limits is digested for the log; an
            // oversized one is summarised (the item fails on the limits).
            contexts
                .iter()
                .map(|ctx| match validate::check_context(ctx) {
                    Ok(()) => {
                        let mut m = Map::new();
                        m.insert("context".into(), Value::Object(c.context_digest(ctx)));
                        m
                    }
                    Err(_) => {
                        let mut m = Map::new();
                        let mut inner = Map::new();
                        inner.insert("invalid_pairs".into(), json!(ctx.len()));
                        m.insert("context".into(), Value::Object(inner));
                        m
                    }
                })
                .collect()
        };
        let call = DataCall {
            op,
            usage: Use::DataKeys,
            items,
            details,
            requests,
            run: move |c: &core::Keywarden,
                       reqs,
                       guard: &crate::guard::Guard,
                       caller: &Identity| {
                let gate = move |key: &str, ctx: &BTreeMap<String, String>| {
                    guard.data_key_check(caller, key, ctx)
                };
                f(c, reqs, &gate)
            },
        };
        Ok(self.ctx.gate.data_path(&caller, call).await?)
    }

    async fn encrypt_many(
        &self,
        caller: Caller,
        op: &'static str,
        reqs: Vec<proto::EncryptRequest>,
    ) -> Result<Vec<CoreResult<core::Encrypted>>, Status> {
        let contexts = reqs.iter().map(|r| r.encryption_context.clone()).collect();
        let reqs: Vec<core::EncryptRequest> = reqs
            .into_iter()
            .map(|r| core::EncryptRequest {
                key: r.key,
                plaintext: zeroize::Zeroizing::new(r.plaintext),
                context: r.encryption_context,
            })
            .collect();
        self.run(caller, op, contexts, reqs, |c, reqs, gate| {
            c.data().encrypt(reqs, gate)
        })
        .await
    }

    async fn generate(
        &self,
        caller: Caller,
        op: &'static str,
        reqs: Vec<proto::GenerateDataKeyRequest>,
        with_plaintext: bool,
    ) -> Result<Vec<CoreResult<core::GeneratedKey>>, Status> {
        let contexts = reqs.iter().map(|r| r.encryption_context.clone()).collect();
        let reqs: Vec<core::GenerateRequest> = reqs
            .into_iter()
            .map(|r| core::GenerateRequest {
                key: r.key,
                context: r.encryption_context,
            })
            .collect();
        self.run(caller, op, contexts, reqs, move |c, reqs, gate| {
            c.data().generate_data_keys(reqs, with_plaintext, gate)
        })
        .await
    }

    async fn decrypt_many(
        &self,
        caller: Caller,
        op: &'static str,
        reqs: Vec<proto::DecryptRequest>,
    ) -> Result<Vec<CoreResult<core::Decrypted>>, Status> {
        let contexts = reqs.iter().map(|r| r.encryption_context.clone()).collect();
        let reqs: Vec<core::DecryptRequest> = reqs
            .into_iter()
            .map(|r| core::DecryptRequest {
                blob: r.ciphertext_blob,
                context: r.encryption_context,
                key: (!r.key.is_empty()).then_some(r.key),
            })
            .collect();
        self.run(caller, op, contexts, reqs, |c, reqs, gate| {
            c.data().decrypt(reqs, gate)
        })
        .await
    }
}

fn reencrypted(r: core::ReEncrypted) -> proto::ReEncryptResponse {
    proto::ReEncryptResponse {
        source_key: r.source_key,
        source_key_version: r.source_version,
        key: r.key,
        key_id: r.key_id,
        key_version: r.key_version,
        ciphertext_blob: r.blob,
    }
}

impl DataKeyApi {
    async fn reencrypt_many(
        &self,
        caller: Caller,
        op: &'static str,
        reqs: Vec<proto::ReEncryptRequest>,
    ) -> Result<Vec<CoreResult<core::ReEncrypted>>, Status> {
        let contexts = reqs.iter().map(|r| r.encryption_context.clone()).collect();
        let reqs: Vec<core::ReEncryptRequest> = reqs
            .into_iter()
            .map(|r| core::ReEncryptRequest {
                blob: r.ciphertext_blob,
                context: r.encryption_context,
                destination_key: (!r.destination_key.is_empty()).then_some(r.destination_key),
                destination_context: (r.replace_context
                    || !r.destination_encryption_context.is_empty())
                .then_some(r.destination_encryption_context),
            })
            .collect();
        self.run(caller, op, contexts, reqs, |c, reqs, gate| {
            c.data().reencrypt(reqs, gate)
        })
        .await
    }
}

fn generated(g: core::GeneratedKey) -> proto::GenerateDataKeyResponse {
    proto::GenerateDataKeyResponse {
        key: g.key,
        key_id: g.key_id,
        key_version: g.key_version,
        // The plaintext leaves the zeroizing type here, at the protobuf edge.
        plaintext: g.plaintext.map(|p| p.expose().to_vec()).unwrap_or_default(),
        ciphertext_blob: g.blob,
    }
}

fn decrypted(d: core::Decrypted) -> proto::DecryptResponse {
    proto::DecryptResponse {
        key: d.key,
        key_id: d.key_id,
        key_version: d.key_version,
        plaintext: d.plaintext.expose().to_vec(),
    }
}

fn encrypted(e: core::Encrypted) -> proto::EncryptResponse {
    proto::EncryptResponse {
        key: e.key,
        key_id: e.key_id,
        key_version: e.key_version,
        ciphertext_blob: e.blob,
    }
}

pub(super) fn item_error(e: core::CoreError) -> proto::ItemError {
    let field = code::field_of(&e).unwrap_or_default().to_string();
    let key_state = code::key_state_of(&e).unwrap_or_default();
    let s = super::status::to_status(e);
    proto::ItemError {
        code: s.code() as i32,
        message: s.message().to_string(),
        field,
        key_state,
    }
}

pub(super) fn single<T>(mut v: Vec<CoreResult<T>>) -> Result<T, Status> {
    match v.pop() {
        Some(r) => r.map_err(Status::from),
        None => Err(Status::internal("internal error")),
    }
}

#[tonic::async_trait]
impl DataKeyService for DataKeyApi {
    type WatchKeysStream = tokio_stream::wrappers::ReceiverStream<Result<proto::KeyEvent, Status>>;

    async fn watch_keys(
        &self,
        request: Request<proto::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let caller = caller_of(&request)?;
        let watcher = self.ctx.gate.watch(&caller).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(watch::follow(watcher, tx));
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn generate_data_key(
        &self,
        request: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .generate(caller, "GenerateDataKey", vec![request.into_inner()], true)
            .await?;
        Ok(Response::new(generated(single(r)?)))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .generate(
                caller,
                "GenerateDataKeyWithoutPlaintext",
                vec![request.into_inner()],
                false,
            )
            .await?;
        Ok(Response::new(generated(single(r)?)))
    }

    async fn decrypt(
        &self,
        request: Request<proto::DecryptRequest>,
    ) -> Result<Response<proto::DecryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .decrypt_many(caller, "Decrypt", vec![request.into_inner()])
            .await?;
        Ok(Response::new(decrypted(single(r)?)))
    }

    async fn batch_generate_data_key(
        &self,
        request: Request<proto::BatchGenerateDataKeyRequest>,
    ) -> Result<Response<proto::BatchGenerateDataKeyResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .generate(
                caller,
                "BatchGenerateDataKey",
                req.requests,
                !req.without_plaintext,
            )
            .await?
            .into_iter()
            .map(|r| proto::BatchGenerateDataKeyResult {
                result: Some(match r {
                    Ok(g) => proto::batch_generate_data_key_result::Result::Ok(generated(g)),
                    Err(e) => proto::batch_generate_data_key_result::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(proto::BatchGenerateDataKeyResponse {
            results,
        }))
    }

    async fn re_encrypt(
        &self,
        request: Request<proto::ReEncryptRequest>,
    ) -> Result<Response<proto::ReEncryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .reencrypt_many(caller, "ReEncrypt", vec![request.into_inner()])
            .await?;
        Ok(Response::new(reencrypted(single(r)?)))
    }

    async fn batch_re_encrypt(
        &self,
        request: Request<proto::BatchReEncryptRequest>,
    ) -> Result<Response<proto::BatchReEncryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .reencrypt_many(caller, "BatchReEncrypt", req.requests)
            .await?
            .into_iter()
            .map(|r| proto::BatchReEncryptResult {
                result: Some(match r {
                    Ok(x) => proto::batch_re_encrypt_result::Result::Ok(reencrypted(x)),
                    Err(e) => proto::batch_re_encrypt_result::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(proto::BatchReEncryptResponse { results }))
    }

    async fn encrypt(
        &self,
        request: Request<proto::EncryptRequest>,
    ) -> Result<Response<proto::EncryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .encrypt_many(caller, "Encrypt", vec![request.into_inner()])
            .await?;
        Ok(Response::new(encrypted(single(r)?)))
    }

    async fn batch_encrypt(
        &self,
        request: Request<proto::BatchEncryptRequest>,
    ) -> Result<Response<proto::BatchEncryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .encrypt_many(caller, "BatchEncrypt", req.requests)
            .await?
            .into_iter()
            .map(|r| proto::BatchEncryptResult {
                result: Some(match r {
                    Ok(e) => proto::batch_encrypt_result::Result::Ok(encrypted(e)),
                    Err(e) => proto::batch_encrypt_result::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(proto::BatchEncryptResponse { results }))
    }

    async fn batch_decrypt(
        &self,
        request: Request<proto::BatchDecryptRequest>,
    ) -> Result<Response<proto::BatchDecryptResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .decrypt_many(caller, "BatchDecrypt", req.requests)
            .await?
            .into_iter()
            .map(|r| proto::BatchDecryptResult {
                result: Some(match r {
                    Ok(d) => proto::batch_decrypt_result::Result::Ok(decrypted(d)),
                    Err(e) => proto::batch_decrypt_result::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(proto::BatchDecryptResponse { results }))
    }
}
