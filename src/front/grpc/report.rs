//! Status in protobuf: the core's status, the policy and audit state, and
//! who asked. Key names and the forwarder's target only for the roles that
//! may list keys.

use crate::core::AttentionReason;
use crate::gate::Call;
use crate::guard::{Guard, PolicySource};
use crate::proto;

/// Who asked, as Status shows it.
pub fn caller(call: &Call) -> String {
    let id = &call.caller().identity;
    format!(
        "uid {} gid {} pid {} exe {} principal {:?} role {}",
        id.uid,
        id.gid,
        id.pid,
        id.exe,
        call.principal(),
        call.role()
    )
}

/// The core's part of Status.
pub fn core_status(s: crate::core::Status, sees_keys: bool) -> proto::StatusResponse {
    let (hsm_health, hsm_detail) = match s.hsm_health {
        Ok(()) => ("ok".to_string(), String::new()),
        Err(e) => ("unavailable".to_string(), e.to_string()),
    };
    proto::StatusResponse {
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
            repaired: s.drift.repaired,
        }),
        sealed: s.seal.phase != crate::seal::Phase::Unsealed,
        started_at: s.started_at,
        seal: Some(seal(&s.seal)),
        hardening: crate::server::hardening::report(),
        key_attention: s
            .attention
            .iter()
            .filter(|_| sees_keys)
            .map(attention)
            .collect(),
        registry_tampering: s
            .tampering
            .iter()
            .map(|(k, w)| format!("{k}: {w}"))
            .collect(),
        ..Default::default()
    }
}

fn seal(s: &crate::seal::SealStatus) -> proto::SealStatus {
    let rekey = s.rekey.as_ref();
    proto::SealStatus {
        phase: s.phase.as_str().to_string(),
        set_id: s.set_id.clone(),
        shares: s.shares.into(),
        threshold: s.threshold.into(),
        received: s.received as u32,
        rekey_id: rekey.map(|r| r.id.clone()).unwrap_or_default(),
        rekey_phase: rekey.map(|r| r.phase.to_string()).unwrap_or_default(),
        rekey_received: rekey.map(|r| r.received as u32).unwrap_or(0),
        rekey_threshold: rekey.map(|r| r.threshold.into()).unwrap_or(0),
        interrupted_rekey: s.interrupted_rekey,
        init_pending: s.init_pending,
    }
}

fn attention(a: &crate::core::KeyAttention) -> proto::KeyAttention {
    let mut p = proto::KeyAttention {
        key: a.key.clone(),
        version: a.version,
        ..Default::default()
    };
    match a.reason {
        AttentionReason::EncryptionLimit { used, hard_limit } => {
            p.reason = "encryption_limit".into();
            p.encryptions = used;
            p.hard_limit = hard_limit;
        }
        AttentionReason::DestructionDue { at } => {
            p.reason = "destruction_due".into();
            p.due_at = at;
        }
    }
    p
}

/// The policy's and the audit log's part of Status.
pub fn add_guard(reply: &mut proto::StatusResponse, guard: &Guard, sees_keys: bool) {
    (reply.audit_health, reply.audit_detail) = match guard.audit.health() {
        _ if guard.audit_disabled => (
            "DISABLED".to_string(),
            "benchmark mode: requests are not audited".to_string(),
        ),
        Ok(()) => ("ok".to_string(), String::new()),
        Err(e) => ("unavailable".to_string(), e.to_string()),
    };
    reply.break_glass = guard
        .active_break_glass()
        .iter()
        .map(|g| {
            let j = crate::guard::break_glass_json(g);
            proto::BreakGlassGrant {
                uid: g.uid,
                principal: g.principal.clone(),
                key: g.key.clone(),
                reason: g.reason.clone(),
                granted_at: j["granted_at"].as_i64().unwrap_or(0),
                expires_at: j["expires_at"].as_i64().unwrap_or(0),
            }
        })
        .collect();
    reply.policy = match guard.source() {
        PolicySource::File(p) => format!("file {}", p.display()),
        PolicySource::OpenDev => "open-dev (every local user has every role)".to_string(),
    };
    let disk = guard.audit.disk_space();
    reply.audit_disk_free_bytes = disk.map(|d| d.free).unwrap_or(0);
    reply.audit_disk_size_bytes = disk.map(|d| d.size).unwrap_or(0);
    reply.audit_disk_low = disk.is_some_and(|d| d.low());
    reply.audit_forward = sees_keys
        .then(|| guard.audit.forward_status())
        .flatten()
        .map(|f| proto::AuditForwardStatus {
            target: f.target,
            connected: f.connected,
            sent: f.sent,
            dropped: f.dropped,
            errors: f.errors,
            queued: f.queued,
            lag_seconds: f.lag_seconds,
            last_error: f.last_error.unwrap_or_default(),
            last_drop: f.last_drop.unwrap_or(0),
            dropped_alerts: f.dropped_alerts,
        });
}
