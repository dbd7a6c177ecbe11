//! The data path through the gate (data keys, Encrypt, Decrypt,
//! ReEncrypt, MACs): the caller's role checked before any work, the core
//! call on the data-path workers with the policy checked per item, one
//! audit line per call (each item's key, version, outcome and details)
//! durably written before anything is answered.

use serde_json::{json, Map, Value};

use super::{code, outcome, Caller, Code, Gate, GateError};
use crate::core::{self, CoreResult, Item};
use crate::guard::Guard;
use crate::policy::Identity;

/// What a call uses, which decides the role it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Data keys, Encrypt, Decrypt, ReEncrypt: the app role.
    DataKeys,
    /// GenerateMac, VerifyMac: the mac role.
    Macs,
}

impl Use {
    /// The role a call of this use needs.
    pub fn role(self) -> &'static str {
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

    fn allowed(self, guard: &Guard, caller: &Identity) -> bool {
        match self {
            Use::DataKeys => guard.may_use_data_keys(caller),
            Use::Macs => guard.may_use_macs(caller),
        }
    }
}

/// One data-path call: what a front end hands [`Gate::data_path`].
pub struct DataCall<R, D, F> {
    /// The operation's name, as audited.
    pub op: &'static str,
    /// What it uses (the role it needs).
    pub usage: Use,
    /// How many items it carries.
    pub items: usize,
    /// Each item's audit details (a digest of its context, a length),
    /// computed on the worker.
    pub details: D,
    /// The requests, in the core's types.
    pub requests: R,
    /// The core operation, given the guard to check each item's key.
    pub run: F,
}

impl Gate {
    /// Runs a data-path call: refused before any work without the role;
    /// one audit line per call, written before the results are returned.
    pub async fn data_path<T, R, D, F>(
        &self,
        caller: &Caller,
        call: DataCall<R, D, F>,
    ) -> Result<Vec<CoreResult<T>>, GateError>
    where
        T: Send + 'static,
        R: Send + 'static,
        D: FnOnce(&core::Keywarden) -> Vec<Map<String, Value>> + Send + 'static,
        F: FnOnce(&core::Keywarden, R, &Guard, &Identity) -> CoreResult<Vec<Item<T>>>
            + Send
            + 'static,
    {
        let DataCall {
            op,
            usage,
            items,
            details,
            requests,
            run,
        } = call;
        // A caller with neither the role nor a break-glass grant is refused
        // before any work: one bounded line, nothing digested.
        if !usage.allowed(&self.guard, &caller.identity) {
            let err = GateError::Denied(format!(
                "uid {} needs the {} role to use {}",
                caller.uid(),
                usage.role(),
                usage.what()
            ));
            self.count(caller, op, "denied");
            let mut entry = self.entry(caller, "", "none", op);
            entry.insert("outcome".into(), json!("denied"));
            entry.insert("code".into(), json!(Code::PermissionDenied.as_str()));
            entry.insert("message".into(), json!(err.to_string()));
            entry.insert("items".into(), json!(items));
            let _ = self.audit(caller.uid(), vec![entry], None).await;
            return Err(err);
        }
        self.admit(caller, op).await?;
        // The writer holds its next commit open briefly for this line.
        let promise = (!self.guard.audit_disabled).then(|| self.guard.audit.promise());
        let guard = self.guard.clone();
        let identity = caller.identity.clone();
        let (details, result) = self
            .workers
            .run(move |c| {
                let details = details(c);
                (details, run(c, requests, &guard, &identity))
            })
            .await?;
        let principal = self.guard.principal_name(&caller.identity);
        let base = || self.entry(caller, &principal, usage.role(), op);
        match result {
            Err(e) => {
                // The whole call was refused (sealed): one audit line.
                let err = GateError::Core(e);
                let mut entry = base();
                entry.extend(outcome::<(), _>(&Err(&err)));
                entry.insert("items".into(), json!(details.len()));
                self.count(caller, op, "error");
                self.audit(caller.uid(), vec![entry], promise).await?;
                Err(err)
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
                    line.extend(item_outcome(&item.result));
                    lines.push(line);
                    results.push(item.result);
                }
                // One line per call: a single item's fields inline, a
                // batch's items listed (group commit does the rest).
                let mut entry = base();
                let ok = lines.iter().filter(|l| l["code"] == "OK").count();
                let counted = if ok == lines.len() {
                    "ok"
                } else if lines.len() > 1 && ok > 0 {
                    "partial"
                } else {
                    "error"
                };
                if lines.len() == 1 {
                    if let Some(only) = lines.pop() {
                        entry.extend(only);
                    }
                } else {
                    entry.insert(
                        "outcome".into(),
                        json!(if ok == lines.len() { "ok" } else { "partial" }),
                    );
                    entry.insert("code".into(), json!(Code::Ok.as_str()));
                    entry.insert(
                        "items".into(),
                        Value::Array(lines.into_iter().map(Value::Object).collect()),
                    );
                }
                if any_break_glass {
                    entry.insert("break_glass".into(), json!(true));
                    entry.insert("ALERT".into(), json!("BREAK-GLASS USE"));
                }
                self.count(caller, op, counted);
                // Nothing is answered before it is durably audited.
                self.audit(caller.uid(), vec![entry], promise).await?;
                Ok(results)
            }
        }
    }
}

/// An item's audit `outcome`, `code` and `message`.
fn item_outcome<T>(r: &CoreResult<T>) -> Map<String, Value> {
    let mut m = Map::new();
    match r {
        Ok(_) => {
            m.insert("outcome".into(), json!("ok"));
            m.insert("code".into(), json!(Code::Ok.as_str()));
        }
        Err(e) => {
            m.insert("outcome".into(), json!("error"));
            m.insert("code".into(), json!(code::code(e).as_str()));
            m.insert("message".into(), json!(code::message(e)));
        }
    }
    m
}

impl super::Answer for &GateError {
    fn code(&self) -> Code {
        (*self).code()
    }

    fn message(&self) -> String {
        super::Answer::message(*self)
    }
}
