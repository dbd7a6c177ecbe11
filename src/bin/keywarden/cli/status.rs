//! `keywarden status`.

use std::path::Path;

use serde_json::json;

use super::{client, print_json, status_error, Output};
use keywarden::core::validate::escape;
use keywarden::proto;

pub async fn run(socket: &Path, output: Output) -> anyhow::Result<()> {
    let mut c = client(socket).await?;
    let s = c
        .operator
        .status(proto::StatusRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    let t = s.token.clone().unwrap_or_default();
    let d = s.drift.clone().unwrap_or_default();
    let seal = s.seal.clone().unwrap_or_default();
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
            "audit_forward": s.audit_forward.as_ref().map(|f| json!({
                "target": f.target, "connected": f.connected, "sent": f.sent,
                "dropped": f.dropped, "errors": f.errors, "queued": f.queued,
                "lag_seconds": f.lag_seconds, "last_error": f.last_error,
                "last_drop": f.last_drop,
            })),
            "key_attention": s.key_attention.iter().map(|a| json!({
                "key": a.key, "version": a.version, "reason": a.reason,
                "encryptions": a.encryptions, "hard_limit": a.hard_limit, "due_at": a.due_at,
            })).collect::<Vec<_>>(),
            "attention": attention(&s).iter().map(|(l, t)| json!({
                "level": l.as_str(), "what": t,
            })).collect::<Vec<_>>(),
            "break_glass": s.break_glass.iter().map(|g| json!({
                "uid": g.uid, "principal": g.principal, "key": g.key,
                "reason": g.reason, "granted_at": g.granted_at, "expires_at": g.expires_at,
            })).collect::<Vec<_>>(),
        }))?,
        Output::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            print!("{}", render(&s, colour));
        }
    }
    Ok(())
}

/// `keywarden metrics`: the Prometheus page over the socket.
pub async fn metrics(socket: &std::path::Path) -> anyhow::Result<()> {
    let mut c = super::client(socket).await?;
    let r = c
        .operator
        .metrics(keywarden::proto::MetricsRequest {})
        .await
        .map_err(super::status_error)?
        .into_inner();
    print!("{}", r.text);
    Ok(())
}

/// How urgent an attention item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Keys cannot be served, or the record is in doubt.
    Critical,
    /// Needs a person soon.
    Warning,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Critical => "critical",
            Level::Warning => "warning",
        }
    }
}

/// What needs a person, most urgent first.
pub fn attention(s: &proto::StatusResponse) -> Vec<(Level, String)> {
    let mut a = Vec::new();
    let seal = s.seal.clone().unwrap_or_default();
    a.extend(seal_attention(&seal));
    service_attention(s, &mut a);
    if let Some(what) = s.audit_forward.as_ref().and_then(forward_attention) {
        a.push((Level::Warning, what));
    }
    if s.audit_disk_low {
        a.push((
            Level::Warning,
            format!(
                "the audit log's filesystem is nearly full: {} MiB left of {} MiB; archive old audit files or grow it (a full disk stops every key operation)",
                s.audit_disk_free_bytes >> 20,
                s.audit_disk_size_bytes >> 20
            ),
        ));
    }
    for k in &s.key_attention {
        a.push((Level::Warning, key_attention(k)));
    }
    if seal.interrupted_rekey {
        a.push((
            Level::Warning,
            "an interrupted rekey commit was found; shares of either set unseal".into(),
        ));
    }
    let d = s.drift.clone().unwrap_or_default();
    for m in &d.missing_on_token {
        a.push((Level::Critical, format!("drift: missing on the token: {m}")));
    }
    for o in &d.orphaned_on_token {
        a.push((Level::Warning, format!("drift: orphaned on the token: {o}")));
    }
    a.sort_by_key(|(l, _)| *l);
    a
}

/// A seal that is not open: no key is served.
fn seal_attention(seal: &proto::SealStatus) -> Option<(Level, String)> {
    match seal.phase.as_str() {
        "unsealed" => None,
        "sealed" => Some((
            Level::Critical,
            format!(
                "sealed: no key is served ({} of {} shares received; `keywarden operator unseal`)",
                seal.received, seal.threshold
            ),
        )),
        other => Some((
            Level::Critical,
            format!("{other}: no key is served (`keywarden operator init`)"),
        )),
    }
}

/// The HSM, the audit log, the registry's integrity, dev mode and
/// break-glass grants.
fn service_attention(s: &proto::StatusResponse, a: &mut Vec<(Level, String)>) {
    if s.hsm_health != "ok" {
        a.push((
            Level::Critical,
            format!("HSM unavailable: {}", s.hsm_detail),
        ));
    }
    if s.audit_health != "ok" {
        a.push((
            Level::Critical,
            format!("audit {}: {}", s.audit_health, s.audit_detail),
        ));
    }
    for t in &s.registry_tampering {
        a.push((Level::Critical, format!("TAMPERING: {t}")));
    }
    if s.dev_mode {
        a.push((
            Level::Warning,
            "DEV MODE (keywarden dev): never use this daemon for real data".into(),
        ));
    }
    for g in &s.break_glass {
        a.push((
            Level::Warning,
            format!(
                "break-glass: uid {} ({}) on key {} until {}: {}",
                g.uid,
                g.principal,
                g.key,
                super::when(g.expires_at),
                g.reason
            ),
        ));
    }
}

/// Audit forwarding that is disconnected or dropped lines lately.
fn forward_attention(f: &proto::AuditForwardStatus) -> Option<String> {
    // A drop is news for ten minutes; the total stays in the details.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let recent_drop = f.last_drop > 0 && now - f.last_drop < 600;
    if f.connected && !recent_drop {
        return None;
    }
    let mut what = format!(
        "audit forwarding to {}: {}",
        f.target,
        if f.connected {
            "connected"
        } else {
            "disconnected"
        }
    );
    if recent_drop {
        what.push_str(&format!(
            ", lines dropped (the last at {}; {} in all)",
            super::when(f.last_drop),
            f.dropped
        ));
    }
    what.push_str(&format!(", {} queued", f.queued));
    if !f.last_error.is_empty() {
        what.push_str(&format!(" ({})", f.last_error));
    }
    Some(what)
}

/// A key that needs rotating or is about to be destroyed.
fn key_attention(k: &proto::KeyAttention) -> String {
    match k.reason.as_str() {
        "encryption_limit" => format!(
            "key {} version {}: {} of {} encryptions made; rotate it",
            k.key, k.version, k.encryptions, k.hard_limit
        ),
        "destruction_due" => format!(
            "key {}: scheduled destruction at {}",
            k.key,
            super::when(k.due_at)
        ),
        other => format!("key {}: {other}", k.key),
    }
}

/// The text view: what needs attention first, then the daemon's state, in
/// aligned columns; ANSI colour only when `colour`.
pub fn render(s: &proto::StatusResponse, colour: bool) -> String {
    use std::fmt::Write;
    let paint = |code: &str, text: &str| {
        if colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };
    let mut o = String::new();
    let items = attention(s);
    if items.is_empty() {
        let _ = writeln!(o, "{}", paint("32", "OK: nothing needs attention"));
    } else {
        let _ = writeln!(o, "{}", paint("1", "NEEDS ATTENTION"));
        for (l, t) in &items {
            let mark = match l {
                Level::Critical => paint("1;31", "CRITICAL"),
                Level::Warning => paint("33", "WARNING "),
            };
            // Text from the daemon (key names, reasons) is escaped before
            // any colour is added: nothing stored can drive the terminal.
            let _ = writeln!(o, "  {mark}  {}", escape(t));
        }
    }
    let _ = writeln!(o);
    let t = s.token.clone().unwrap_or_default();
    let seal = s.seal.clone().unwrap_or_default();
    let mut rows: Vec<(&str, String)> = vec![("version", s.version.clone())];
    rows.push((
        "seal",
        match seal.phase.as_str() {
            "sealed" => format!(
                "sealed ({} of {} shares received, set {})",
                seal.received, seal.threshold, seal.set_id
            ),
            "unsealed" => format!(
                "unsealed (set {}, {} of {} shares)",
                seal.set_id, seal.threshold, seal.shares
            ),
            other => other.to_string(),
        },
    ));
    if !seal.rekey_id.is_empty() {
        rows.push((
            "rekey",
            format!(
                "{} {} ({} of {})",
                seal.rekey_id, seal.rekey_phase, seal.rekey_received, seal.rekey_threshold
            ),
        ));
    }
    if seal.init_pending {
        rows.push((
            "init",
            "shares issued; the first unseal completes init (changes the token PINs)".into(),
        ));
    }
    rows.push(("hsm", s.hsm_health.clone()));
    rows.push((
        "token",
        format!(
            "{} (serial {}, {} {}, profile {})",
            t.label, t.serial, t.manufacturer, t.model, t.profile
        ),
    ));
    rows.push((
        "sessions",
        format!(
            "{} worker sessions, session key copies {}",
            t.session_pool_size,
            if t.session_key_copies { "on" } else { "off" }
        ),
    ));
    rows.push(("keys", s.key_count.to_string()));
    rows.push(("audit", s.audit_health.clone()));
    if let Some(f) = &s.audit_forward {
        rows.push((
            "forwarding",
            format!(
                "{} ({}, {} sent, {} dropped, {} queued, lag {:.1} s)",
                f.target,
                if f.connected {
                    "connected"
                } else {
                    "disconnected"
                },
                f.sent,
                f.dropped,
                f.queued,
                f.lag_seconds
            ),
        ));
    }
    rows.push(("policy", s.policy.clone()));
    rows.push(("you", s.caller.clone()));
    rows.push((
        "connections",
        format!(
            "{} open, {} refused over the limits, {} closed for silence",
            s.connections_open, s.connections_refused, s.connections_timed_out
        ),
    ));
    for h in &s.hardening {
        rows.push(("hardening", h.clone()));
    }
    let d = s.drift.clone().unwrap_or_default();
    if d.missing_on_token.is_empty() && d.orphaned_on_token.is_empty() {
        rows.push(("drift", "none".into()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        let _ = writeln!(o, "{k:<width$}  {}", escape(&v));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> proto::StatusResponse {
        proto::StatusResponse {
            version: "1".into(),
            hsm_health: "ok".into(),
            audit_health: "ok".into(),
            seal: Some(proto::SealStatus {
                phase: "unsealed".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_healthy_daemon_says_so_plainly_when_piped() {
        let t = render(&healthy(), false);
        assert!(t.starts_with("OK: nothing needs attention\n"), "{t}");
        assert!(!t.contains('\x1b'));
        // Values are aligned in one column, after the longest name.
        let width = "connections".len();
        for l in t.lines().skip(2) {
            assert_eq!(l.get(width..width + 2), Some("  "), "{l:?} in\n{t}");
            assert!(!l[..width].trim_end().contains(' '), "{l:?}");
        }
    }

    #[test]
    fn what_needs_attention_comes_first_most_urgent_first() {
        let mut s = healthy();
        s.key_attention.push(proto::KeyAttention {
            key: "patients".into(),
            version: 3,
            reason: "encryption_limit".into(),
            encryptions: 1 << 30,
            hard_limit: 1 << 31,
            ..Default::default()
        });
        s.audit_health = "unavailable".into();
        s.audit_detail = "writing audit.log: disk full".into();
        s.seal = Some(proto::SealStatus {
            phase: "sealed".into(),
            received: 1,
            threshold: 3,
            ..Default::default()
        });
        let t = render(&s, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NEEDS ATTENTION");
        assert!(
            lines[1].contains("CRITICAL") && lines[1].contains("sealed"),
            "{t}"
        );
        assert!(
            lines[2].contains("CRITICAL") && lines[2].contains("disk full"),
            "{t}"
        );
        assert!(
            lines[3].contains("WARNING") && lines[3].contains("key patients version 3"),
            "{t}"
        );
        // On a terminal the marks are coloured.
        let c = render(&s, true);
        assert!(c.contains("\x1b[1;31mCRITICAL\x1b[0m"), "{c}");
        // A key name cannot bring its own escape sequences.
        s.key_attention[0].key = "evil\x1b[2J".into();
        let c = render(&s, true);
        assert!(c.contains("evil\\x1b[2J") && !c.contains("evil\x1b"), "{c}");
    }
}
