//! `keywarden status`.

use std::path::Path;

use serde_json::json;

use super::{client, out, print_json, status_error, Output};
use crate::proto;

pub async fn run(socket: &Path, output: Output) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let t = s.token.unwrap_or_default();
    let d = s.drift.unwrap_or_default();
    let seal = s.seal.unwrap_or_default();
    match output {
        Output::Json => print_json(&json!({
            "version": s.version,
            "sealed": s.sealed,
            "seal": {
                "phase": seal.phase,
                "set_id": seal.set_id,
                "shares": seal.shares,
                "threshold": seal.threshold,
                "received": seal.received,
                "rekey_id": seal.rekey_id,
                "rekey_phase": seal.rekey_phase,
                "rekey_received": seal.rekey_received,
                "rekey_threshold": seal.rekey_threshold,
                "interrupted_rekey": seal.interrupted_rekey,
                "init_pending": seal.init_pending,
            },
            "hsm_health": s.hsm_health,
            "hsm_detail": s.hsm_detail,
            "token": {
                "label": t.label,
                "serial": t.serial,
                "manufacturer": t.manufacturer,
                "model": t.model,
                "profile": t.profile,
                "session_key_copies": t.session_key_copies,
                "session_pool_size": t.session_pool_size,
            },
            "key_count": s.key_count,
            "drift": {
                "missing_on_token": d.missing_on_token,
                "orphaned_on_token": d.orphaned_on_token,
                "repaired": d.repaired,
            },
            "started_at": s.started_at,
            "audit_health": s.audit_health,
            "audit_detail": s.audit_detail,
            "policy": s.policy,
            "dev_mode": s.dev_mode,
            "caller": s.caller,
            "registry_tampering": s.registry_tampering,
            "hardening": s.hardening,
            "connections": {"open": s.connections_open, "refused": s.connections_refused,
                "timed_out": s.connections_timed_out},
            "break_glass": s.break_glass.iter().map(|g| json!({
                "uid": g.uid, "principal": g.principal, "key": g.key,
                "reason": g.reason, "granted_at": g.granted_at, "expires_at": g.expires_at,
            })).collect::<Vec<_>>(),
        }))?,
        Output::Text => {
            out!("version:     {}", s.version);
            match seal.phase.as_str() {
                "sealed" => out!(
                    "seal:        sealed ({} of {} shares received, set {})",
                    seal.received,
                    seal.threshold,
                    seal.set_id
                ),
                "unsealed" => out!(
                    "seal:        unsealed (set {}, {} of {} shares)",
                    seal.set_id,
                    seal.threshold,
                    seal.shares
                ),
                other => out!("seal:        {other} (run `keywarden operator init`)"),
            }
            if !seal.rekey_id.is_empty() {
                out!(
                    "rekey:       {} {} ({} of {})",
                    seal.rekey_id,
                    seal.rekey_phase,
                    seal.rekey_received,
                    seal.rekey_threshold
                );
            }
            if seal.init_pending {
                out!("init:        shares issued; the first unseal completes init (changes the token PINs)");
            }
            if seal.interrupted_rekey {
                out!("rekey:       an interrupted rekey commit was found; shares of either set unseal");
            }
            if s.hsm_detail.is_empty() {
                out!("hsm:         {}", s.hsm_health);
            } else {
                out!("hsm:         {} ({})", s.hsm_health, s.hsm_detail);
            }
            out!(
                "token:       {} (serial {}, {} {}, profile {})",
                t.label,
                t.serial,
                t.manufacturer,
                t.model,
                t.profile
            );
            out!(
                "sessions:    {} worker sessions, session key copies {}",
                t.session_pool_size,
                if t.session_key_copies { "on" } else { "off" }
            );
            out!("keys:        {}", s.key_count);
            if s.audit_detail.is_empty() {
                out!("audit:       {}", s.audit_health);
            } else {
                out!("audit:       {} ({})", s.audit_health, s.audit_detail);
            }
            if s.dev_mode {
                out!("mode:        DEV MODE (keywarden dev): never use this daemon for real data");
            }
            out!("policy:      {}", s.policy);
            for t in &s.registry_tampering {
                out!("TAMPERING:   {t}");
            }
            out!("you:         {}", s.caller);
            out!(
                "connections: {} open, {} refused over the limits, {} closed for silence",
                s.connections_open,
                s.connections_refused,
                s.connections_timed_out
            );
            for h in &s.hardening {
                out!("hardening:   {h}");
            }
            for g in &s.break_glass {
                out!(
                    "BREAK-GLASS: uid {} ({}) on key {} until {}: {}",
                    g.uid,
                    g.principal,
                    g.key,
                    g.expires_at,
                    g.reason
                );
            }
            if d.missing_on_token.is_empty() && d.orphaned_on_token.is_empty() {
                out!("drift:       none");
            } else {
                for m in &d.missing_on_token {
                    out!("drift:       missing on token: {m}");
                }
                for o in &d.orphaned_on_token {
                    out!("drift:       orphaned on token: {o}");
                }
            }
        }
    }
    Ok(())
}

/// `keywarden metrics`: the Prometheus page over the socket.
pub async fn metrics(socket: &std::path::Path) -> anyhow::Result<()> {
    let mut c = super::client(socket).await?;
    let r = c
        .operator
        .metrics(crate::proto::MetricsRequest {})
        .await
        .map_err(super::status_error)?
        .into_inner();
    print!("{}", r.text);
    Ok(())
}
