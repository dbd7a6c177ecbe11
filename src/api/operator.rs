//! OperatorService: status for operators and custodians.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::blocking;
use crate::core::Keywarden;
use crate::proto::{self, operator_service_server::OperatorService};

pub struct OperatorApi {
    core: Arc<Keywarden>,
}

impl OperatorApi {
    pub fn new(core: Arc<Keywarden>) -> Self {
        OperatorApi { core }
    }
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
            // The unseal ceremony is not built yet: the daemon opens the
            // token with the PIN file at start and is never sealed.
            sealed: false,
            started_at: s.started_at,
        }))
    }

    async fn ping(
        &self,
        _request: Request<proto::PingRequest>,
    ) -> Result<Response<proto::PingResponse>, Status> {
        Ok(Response::new(proto::PingResponse {}))
    }
}
