//! KeyService: the admins' API.

use std::time::Duration;

use serde_json::{json, Map};
use tonic::{Request, Response, Status};

use super::{blocking, Ctx};
use crate::core::registry::KeyRecord;
use crate::guard::break_glass_json;
use crate::policy::Action;
use crate::proto::{self, key_service_server::KeyService};

pub struct KeyApi {
    ctx: Ctx,
}

impl KeyApi {
    pub fn new(ctx: Ctx) -> Self {
        KeyApi { ctx }
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

fn key_field(name: &str) -> Map<String, serde_json::Value> {
    let mut m = Map::new();
    m.insert("key".into(), json!(name));
    m
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "CreateKey", Action::KeyAdmin)
            .await?;
        let r = request.into_inner();
        let extra = key_field(&r.name);
        let res = blocking(&self.ctx.core, move |c| {
            c.create_key(&r.name, &r.description)
        })
        .await
        .and_then(|r| r.map_err(Status::from))
        .map(|k| proto::CreateKeyResponse {
            key: Some(metadata(k)),
        });
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "ListKeys", Action::KeyRead)
            .await?;
        let res = blocking(&self.ctx.core, |c| c.list_keys())
            .await
            .and_then(|r| r.map_err(Status::from))
            .map(|keys| proto::ListKeysResponse {
                keys: keys.into_iter().map(metadata).collect(),
            });
        self.ctx
            .finish(&call, Map::new(), res)
            .await
            .map(Response::new)
    }

    async fn describe_key(
        &self,
        request: Request<proto::DescribeKeyRequest>,
    ) -> Result<Response<proto::DescribeKeyResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "DescribeKey", Action::KeyRead)
            .await?;
        let name = request.into_inner().name;
        let extra = key_field(&name);
        let res = blocking(&self.ctx.core, move |c| c.describe_key(&name))
            .await
            .and_then(|r| r.map_err(Status::from))
            .map(|k| proto::DescribeKeyResponse {
                key: Some(metadata(k)),
            });
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }

    async fn break_glass(
        &self,
        request: Request<proto::BreakGlassRequest>,
    ) -> Result<Response<proto::BreakGlassResponse>, Status> {
        let caller = super::caller_of(&request)?;
        let r = request.into_inner();
        let call = super::Call {
            principal: self.ctx.guard.principal_name(&caller),
            caller,
            role: "admin",
            op: "BreakGlass",
        };
        let mut extra = key_field(&r.name);
        extra.insert("reason".into(), json!(r.reason));
        extra.insert("break_glass".into(), json!(true));
        extra.insert("ALERT".into(), json!("BREAK-GLASS REQUEST"));
        let res = self
            .ctx
            .guard
            .break_glass(
                &call.caller,
                &r.name,
                &r.reason,
                Duration::from_secs(r.duration_secs),
            )
            .map_err(|e| {
                if e.starts_with("reason:") || e.starts_with("duration:") {
                    Status::invalid_argument(e)
                } else {
                    Status::permission_denied(e)
                }
            })
            .map(|g| {
                let j = break_glass_json(&g);
                proto::BreakGlassResponse {
                    expires_at: j["expires_at"].as_i64().unwrap_or(0),
                }
            });
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }
}
