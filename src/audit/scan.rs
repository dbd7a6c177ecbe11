//! The daemon reading its own log back: the ledger lines (every registry
//! write, [`crate::backup::ledger`]) and how far the files on disk can
//! vouch for the registry's history. Used when an operator accepts a
//! registry older than the log: what the log records is taken back, never
//! undone.
//!
//! Files are streamed line by line (a log may hold millions of lines);
//! only ledger lines are kept. The chain is verified with the signing key
//! the HSM holds, not the public key file beside the log, which anyone who
//! can write the directory could replace.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;
use serde_json::{Map, Value};

use super::verify::{Broken, Chain, Report};
use crate::backup::ledger;

/// What the log on disk says about the registry's history.
#[derive(Debug)]
pub struct LedgerScan {
    /// Every `registry_write` and `registry_write_failed` line, with its
    /// seq, oldest first (their MACs are checked by the caller, who holds
    /// the registry key).
    pub lines: Vec<(u64, Map<String, Value>)>,
    /// The chain from the first file's first line to the last complete
    /// line, or where it breaks.
    pub chain: Result<Report, Broken>,
    /// The registry generation the first line knew: every write above it
    /// was made while these files were being written.
    pub first_generation: u64,
    /// Whether the first file begins at the genesis line (then the files
    /// hold the whole history).
    pub from_genesis: bool,
}

/// Why the log could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("reading the audit log {}: {source}", path.display())]
pub struct ScanError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Reads `files` (oldest first). The live file's last line may be in the
/// middle of being written: a line without its newline is left out.
pub fn scan(files: &[PathBuf], key: &VerifyingKey) -> Result<LedgerScan, ScanError> {
    let mut chain = Chain::new(key);
    let mut broken: Option<Broken> = None;
    let mut out = LedgerScan {
        lines: Vec::new(),
        chain: Err(Broken {
            seq: 0,
            what: "the log is empty".into(),
        }),
        first_generation: 0,
        from_genesis: false,
    };
    let mut first = true;
    for path in files {
        chain.next_file();
        scan_file(path, |line| {
            let parsed = if broken.is_none() {
                match chain.push(line) {
                    Ok(obj) => Some(obj),
                    Err(b) => {
                        broken = Some(b);
                        None
                    }
                }
            } else {
                None
            };
            // After a break the chain proves nothing, but ledger lines are
            // still worth reading: each carries its own MAC.
            let obj = match parsed {
                Some(o) => o,
                None => match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(o)) => o,
                    _ => return,
                },
            };
            if first {
                first = false;
                out.first_generation = obj
                    .get("registry_generation")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                out.from_genesis = obj.get("type").and_then(Value::as_str) == Some("genesis");
            }
            let kind = obj.get("type").and_then(Value::as_str);
            if kind == Some(ledger::WRITE) || kind == Some(ledger::FAILED) {
                let seq = obj.get("seq").and_then(Value::as_u64).unwrap_or(0);
                out.lines.push((seq, obj));
            }
        })
        .map_err(|source| ScanError {
            path: path.clone(),
            source,
        })?;
    }
    out.chain = match broken {
        Some(b) => Err(b),
        None => chain.finish(true),
    };
    Ok(out)
}

/// Calls `each` with every complete line of `path`. Lines that are not
/// UTF-8 are passed as they decode lossily (the chain then refuses them).
fn scan_file(path: &Path, mut each: impl FnMut(&str)) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            return Ok(());
        }
        buf.pop();
        each(&String::from_utf8_lossy(&buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Audit, AuditConfig};
    use p256::ecdsa::{signature::hazmat::PrehashSigner, Signature, SigningKey};

    fn open(dir: &Path) -> (Audit, VerifyingKey) {
        let audit = Audit::open(AuditConfig {
            file: dir.join("audit.log"),
            checkpoint_every: 1000,
            max_file_bytes: 1 << 30,
            forward: None,
            node: None,
        })
        .unwrap();
        let sk = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let vk = *sk.verifying_key();
        audit.set_signer(Some(std::sync::Arc::new(move |d: &[u8; 32]| {
            let s: Signature = sk.sign_prehash(d).unwrap();
            Ok(s.to_bytes().to_vec())
        })));
        (audit, vk)
    }

    #[test]
    fn ledger_lines_are_kept_and_a_deleted_line_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, vk) = open(dir.path());
        let rec = crate::core::model::KeyRecord::sample(
            "patients",
            3,
            &[(1, 1, crate::core::model::VersionState::Active)],
        );
        audit
            .record_ledger(ledger::line(&rec, 1, &[5u8; 32]).unwrap())
            .unwrap();
        audit.note_registry_generation(1);
        let mut other = Map::new();
        other.insert("event".into(), "status".into());
        audit.record(other.clone()).unwrap();
        audit.checkpoint("test").unwrap();
        audit.record(other).unwrap();
        let live = dir.path().join("audit.log");
        let files = super::super::verify::log_files(dir.path(), &live).unwrap();
        let s = scan(&files, &vk).unwrap();
        assert!(s.from_genesis);
        assert_eq!(s.first_generation, 0);
        assert_eq!(s.lines.len(), 1);
        assert_eq!(s.lines[0].1["key"], "patients");
        let report = s.chain.unwrap();
        assert_eq!(report.unsigned_tail, 1);

        // A partial line being written is left out, not a break.
        let text = std::fs::read_to_string(&live).unwrap();
        std::fs::write(&live, format!("{text}{{\"seq\":")).unwrap();
        assert!(scan(&files, &vk).unwrap().chain.is_ok());

        // Deleting the status line between the ledger line and the
        // checkpoint breaks the chain; the ledger line is still read.
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":2,")).collect();
        std::fs::write(&live, kept.join("\n") + "\n").unwrap();
        let s = scan(&files, &vk).unwrap();
        assert!(s.chain.unwrap_err().what.contains("deleted"));
        assert_eq!(s.lines.len(), 1);

        // Another signing key (a replaced public key file proves nothing).
        std::fs::write(&live, &text).unwrap();
        let wrong = *SigningKey::from_slice(&[8u8; 32]).unwrap().verifying_key();
        assert!(scan(&files, &wrong).unwrap().chain.is_err());
    }
}
