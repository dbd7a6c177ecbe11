//! KeyService: the admins' API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::blocking;
use crate::core::registry::KeyRecord;
use crate::core::Keywarden;
use crate::proto::{self, key_service_server::KeyService};

pub struct KeyApi {
    core: Arc<Keywarden>,
}

impl KeyApi {
    pub fn new(core: Arc<Keywarden>) -> Self {
        KeyApi { core }
    }
}

pub fn metadata(k: KeyRecord) -> proto::KeyMetadata {
    proto::KeyMetadata {
        key_id: k.id_text(),
        current_version: k.current().map(|v| v.version).unwrap_or(0),
        versions: k
            .versions
            .into_iter()
            .map(|v| proto::KeyVersion {
                version: v.version,
                created_at: v.created_at,
                state: v.state,
            })
            .collect(),
        name: k.name,
        description: k.description,
        state: k.state,
        created_at: k.created_at,
        algorithm: k.algorithm,
    }
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        let r = request.into_inner();
        let k = blocking(&self.core, move |c| c.create_key(&r.name, &r.description)).await??;
        Ok(Response::new(proto::CreateKeyResponse {
            key: Some(metadata(k)),
        }))
    }

    async fn list_keys(
        &self,
        _request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let keys = blocking(&self.core, |c| c.list_keys()).await??;
        Ok(Response::new(proto::ListKeysResponse {
            keys: keys.into_iter().map(metadata).collect(),
        }))
    }

    async fn describe_key(
        &self,
        request: Request<proto::DescribeKeyRequest>,
    ) -> Result<Response<proto::DescribeKeyResponse>, Status> {
        let name = request.into_inner().name;
        let k = blocking(&self.core, move |c| c.describe_key(&name)).await??;
        Ok(Response::new(proto::DescribeKeyResponse {
            key: Some(metadata(k)),
        }))
    }
}
