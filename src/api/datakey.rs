//! DataKeyService: the applications' API.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::{blocking, status};
use crate::core::{self, validate, CoreResult, Keywarden};
use crate::proto::{self, data_key_service_server::DataKeyService};

pub struct DataKeyApi {
    core: Arc<Keywarden>,
}

impl DataKeyApi {
    pub fn new(core: Arc<Keywarden>) -> Self {
        DataKeyApi { core }
    }

    async fn generate(
        &self,
        reqs: Vec<proto::GenerateDataKeyRequest>,
        with_plaintext: bool,
    ) -> Result<Vec<CoreResult<core::GeneratedKey>>, Status> {
        let reqs: Vec<core::GenerateRequest> = reqs
            .into_iter()
            .map(|r| core::GenerateRequest {
                key: r.key,
                context: r.encryption_context,
            })
            .collect();
        blocking(&self.core, move |c| {
            c.generate_data_keys(reqs, with_plaintext)
        })
        .await?
        .map_err(Status::from)
    }

    async fn decrypt_many(
        &self,
        reqs: Vec<proto::DecryptRequest>,
    ) -> Result<Vec<CoreResult<core::Decrypted>>, Status> {
        let reqs: Vec<core::DecryptRequest> = reqs
            .into_iter()
            .map(|r| core::DecryptRequest {
                blob: r.ciphertext_blob,
                context: r.encryption_context,
                key: (!r.key.is_empty()).then_some(r.key),
            })
            .collect();
        blocking(&self.core, move |c| c.decrypt(reqs))
            .await?
            .map_err(Status::from)
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

fn item_error(e: core::CoreError) -> proto::ItemError {
    let s = status::to_status(e);
    proto::ItemError {
        code: s.code() as i32,
        message: s.message().to_string(),
    }
}

fn single<T>(mut v: Vec<CoreResult<T>>) -> Result<T, Status> {
    match v.pop() {
        Some(r) => r.map_err(Status::from),
        None => Err(Status::internal("internal error")),
    }
}

#[tonic::async_trait]
impl DataKeyService for DataKeyApi {
    async fn generate_data_key(
        &self,
        request: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let r = single(self.generate(vec![request.into_inner()], true).await?)?;
        Ok(Response::new(generated(r)))
    }

    async fn generate_data_key_without_plaintext(
        &self,
        request: Request<proto::GenerateDataKeyRequest>,
    ) -> Result<Response<proto::GenerateDataKeyResponse>, Status> {
        let r = single(self.generate(vec![request.into_inner()], false).await?)?;
        Ok(Response::new(generated(r)))
    }

    async fn decrypt(
        &self,
        request: Request<proto::DecryptRequest>,
    ) -> Result<Response<proto::DecryptResponse>, Status> {
        let r = single(self.decrypt_many(vec![request.into_inner()]).await?)?;
        Ok(Response::new(decrypted(r)))
    }

    async fn batch_generate_data_key(
        &self,
        request: Request<proto::BatchGenerateDataKeyRequest>,
    ) -> Result<Response<proto::BatchGenerateDataKeyResponse>, Status> {
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .generate(req.requests, !req.without_plaintext)
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

    async fn batch_decrypt(
        &self,
        request: Request<proto::BatchDecryptRequest>,
    ) -> Result<Response<proto::BatchDecryptResponse>, Status> {
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let results = self
            .decrypt_many(req.requests)
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
