//! The audit trail kept since a backup, read back for a restore: every
//! line verified (the hash chain, every checkpoint signature under the
//! backup's audit key) and linked to the backup's chain head.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::format::Header;
use super::restore::{io, refused};
use super::{BackupError, AUDIT_KEY_ENTRY};

/// An audit line: its seq and its fields.
pub(super) type AuditLine = (u64, Map<String, Value>);

/// A verified trail: every line, and where it ends.
pub(super) struct Trail {
    pub lines: Vec<AuditLine>,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Hex SHA-256 of the last line: the restored log continues the chain
    /// from it.
    pub last_hash: String,
    pub last_time: String,
}

/// Reads and verifies the trail: the hash chain and every checkpoint
/// signature (under the backup's audit key, which the restore later proves
/// is the token's), read once, so the lines used are the lines verified. It
/// must be linked to the backup: hold the backup's chain head (the same
/// line), or begin with the line right after it (a restored deployment's
/// log continues the chain from there). So a file that ends before the
/// backup, or another deployment's log, is refused.
pub(super) fn read_trail(
    header: &Header,
    files: &[PathBuf],
    audit_key: &[u8],
    scratch: &Path,
) -> Result<Trail, BackupError> {
    let head = header.chain_head.as_ref().ok_or_else(|| {
        refused(
            "--replay-audit: the backup was taken without an audit log, so no trail can follow it",
        )
    })?;
    let key_path = scratch.join(AUDIT_KEY_ENTRY);
    std::fs::write(&key_path, audit_key).map_err(io(&key_path))?;
    let key = crate::audit::verify::load_public_key(&key_path)
        .map_err(|e| refused(format!("the backup's audit signing key: {e}")))?;
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        texts.push((f.as_path(), std::fs::read_to_string(f).map_err(io(f))?));
    }
    let refs: Vec<(&Path, &str)> = texts.iter().map(|(p, t)| (*p, t.as_str())).collect();
    let report = crate::audit::verify::verify_texts(&refs, &key, true)
        .map_err(|b| refused(format!("--replay-audit: the trail does not verify: {b}")))?;
    let mut trail = Trail {
        lines: Vec::new(),
        first_seq: report.first_seq,
        last_seq: report.last_seq,
        last_hash: String::new(),
        last_time: String::new(),
    };
    let mut linked = false;
    for (_, text) in &refs {
        for line in text.lines() {
            let v: Map<String, Value> = serde_json::from_str(line)
                .map_err(|_| refused("--replay-audit: a line that does not parse"))?;
            let seq = v.get("seq").and_then(Value::as_u64).unwrap_or(0);
            let hash = hex::encode(Sha256::digest(line.as_bytes()));
            if seq == head.seq {
                if hash != head.hash {
                    return Err(refused(format!(
                        "--replay-audit: line {seq} of the trail is not the backup's chain head (another deployment's log, or an altered one)"
                    )));
                }
                linked = true;
            }
            if trail.lines.is_empty()
                && seq == head.seq.saturating_add(1)
                && v.get("prev").and_then(Value::as_str) == Some(head.hash.as_str())
            {
                linked = true;
            }
            trail.last_hash = hash;
            trail.last_time = v
                .get("time")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            trail.lines.push((seq, v));
        }
    }
    if !linked {
        return Err(refused(format!(
            "--replay-audit: the trail (seq {} to {}) is not linked to the backup: it must hold the backup's chain head, seq {}, or start right after it; give the files from before the backup up to now",
            report.first_seq, report.last_seq, head.seq
        )));
    }
    Ok(trail)
}
