//! MacService: HMAC-SHA256 under hmac keys, for integrity tags and blind
//! indexes. Authorized by the mac role (or a break-glass grant) per key,
//! audited like the data path with the data's length, never the data.

use serde_json::{json, Map};
use tonic::{Request, Response, Status};

use super::datakey::{item_error, single};
use super::{caller_of, Ctx};
use crate::core::{self, validate, CoreResult};
use crate::gate::{Caller, DataCall, Use};
use crate::policy::Identity;
use crate::proto::{self, mac_service_server::MacService};

pub struct MacApi {
    ctx: Ctx,
}

impl MacApi {
    pub fn new(ctx: Ctx) -> Self {
        MacApi { ctx }
    }

    /// Runs a MAC operation and audits every item (the data's length only,
    /// never the data).
    async fn run_macs(
        &self,
        caller: Caller,
        op: &'static str,
        requests: Vec<core::MacRequest>,
    ) -> Result<Vec<CoreResult<core::MacOutput>>, Status> {
        let lengths: Vec<usize> = requests.iter().map(|r| r.data.len()).collect();
        let items = lengths.len();
        let details = move |_: &core::Keywarden| {
            lengths
                .iter()
                .map(|n| {
                    let mut m = Map::new();
                    m.insert("data_len".into(), json!(n));
                    m
                })
                .collect()
        };
        let call = DataCall {
            op,
            usage: Use::Macs,
            items,
            details,
            requests,
            run: move |c: &core::Keywarden,
                       reqs,
                       guard: &crate::guard::Guard,
                       caller: &Identity| {
                let gate = move |key: &str| guard.mac_check(caller, key);
                c.data().macs(reqs, &gate, op)
            },
        };
        Ok(self.ctx.gate.data_path(&caller, call).await?)
    }
}

fn mac_request(r: proto::GenerateMacRequest) -> core::MacRequest {
    core::MacRequest {
        key: r.key,
        data: zeroize::Zeroizing::new(r.data),
        version: (r.key_version != 0).then_some(r.key_version),
        mac: None,
    }
}

fn generated(m: core::MacOutput) -> proto::GenerateMacResponse {
    proto::GenerateMacResponse {
        key: m.key,
        key_id: m.key_id,
        key_version: m.key_version,
        mac: m.mac.to_vec(),
    }
}

#[tonic::async_trait]
impl MacService for MacApi {
    async fn generate_mac(
        &self,
        request: Request<proto::GenerateMacRequest>,
    ) -> Result<Response<proto::GenerateMacResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = self
            .run_macs(
                caller,
                "GenerateMac",
                vec![mac_request(request.into_inner())],
            )
            .await?;
        Ok(Response::new(generated(single(r)?)))
    }

    async fn verify_mac(
        &self,
        request: Request<proto::VerifyMacRequest>,
    ) -> Result<Response<proto::VerifyMacResponse>, Status> {
        let caller = caller_of(&request)?;
        let r = request.into_inner();
        let req = core::MacRequest {
            key: r.key,
            data: zeroize::Zeroizing::new(r.data),
            version: (r.key_version != 0).then_some(r.key_version),
            mac: Some(r.mac),
        };
        let out = single(self.run_macs(caller, "VerifyMac", vec![req]).await?)?;
        Ok(Response::new(proto::VerifyMacResponse {
            valid: out.valid,
            key: out.key,
            key_version: out.key_version,
        }))
    }

    async fn batch_generate_mac(
        &self,
        request: Request<proto::BatchGenerateMacRequest>,
    ) -> Result<Response<proto::BatchGenerateMacResponse>, Status> {
        let caller = caller_of(&request)?;
        let req = request.into_inner();
        validate::batch_size(req.requests.len()).map_err(Status::from)?;
        let reqs = req.requests.into_iter().map(mac_request).collect();
        let results = self
            .run_macs(caller, "BatchGenerateMac", reqs)
            .await?
            .into_iter()
            .map(|r| proto::BatchGenerateMacResult {
                result: Some(match r {
                    Ok(m) => proto::batch_generate_mac_result::Result::Ok(generated(m)),
                    Err(e) => proto::batch_generate_mac_result::Result::Error(item_error(e)),
                }),
            })
            .collect();
        Ok(Response::new(proto::BatchGenerateMacResponse { results }))
    }
}
