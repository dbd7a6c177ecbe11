//! `keywarden key ...`: CMK administration and lifecycle.

use std::path::Path;

use anyhow::anyhow;
use clap::Subcommand;
use serde_json::json;

use super::{client, out, print_json, status_error, Output};
use keywarden::proto;
use keywarden_client::Client;

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a customer-managed key (an AES-256 key generated in the HSM).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Rotate automatically, e.g. 90d.
        #[arg(long, value_name = "DURATION")]
        rotation_period: Option<String>,
        /// aes: data keys and Encrypt (AES-256). hmac: GenerateMac and
        /// VerifyMac, for blind indexes (HMAC-SHA256).
        #[arg(long, value_enum, default_value = "aes")]
        kind: KindArg,
    },
    /// List keys.
    List,
    /// Show a key: state, versions and counters, rotation, holds,
    /// destruction requests.
    Show { name: String },
    /// Create a new version; new data keys use it, old ones still decrypt.
    Rotate { name: String },
    /// Change the rotation period or retire old versions.
    Set {
        name: String,
        /// e.g. 90d; "off" stops automatic rotation by time.
        #[arg(long, value_name = "DURATION|off")]
        rotation_period: Option<String>,
        /// Refuse blobs under versions older than this.
        #[arg(long)]
        min_decrypt_version: Option<u32>,
    },
    /// Mark one version compromised: it never decrypts again.
    RevokeVersion { name: String, version: u32 },
    /// Suspend a key (reversible): the next request is refused.
    Disable { name: String },
    /// Reactivate a suspended key.
    Enable { name: String },
    /// Open a destruction request; after approval the waiting period runs.
    ScheduleDestroy {
        name: String,
        /// e.g. 30d (between the configured minimum and 365d).
        #[arg(long, value_name = "DURATION")]
        after: String,
    },
    /// Cancel a pending or waiting destruction.
    CancelDestroy { name: String },
    /// Approve another admin's destruction request.
    Approve { name: String, request_id: String },
    /// Open a request to destroy at once once approved (never past a hold).
    DestroyNow { name: String },
    /// Place a legal hold: destruction is refused or paused while it stands.
    Hold {
        name: String,
        #[arg(long)]
        reason: String,
        #[arg(long = "id", value_name = "HOLD_ID")]
        hold_id: Option<String>,
    },
    /// Release a legal hold.
    Release {
        name: String,
        #[arg(long = "id", value_name = "HOLD_ID")]
        hold_id: String,
    },
    /// Emergency, time-limited app access to a key for yourself, where the
    /// policy permits it. Flagged in the audit log and in Status.
    BreakGlass {
        name: String,
        #[arg(long)]
        reason: String,
        /// How long, e.g. 30m or 1h (at most 24h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
    },
}

/// What a CMK is for.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KindArg {
    Aes,
    Hmac,
}

impl KindArg {
    fn as_str(self) -> &'static str {
        match self {
            KindArg::Aes => "aes",
            KindArg::Hmac => "hmac",
        }
    }
}

fn duration(flag: &str, text: &str) -> anyhow::Result<u64> {
    let d = humantime::parse_duration(text)
        .map_err(|e| anyhow!("--{flag} {text:?}: {e} (e.g. 30d, 12h, 90s)"))?;
    if d.as_secs() == 0 {
        return Err(anyhow!("--{flag} {text:?}: must be at least one second"));
    }
    Ok(d.as_secs())
}

pub fn metadata_json(k: &proto::KeyMetadata) -> serde_json::Value {
    let opt = |v: i64| {
        if v == 0 {
            serde_json::Value::Null
        } else {
            json!(v)
        }
    };
    json!({
        "name": k.name,
        "key_id": k.key_id,
        "description": k.description,
        "state": k.state,
        "kind": k.kind,
        "algorithm": k.algorithm,
        "created_at": k.created_at,
        "current_version": k.current_version,
        "rotation_period_secs": if k.rotation_period_secs == 0 { serde_json::Value::Null } else { json!(k.rotation_period_secs) },
        "next_rotation_at": opt(k.next_rotation_at),
        "min_decrypt_version": k.min_decrypt_version,
        "destroy_due_at": opt(k.destroy_due_at),
        "destroyed_at": opt(k.destroyed_at),
        "versions": k.versions.iter().map(|v| json!({
            "version": v.version,
            "state": v.state,
            "created_at": v.created_at,
            "encryptions": v.encryptions,
        })).collect::<Vec<_>>(),
        "holds": k.holds.iter().map(|h| json!({
            "id": h.id, "reason": h.reason, "placed_by": h.placed_by,
            "placed_by_principal": h.placed_by_principal, "placed_at": h.placed_at,
            "released_at": opt(h.released_at),
            "released_by": if h.released_by == 0 && h.released_at == 0 { serde_json::Value::Null } else { json!(h.released_by) },
        })).collect::<Vec<_>>(),
        "destroy_requests": k.destroy_requests.iter().map(|q| json!({
            "id": q.id, "kind": q.kind, "wait_secs": q.wait_secs,
            "requested_by": q.requested_by, "created_at": q.created_at,
            "approvals": q.approvals, "approvals_needed": q.approvals_needed,
            "status": q.status, "approved_at": opt(q.approved_at),
        })).collect::<Vec<_>>(),
    })
}

fn print_text(k: &proto::KeyMetadata) {
    out!("name:            {}", k.name);
    out!("key_id:          {}", k.key_id);
    out!("state:           {}", k.state);
    out!("kind:            {}", k.kind);
    out!("algorithm:       {}", k.algorithm);
    out!("current_version: {}", k.current_version);
    if !k.description.is_empty() {
        out!("description:     {}", k.description);
    }
    if k.rotation_period_secs > 0 {
        out!(
            "rotation:        every {}s, next at {}",
            k.rotation_period_secs,
            k.next_rotation_at
        );
    } else {
        out!("rotation:        by hand (and automatically near the encryption limit)");
    }
    if k.min_decrypt_version > 0 {
        out!("min decrypt:     version {}", k.min_decrypt_version);
    }
    if k.destroy_due_at > 0 {
        out!("destruction due: {}", super::when(k.destroy_due_at));
    }
    if k.destroyed_at > 0 {
        out!("destroyed at:    {}", super::when(k.destroyed_at));
    }
    out!("versions:");
    for v in &k.versions {
        out!(
            "  v{:<4} {:<12} created {}  encryptions {}",
            v.version,
            v.state,
            super::when(v.created_at),
            v.encryptions
        );
    }
    if !k.versions.is_empty() {
        out!("  (encryptions are counted on disk in reserved blocks: after a seal or a restart the count resumes at the end of the last block, so it can jump by up to 10,000)");
    }
    for h in &k.holds {
        if h.released_at == 0 {
            out!(
                "LEGAL HOLD {}: {} (by uid {} {}, at {})",
                h.id,
                h.reason,
                h.placed_by,
                h.placed_by_principal,
                super::when(h.placed_at)
            );
        } else {
            out!(
                "released hold {}: {} (released by uid {} at {})",
                h.id,
                h.reason,
                h.released_by,
                super::when(h.released_at)
            );
        }
    }
    for q in &k.destroy_requests {
        out!(
            "destroy request {}: {} {}, wait {}s, approvals {:?} of {} needed",
            q.id,
            q.kind,
            q.status,
            q.wait_secs,
            q.approvals,
            q.approvals_needed
        );
    }
}

fn show(output: Output, k: Option<proto::KeyMetadata>, text: &str) -> anyhow::Result<()> {
    let k = k.unwrap_or_default();
    match output {
        Output::Json => print_json(&metadata_json(&k)),
        Output::Text => {
            out!("{text}");
            print_text(&k);
            Ok(())
        }
    }
}

fn show_request(output: Output, r: proto::DestroyRequestResponse) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(&json!({
            "request_id": r.request_id,
            "approvals": r.approvals,
            "approvals_needed": r.approvals_needed,
            "status": r.status,
            "key": r.key.as_ref().map(metadata_json),
        })),
        Output::Text => {
            out!(
                "destruction request {}: {} ({} of {} approvals)",
                r.request_id,
                r.status,
                r.approvals,
                r.approvals_needed
            );
            if r.status == "open" {
                out!(
                    "another admin approves with: keywarden key approve {} {}",
                    r.key.as_ref().map(|k| k.name.as_str()).unwrap_or(""),
                    r.request_id
                );
            }
            Ok(())
        }
    }
}

pub async fn run(socket: &Path, output: Output, cmd: KeyCommand) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    let name_req = |name: String| proto::KeyNameRequest { name };
    let keys = &mut c.keys;
    match cmd {
        KeyCommand::Create {
            name,
            description,
            rotation_period,
            kind,
        } => {
            let req = create_request(name, description, rotation_period.as_deref(), kind)?;
            create(&mut c, output, req).await
        }
        KeyCommand::List => list(&mut c, output).await,
        KeyCommand::Show { name } => describe(&mut c, output, name).await,
        KeyCommand::Rotate { name } => {
            changed(output, keys.rotate_key(name_req(name)).await, "rotated")
        }
        KeyCommand::Set {
            name,
            rotation_period,
            min_decrypt_version,
        } => {
            let req = update_request(name, rotation_period.as_deref(), min_decrypt_version)?;
            changed(output, keys.update_key(req).await, "updated")
        }
        KeyCommand::RevokeVersion { name, version } => {
            let req = proto::RevokeVersionRequest { name, version };
            let r = keys.revoke_version(req).await;
            changed(output, r, "version revoked (compromised)")
        }
        KeyCommand::Disable { name } => {
            changed(output, keys.disable_key(name_req(name)).await, "disabled")
        }
        KeyCommand::Enable { name } => {
            changed(output, keys.enable_key(name_req(name)).await, "enabled")
        }
        KeyCommand::ScheduleDestroy { name, after } => {
            let after_secs = duration("after", &after)?;
            let req = proto::ScheduleDestroyRequest { name, after_secs };
            destroy_request(output, keys.schedule_destroy(req).await)
        }
        KeyCommand::DestroyNow { name } => {
            destroy_request(output, keys.destroy_now(name_req(name)).await)
        }
        KeyCommand::Approve { name, request_id } => {
            let req = proto::ApproveDestroyRequest { name, request_id };
            destroy_request(output, keys.approve_destroy(req).await)
        }
        KeyCommand::CancelDestroy { name } => {
            let r = keys.cancel_destroy(name_req(name)).await;
            changed(output, r, "destruction cancelled")
        }
        KeyCommand::Hold {
            name,
            reason,
            hold_id,
        } => {
            let req = proto::PlaceHoldRequest {
                name,
                reason,
                hold_id: hold_id.unwrap_or_default(),
            };
            changed(output, keys.place_hold(req).await, "legal hold placed")
        }
        KeyCommand::Release { name, hold_id } => {
            let req = proto::ReleaseHoldRequest { name, hold_id };
            changed(output, keys.release_hold(req).await, "legal hold released")
        }
        KeyCommand::BreakGlass {
            name,
            reason,
            duration: d,
        } => {
            let req = proto::BreakGlassRequest {
                name,
                reason,
                duration_secs: duration("for", &d)?,
            };
            break_glass(&mut c, output, req).await
        }
    }
}

/// `key create`'s request: `--rotation-period` read (none: 0).
fn create_request(
    name: String,
    description: String,
    rotation_period: Option<&str>,
    kind: KindArg,
) -> anyhow::Result<proto::CreateKeyRequest> {
    let rotation_period_secs = match rotation_period {
        Some(p) => duration("rotation-period", p)?,
        None => 0,
    };
    Ok(proto::CreateKeyRequest {
        name,
        description,
        rotation_period_secs,
        kind: kind.as_str().into(),
    })
}

/// `key set`'s request: `--rotation-period` read ("off": 0, none: no
/// change).
fn update_request(
    name: String,
    rotation_period: Option<&str>,
    min_decrypt_version: Option<u32>,
) -> anyhow::Result<proto::UpdateKeyRequest> {
    let rotation_period_secs = match rotation_period {
        None => None,
        Some("off") => Some(0),
        Some(p) => Some(duration("rotation-period", p)?),
    };
    Ok(proto::UpdateKeyRequest {
        name,
        rotation_period_secs,
        min_decrypt_version,
    })
}

/// A daemon's answer for a command that changes a key: the key, under
/// `text`.
fn changed(
    output: Output,
    r: Result<tonic::Response<proto::KeyResponse>, tonic::Status>,
    text: &str,
) -> anyhow::Result<()> {
    let r = r.map_err(status_error)?;
    show(output, r.into_inner().key, text)
}

/// A daemon's answer for a destruction request, opened or approved.
fn destroy_request(
    output: Output,
    r: Result<tonic::Response<proto::DestroyRequestResponse>, tonic::Status>,
) -> anyhow::Result<()> {
    let r = r.map_err(status_error)?;
    show_request(output, r.into_inner())
}

async fn create(
    c: &mut Client,
    output: Output,
    req: proto::CreateKeyRequest,
) -> anyhow::Result<()> {
    let r = c
        .keys
        .create_key(req)
        .await
        .map_err(status_error)?
        .into_inner();
    let k = r.key.unwrap_or_default();
    match output {
        Output::Json => print_json(&metadata_json(&k))?,
        Output::Text => out!(
            "created key {} (id {}, version {})",
            k.name,
            k.key_id,
            k.current_version
        ),
    }
    Ok(())
}

async fn list(c: &mut Client, output: Output) -> anyhow::Result<()> {
    let r = c
        .keys
        .list_keys(proto::ListKeysRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({
            "keys": r.keys.iter().map(metadata_json).collect::<Vec<_>>()
        }))?,
        Output::Text => {
            out!(
                "{:<32} {:<36} {:<5} {:<20} {:>7}",
                "NAME",
                "KEY ID",
                "KIND",
                "STATE",
                "VERSION"
            );
            for k in &r.keys {
                out!(
                    "{:<32} {:<36} {:<5} {:<20} {:>7}",
                    k.name,
                    k.key_id,
                    k.kind,
                    k.state,
                    k.current_version
                );
            }
        }
    }
    Ok(())
}

async fn describe(c: &mut Client, output: Output, name: String) -> anyhow::Result<()> {
    let r = c
        .keys
        .describe_key(proto::DescribeKeyRequest { name })
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&metadata_json(&r.key.unwrap_or_default()))?,
        Output::Text => print_text(&r.key.unwrap_or_default()),
    }
    Ok(())
}

async fn break_glass(
    c: &mut Client,
    output: Output,
    req: proto::BreakGlassRequest,
) -> anyhow::Result<()> {
    let name = req.name.clone();
    let r = c
        .keys
        .break_glass(req)
        .await
        .map_err(status_error)?
        .into_inner();
    match output {
        Output::Json => print_json(&json!({"key": name, "expires_at": r.expires_at}))?,
        Output::Text => out!(
            "BREAK-GLASS: you have app access to key {name} until {}; this is flagged in the audit log.",
            super::when(r.expires_at)
        ),
    }
    Ok(())
}
