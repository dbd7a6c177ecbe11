//! KeyService: the admins' API (lifecycle included).

use std::time::Duration;

use serde_json::{json, Map};
use tonic::{Request, Response, Status};

use super::Ctx;
use crate::core::model::{DestroyKind, KeyRecord};
use crate::core::{Actor, CoreError, CoreResult, Keywarden};
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

    /// Authorizes as an admin, runs `f` in the core, audits with the key
    /// name, and answers with the key's metadata.
    async fn admin<T, F, R>(
        &self,
        request: Request<T>,
        op: &'static str,
        name: impl Fn(&T) -> String,
        f: F,
    ) -> Result<R, Status>
    where
        T: Send + 'static,
        R: Send + 'static,
        F: FnOnce(&Keywarden, T, Actor) -> CoreResult<R> + Send + 'static,
    {
        let call = self.ctx.authorize(&request, op, Action::KeyAdmin).await?;
        let req = request.into_inner();
        let mut extra = Map::new();
        extra.insert("key".into(), json!(name(&req)));
        let actor = call.actor();
        let res = self
            .ctx
            .run(&call, move |c| f(c, req, actor))
            .await
            .and_then(|r| r.map_err(Status::from));
        self.ctx.finish(&call, extra, res).await
    }
}

pub fn metadata(core: &Keywarden, k: &KeyRecord) -> proto::KeyMetadata {
    let needed = core.lifecycle.destroy_approvals.max(1) as u32;
    proto::KeyMetadata {
        key_id: k.id_text(),
        current_version: k.current().map(|v| v.version).unwrap_or(0),
        versions: k
            .versions
            .iter()
            .map(|v| proto::KeyVersion {
                version: v.version,
                created_at: v.created_at,
                state: v.state.as_str().to_string(),
                encryptions: core.data().encryptions(&v.hsm_id),
            })
            .collect(),
        name: k.name.clone(),
        description: k.description.clone(),
        state: k.state.as_str().to_string(),
        created_at: k.created_at,
        algorithm: k.algorithm.clone(),
        kind: k.kind.as_str().into(),
        rotation_period_secs: k.rotation_period_secs.unwrap_or(0),
        next_rotation_at: k.next_rotation_at.unwrap_or(0),
        min_decrypt_version: k.min_decrypt_version,
        destroy_due_at: k.destroy_due_at.unwrap_or(0),
        destroyed_at: k.destroyed_at.unwrap_or(0),
        holds: k
            .holds
            .iter()
            .map(|h| proto::Hold {
                id: h.id.clone(),
                reason: h.reason.clone(),
                placed_by: h.placed_by,
                placed_by_principal: h.placed_by_principal.clone(),
                placed_at: h.placed_at,
                released_at: h.released_at.unwrap_or(0),
                released_by: h.released_by.unwrap_or(0),
            })
            .collect(),
        destroy_requests: k
            .requests
            .iter()
            .map(|q| proto::DestroyRequest {
                id: q.id.clone(),
                kind: serde_json::to_value(q.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                wait_secs: q.wait_secs,
                requested_by: q.requested_by,
                created_at: q.created_at,
                approvals: q.approvals.clone(),
                approvals_needed: needed,
                status: serde_json::to_value(q.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                approved_at: q.approved_at.unwrap_or(0),
            })
            .collect(),
    }
}

fn key_response(core: &Keywarden, k: &KeyRecord) -> proto::KeyResponse {
    proto::KeyResponse {
        key: Some(metadata(core, k)),
    }
}

fn destroy_response(
    core: &Keywarden,
    req: &crate::core::model::DestroyRequest,
    k: &KeyRecord,
) -> proto::DestroyRequestResponse {
    let m = metadata(core, k);
    let status = m
        .destroy_requests
        .iter()
        .find(|q| q.id == req.id)
        .map(|q| q.status.clone())
        .unwrap_or_default();
    proto::DestroyRequestResponse {
        request_id: req.id.clone(),
        approvals: req.approvals.len() as u32,
        approvals_needed: core.lifecycle.destroy_approvals.max(1) as u32,
        status,
        key: Some(m),
    }
}

fn secs(d: u64) -> Option<Duration> {
    (d > 0).then(|| Duration::from_secs(d))
}

#[tonic::async_trait]
impl KeyService for KeyApi {
    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        self.admin(
            request,
            "CreateKey",
            |r| r.name.clone(),
            move |c, r, _| {
                let kind = crate::hsm::KeyKind::parse(&r.kind).ok_or_else(|| {
                    CoreError::invalid(
                        "kind",
                        format!(
                            "{:?} is not a key kind: \"aes\" (the default) or \"hmac\"",
                            r.kind
                        ),
                    )
                })?;
                let k = c.keys().create_key(
                    &r.name,
                    &r.description,
                    secs(r.rotation_period_secs),
                    kind,
                )?;
                Ok(proto::CreateKeyResponse {
                    key: Some(metadata(c, &k)),
                })
            },
        )
        .await
        .map(Response::new)
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        let call = self
            .ctx
            .authorize(&request, "ListKeys", Action::KeyRead)
            .await?;
        let res = self
            .ctx
            .run(&call, move |c| {
                c.keys().list_keys().map(|keys| proto::ListKeysResponse {
                    keys: keys.iter().map(|k| metadata(c, k)).collect(),
                })
            })
            .await
            .and_then(|r| r.map_err(Status::from));
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
        let mut extra = Map::new();
        extra.insert("key".into(), json!(name));
        let res = self
            .ctx
            .run(&call, move |c| {
                c.keys()
                    .describe_key(&name)
                    .map(|k| proto::DescribeKeyResponse {
                        key: Some(metadata(c, &k)),
                    })
            })
            .await
            .and_then(|r| r.map_err(Status::from));
        self.ctx.finish(&call, extra, res).await.map(Response::new)
    }

    async fn break_glass(
        &self,
        request: Request<proto::BreakGlassRequest>,
    ) -> Result<Response<proto::BreakGlassResponse>, Status> {
        let caller = super::caller_of(&request)?;
        let r = request.into_inner();
        let g = self
            .ctx
            .gate
            .break_glass(
                &caller,
                &r.name,
                &r.reason,
                Duration::from_secs(r.duration_secs),
            )
            .await?;
        let j = break_glass_json(&g);
        Ok(Response::new(proto::BreakGlassResponse {
            expires_at: j["expires_at"].as_i64().unwrap_or(0),
        }))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::KeyNameRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "RotateKey",
            |r| r.name.clone(),
            move |c, r, _| {
                c.keys()
                    .rotate(&r.name, "requested")
                    .map(|k| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "UpdateKey",
            |r| r.name.clone(),
            move |c, r, _| {
                c.keys()
                    .update_key(
                        &r.name,
                        r.rotation_period_secs.map(secs),
                        r.min_decrypt_version,
                    )
                    .map(|k| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn revoke_version(
        &self,
        request: Request<proto::RevokeVersionRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "RevokeVersion",
            |r| r.name.clone(),
            move |c, r, _| {
                c.keys()
                    .revoke_version(&r.name, r.version)
                    .map(|k| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn disable_key(
        &self,
        request: Request<proto::KeyNameRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "DisableKey",
            |r| r.name.clone(),
            move |c, r, _| c.keys().disable(&r.name).map(|k| key_response(c, &k)),
        )
        .await
        .map(Response::new)
    }

    async fn enable_key(
        &self,
        request: Request<proto::KeyNameRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "EnableKey",
            |r| r.name.clone(),
            move |c, r, _| c.keys().enable(&r.name).map(|k| key_response(c, &k)),
        )
        .await
        .map(Response::new)
    }

    async fn schedule_destroy(
        &self,
        request: Request<proto::ScheduleDestroyRequest>,
    ) -> Result<Response<proto::DestroyRequestResponse>, Status> {
        self.admin(
            request,
            "ScheduleDestroy",
            |r| r.name.clone(),
            move |c, r, a| {
                let (q, k) = c.keys().request_destroy(
                    &r.name,
                    DestroyKind::Scheduled,
                    Duration::from_secs(r.after_secs),
                    &a,
                )?;
                Ok(destroy_response(c, &q, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn destroy_now(
        &self,
        request: Request<proto::KeyNameRequest>,
    ) -> Result<Response<proto::DestroyRequestResponse>, Status> {
        self.admin(
            request,
            "DestroyNow",
            |r| r.name.clone(),
            move |c, r, a| {
                let (q, k) =
                    c.keys()
                        .request_destroy(&r.name, DestroyKind::Now, Duration::ZERO, &a)?;
                Ok(destroy_response(c, &q, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn approve_destroy(
        &self,
        request: Request<proto::ApproveDestroyRequest>,
    ) -> Result<Response<proto::DestroyRequestResponse>, Status> {
        self.admin(
            request,
            "ApproveDestroy",
            |r| r.name.clone(),
            move |c, r, a| {
                let (q, k) = c.keys().approve_destroy(&r.name, &r.request_id, &a)?;
                Ok(destroy_response(c, &q, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn cancel_destroy(
        &self,
        request: Request<proto::KeyNameRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "CancelDestroy",
            |r| r.name.clone(),
            move |c, r, a| {
                c.keys()
                    .cancel_destroy(&r.name, &a)
                    .map(|k| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn place_hold(
        &self,
        request: Request<proto::PlaceHoldRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "PlaceHold",
            |r| r.name.clone(),
            move |c, r, a| {
                let id = (!r.hold_id.is_empty()).then_some(r.hold_id.as_str());
                c.keys()
                    .place_hold(&r.name, &r.reason, id, &a)
                    .map(|(_, k)| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }

    async fn release_hold(
        &self,
        request: Request<proto::ReleaseHoldRequest>,
    ) -> Result<Response<proto::KeyResponse>, Status> {
        self.admin(
            request,
            "ReleaseHold",
            |r| r.name.clone(),
            move |c, r, a| {
                c.keys()
                    .release_hold(&r.name, &r.hold_id, &a)
                    .map(|k| key_response(c, &k))
            },
        )
        .await
        .map(Response::new)
    }
}
