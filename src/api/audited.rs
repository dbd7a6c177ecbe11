//! The audited runner every data-path service shares (DataKeyService,
//! MacService): the caller's role checked before any work, the core call
//! off the runtime, one audit line per call (each item's key, version,
//! outcome and details) durably written before anything is answered.

use serde_json::{json, Map, Value};
use tonic::Status;

use super::{status, Ctx};
use crate::core::{self, CoreResult, Item};
use crate::guard;
use crate::policy::Caller;

/// What a call uses, which decides the role it needs.
#[derive(Clone, Copy)]
pub(super) enum Use {
    /// Data keys, Encrypt, Decrypt, ReEncrypt: the app role.
    DataKeys,
    /// GenerateMac, VerifyMac: the mac role.
    Macs,
}

impl Use {
    pub(super) fn role(self) -> &'static str {
        match self {
            Use::DataKeys => "app",
            Use::Macs => "mac",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Use::DataKeys => "data keys",
            Use::Macs => "MAC keys",
        }
    }

    fn allowed(self, guard: &guard::Guard, caller: &Caller) -> bool {
        match self {
            Use::DataKeys => guard.may_use_data_keys(caller),
            Use::Macs => guard.may_use_macs(caller),
        }
    }
}

/// Checks the caller's role, runs `f` off the runtime, and audits one
/// line per call (each item's key, version, outcome and `details`)
/// before anything is answered.
#[allow(clippy::too_many_arguments)]
pub(super) async fn audited<T, R, D, F>(
    ctx: &Ctx,
    caller: Caller,
    op: &'static str,
    usage: Use,
    items: usize,
    details: D,
    requests: R,
    f: F,
) -> Result<Vec<CoreResult<T>>, Status>
where
    T: Send + 'static,
    R: Send + 'static,
    D: FnOnce(&core::Keywarden) -> Vec<Map<String, Value>> + Send + 'static,
    F: FnOnce(&core::Keywarden, R, &guard::Guard, &Caller) -> CoreResult<Vec<Item<T>>>
        + Send
        + 'static,
{
    // A caller with neither the role nor a break-glass grant is refused
    // before any work: one bounded line, nothing digested.
    if !usage.allowed(&ctx.guard, &caller) {
        let status = Status::permission_denied(format!(
            "uid {} needs the {} role to use {}",
            caller.uid,
            usage.role(),
            usage.what()
        ));
        let mut entry = guard::entry(&caller, "", "none", op);
        entry.insert("outcome".into(), json!("denied"));
        entry.insert("code".into(), json!("PermissionDenied"));
        entry.insert("message".into(), json!(status.message()));
        entry.insert("items".into(), json!(items));
        let _ = ctx.audit(caller.uid, vec![entry]).await;
        return Err(status);
    }
    ctx.admit(&caller, op).await?;
    // The writer holds its next commit open briefly for this line.
    let promise = (!ctx.guard.audit_disabled).then(|| ctx.guard.audit.promise());
    let guard = ctx.guard.clone();
    let gate_caller = caller.clone();
    let (details, outcome) = ctx
        .workers
        .run(move |c| {
            let details = details(c);
            (details, f(c, requests, &guard, &gate_caller))
        })
        .await?;
    let principal = ctx.guard.principal_name(&caller);
    let base = || guard::entry(&caller, &principal, usage.role(), op);
    match outcome {
        Err(e) => {
            // The whole call was refused (sealed): one audit line.
            let status = Status::from(e);
            let mut entry = base();
            entry.extend(super::outcome::<()>(&Err(status.clone())));
            entry.insert("items".into(), json!(details.len()));
            ctx.audit_promised(caller.uid, vec![entry], promise).await?;
            Err(status)
        }
        Ok(items) => {
            let mut lines = Vec::with_capacity(items.len());
            let mut results = Vec::with_capacity(items.len());
            let mut any_break_glass = false;
            for (item, detail) in items.into_iter().zip(details) {
                let mut line = Map::new();
                line.insert("key".into(), json!(item.key));
                line.insert("version".into(), json!(item.version));
                line.extend(detail);
                if item.break_glass {
                    any_break_glass = true;
                    line.insert("break_glass".into(), json!(true));
                }
                let r: Result<(), Status> = match &item.result {
                    Ok(_) => Ok(()),
                    Err(e) => Err(Status::new(status::code(e), status::message(e))),
                };
                line.extend(super::outcome(&r));
                lines.push(line);
                results.push(item.result);
            }
            // One line per call: a single item's fields inline, a
            // batch's items listed (group commit does the rest).
            let mut entry = base();
            if lines.len() == 1 {
                if let Some(only) = lines.pop() {
                    entry.extend(only);
                }
            } else {
                let ok = lines.iter().filter(|l| l["code"] == "OK").count();
                entry.insert(
                    "outcome".into(),
                    json!(if ok == lines.len() { "ok" } else { "partial" }),
                );
                entry.insert("code".into(), json!("OK"));
                entry.insert(
                    "items".into(),
                    Value::Array(lines.into_iter().map(Value::Object).collect()),
                );
            }
            if any_break_glass {
                entry.insert("break_glass".into(), json!(true));
                entry.insert("ALERT".into(), json!("BREAK-GLASS USE"));
            }
            // Nothing is answered before it is durably audited.
            ctx.audit_promised(caller.uid, vec![entry], promise).await?;
            Ok(results)
        }
    }
}
