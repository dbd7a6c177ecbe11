//! OperatorService: status for operators, and the custodians' ceremonies.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use super::blocking;
use crate::core::{CoreError, Keywarden};
use crate::proto::{self, operator_service_server::OperatorService};
use crate::seal::{IssuedShare, ShareSpec};
use crate::secret::Pin;

pub struct OperatorApi {
    core: Arc<Keywarden>,
}

impl OperatorApi {
    pub fn new(core: Arc<Keywarden>) -> Self {
        OperatorApi { core }
    }
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
    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let s = blocking(&self.core, |c| c.status()).await?;
        let (hsm_health, hsm_detail) = match s.hsm_health {
            Ok(()) => ("ok".to_string(), String::new()),
            Err(e) => ("unavailable".to_string(), e),
        };
        let rekey = s.seal.rekey.clone();
        Ok(Response::new(proto::StatusResponse {
            version: s.version.to_string(),
            hsm_health,
            hsm_detail,
            token: Some(proto::TokenStatus {
                label: s.token.label,
                serial: s.token.serial,
                manufacturer: s.token.manufacturer,
                model: s.token.model,
                profile: s.profile,
                session_key_copies: s.session_copies,
                session_pool_size: s.pool_size as u32,
            }),
            key_count: s.key_count,
            drift: Some(proto::DriftReport {
                missing_on_token: s.drift.missing_on_token,
                orphaned_on_token: s.drift.orphaned_on_token,
            }),
            sealed: s.seal.phase != crate::seal::Phase::Unsealed,
            started_at: s.started_at,
            seal: Some(proto::SealStatus {
                phase: s.seal.phase.as_str().to_string(),
                set_id: s.seal.set_id,
                shares: s.seal.shares.into(),
                threshold: s.seal.threshold.into(),
                received: s.seal.received as u32,
                rekey_id: rekey.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
                rekey_phase: rekey
                    .as_ref()
                    .map(|r| r.phase.to_string())
                    .unwrap_or_default(),
                rekey_received: rekey.as_ref().map(|r| r.received as u32).unwrap_or(0),
                rekey_threshold: rekey.as_ref().map(|r| r.threshold.into()).unwrap_or(0),
                interrupted_rekey: s.seal.interrupted_rekey,
            }),
        }))
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
        let mut r = request.into_inner();
        let user = pin_field("user_pin", &mut r.user_pin)?;
        let so = pin_field("so_pin", &mut r.so_pin)?;
        let (shares, threshold) = (r.shares, r.threshold);
        let out = blocking(&self.core, move |c| {
            c.init(
                ShareSpec {
                    shares,
                    threshold,
                    recipients: &r.recipients,
                    labels: &r.labels,
                },
                &user,
                &so,
            )
        })
        .await??;
        let status = blocking(&self.core, |c| c.status()).await?;
        Ok(Response::new(proto::InitResponse {
            shares: issued(out),
            set_id: status.seal.set_id,
            threshold: status.seal.threshold.into(),
        }))
    }

    async fn unseal(
        &self,
        request: Request<proto::UnsealRequest>,
    ) -> Result<Response<proto::UnsealResponse>, Status> {
        let mut r = request.into_inner();
        if r.reset {
            blocking(&self.core, |c| c.unseal_reset()).await??;
            let s = blocking(&self.core, |c| c.status()).await?;
            return Ok(Response::new(proto::UnsealResponse {
                sealed: s.seal.phase != crate::seal::Phase::Unsealed,
                received: 0,
                threshold: s.seal.threshold.into(),
                set_id: s.seal.set_id,
            }));
        }
        let share = std::mem::take(&mut r.share);
        let p = blocking(&self.core, move |c| {
            let mut share = share;
            let r = c.unseal(&share);
            share.zeroize();
            r
        })
        .await??;
        Ok(Response::new(proto::UnsealResponse {
            sealed: !p.complete,
            received: p.received as u32,
            threshold: p.threshold.into(),
            set_id: p.set_id,
        }))
    }

    async fn seal(
        &self,
        _request: Request<proto::SealRequest>,
    ) -> Result<Response<proto::SealResponse>, Status> {
        blocking(&self.core, |c| c.seal()).await??;
        Ok(Response::new(proto::SealResponse {}))
    }

    async fn rekey_start(
        &self,
        request: Request<proto::RekeyStartRequest>,
    ) -> Result<Response<proto::RekeyStartResponse>, Status> {
        let r = request.into_inner();
        let (id, threshold) = blocking(&self.core, move |c| {
            c.rekey_start(ShareSpec {
                shares: r.shares,
                threshold: r.threshold,
                recipients: &r.recipients,
                labels: &r.labels,
            })
        })
        .await??;
        Ok(Response::new(proto::RekeyStartResponse {
            rekey_id: id,
            current_threshold: threshold.into(),
        }))
    }

    async fn rekey_submit(
        &self,
        request: Request<proto::RekeyShareRequest>,
    ) -> Result<Response<proto::RekeySubmitResponse>, Status> {
        let share = request.into_inner().share;
        let (p, new) = blocking(&self.core, move |c| {
            let mut share = share;
            let r = c.rekey_submit(&share);
            share.zeroize();
            r
        })
        .await??;
        let new_set_id = if p.complete {
            blocking(&self.core, |c| c.status())
                .await?
                .seal
                .rekey
                .map(|r| r.new_set_id)
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::RekeySubmitResponse {
            received: p.received as u32,
            threshold: p.threshold.into(),
            complete: p.complete,
            new_shares: issued(new),
            new_set_id,
        }))
    }

    async fn rekey_verify(
        &self,
        request: Request<proto::RekeyShareRequest>,
    ) -> Result<Response<proto::RekeyVerifyResponse>, Status> {
        let share = request.into_inner().share;
        let p = blocking(&self.core, move |c| {
            let mut share = share;
            let r = c.rekey_verify(&share);
            share.zeroize();
            r
        })
        .await??;
        Ok(Response::new(proto::RekeyVerifyResponse {
            received: p.received as u32,
            threshold: p.threshold.into(),
            committed: p.complete,
            set_id: p.set_id,
        }))
    }

    async fn rekey_cancel(
        &self,
        _request: Request<proto::RekeyCancelRequest>,
    ) -> Result<Response<proto::RekeyCancelResponse>, Status> {
        blocking(&self.core, |c| c.rekey_cancel()).await??;
        Ok(Response::new(proto::RekeyCancelResponse {}))
    }
}
