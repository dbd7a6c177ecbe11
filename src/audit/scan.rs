//! The daemon reading its own log back: the ledger lines (every registry
//! write, [`crate::backup::ledger`]) and how far the files on disk can
//! vouch for the registry's history. Used when an operator accepts a
//! registry older than the log: what the log records is taken back, never
//! undone.
//!
//! Files are streamed line by line (a log may hold millions of lines) and
//! handed to a visitor; nothing is kept here. The chain is verified with the signing key
//! the HSM holds, not the public key file beside the log, which anyone who
//! can write the directory could replace.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use p256::ecdsa::VerifyingKey;
use serde_json::{Map, Value};

use super::verify::{Broken, Chain, Report};

/// No line of ours comes near this (a ledger line holds one key record);
/// a longer one is not read into memory, and breaks the chain.
pub const MAX_LINE: u64 = 16 << 20;

/// What a scan found about the log as a whole.
#[derive(Debug)]
pub struct Scanned {
    /// The chain from the first file's first line to the last complete
    /// line, or where it breaks.
    pub chain: Result<Report, Broken>,
    /// The seq of the last line visited.
    pub last_seq: Option<u64>,
}

/// Why the log could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("reading the audit log {}: {source}", path.display())]
pub struct ScanError {
    /// The file that could not be read.
    pub path: PathBuf,
    /// What reading it failed with.
    #[source]
    pub source: std::io::Error,
}

/// Reads `files` (oldest first), verifying the chain under `key`, and
/// calls `visit` with every line `wanted` picks (parsed) whose seq is at
/// most `upto`. After a break the chain proves nothing, but lines are
/// still visited: each ledger line carries its own MAC. The live file's
/// last line may be in the middle of being written: a line without its
/// newline is left out.
pub fn scan(
    files: &[PathBuf],
    key: &VerifyingKey,
    upto: Option<u64>,
    wanted: impl Fn(&Map<String, Value>) -> bool,
    mut visit: impl FnMut(u64, &Map<String, Value>),
) -> Result<Scanned, ScanError> {
    let mut chain = Chain::new(key);
    let mut broken: Option<Broken> = None;
    let mut last_seq = None;
    for path in files {
        chain.next_file();
        scan_file(path, |line| {
            let obj = match line {
                Some(line) => {
                    let parsed = if broken.is_none() {
                        chain.push(line).map_err(|b| broken = Some(b)).ok()
                    } else {
                        None
                    };
                    match parsed {
                        Some(o) => o,
                        None => match serde_json::from_str::<Value>(line) {
                            Ok(Value::Object(o)) => o,
                            _ => return,
                        },
                    }
                }
                None => {
                    if broken.is_none() {
                        broken = Some(Broken {
                            seq: last_seq.map_or(0, |s: u64| s.saturating_add(1)),
                            what: format!("a line longer than {MAX_LINE} bytes"),
                        });
                    }
                    return;
                }
            };
            let seq = obj.get("seq").and_then(Value::as_u64).unwrap_or(0);
            if upto.is_some_and(|u| seq > u) {
                return;
            }
            last_seq = Some(seq);
            if wanted(&obj) {
                visit(seq, &obj);
            }
        })
        .map_err(|source| ScanError {
            path: path.clone(),
            source,
        })?;
    }
    let chain = match broken {
        Some(b) => Err(b),
        None => chain.finish(true),
    };
    Ok(Scanned { chain, last_seq })
}

/// Calls `each` with every complete line of `path` (`None` for a line over
/// [`MAX_LINE`], which is skipped without being kept). Lines that are not
/// UTF-8 are passed as they decode lossily (the chain then refuses them).
fn scan_file(path: &Path, mut each: impl FnMut(Option<&str>)) -> std::io::Result<()> {
    let mut r = std::io::BufReader::new(std::fs::File::open(path)?);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut r).take(MAX_LINE + 1).read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if buf.last() != Some(&b'\n') {
            if (buf.len() as u64) <= MAX_LINE {
                // The end of the file: a line still being written.
                return Ok(());
            }
            // Too long: skip to its end without keeping it.
            loop {
                buf.clear();
                let n = (&mut r).take(1 << 20).read_until(b'\n', &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                if buf.last() == Some(&b'\n') {
                    break;
                }
            }
            each(None);
            continue;
        }
        buf.pop();
        each(Some(&String::from_utf8_lossy(&buf)));
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

    type Lines = Vec<(u64, Map<String, Value>)>;

    fn ledger(files: &[PathBuf], vk: &VerifyingKey) -> (Scanned, Lines) {
        let mut lines = Vec::new();
        let s = scan(files, vk, None, crate::backup::fold::is_ledger, |seq, l| {
            lines.push((seq, l.clone()))
        })
        .unwrap();
        (s, lines)
    }

    #[test]
    fn ledger_lines_are_visited_and_a_deleted_line_breaks_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, vk) = open(dir.path());
        let rec = crate::core::model::KeyRecord::sample(
            "patients",
            3,
            &[(1, 1, crate::core::model::VersionState::Active)],
        );
        audit
            .record_ledger(crate::backup::ledger::line(&rec, 1, &[5u8; 32]).unwrap())
            .unwrap();
        audit.note_registry_generation(1);
        let mut other = Map::new();
        other.insert("event".into(), "status".into());
        audit.record(other.clone()).unwrap();
        audit.checkpoint("test").unwrap();
        audit.record(other).unwrap();
        let live = dir.path().join("audit.log");
        let files = super::super::verify::log_files(dir.path(), &live).unwrap();
        let (s, lines) = ledger(&files, &vk);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].1["key"], "patients");
        assert_eq!(s.chain.unwrap().unsigned_tail, 1);
        assert_eq!(s.last_seq, Some(4));
        // Only lines up to a seq.
        let mut seen = 0;
        scan(&files, &vk, Some(0), |_| true, |_, _| seen += 1).unwrap();
        assert_eq!(seen, 1);

        // A partial line being written is left out, not a break.
        let text = std::fs::read_to_string(&live).unwrap();
        std::fs::write(&live, format!("{text}{{\"seq\":")).unwrap();
        assert!(ledger(&files, &vk).0.chain.is_ok());

        // Deleting the status line between the ledger line and the
        // checkpoint breaks the chain; the ledger line is still visited.
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":2,")).collect();
        std::fs::write(&live, kept.join("\n") + "\n").unwrap();
        let (s, lines) = ledger(&files, &vk);
        assert!(s.chain.unwrap_err().what.contains("deleted"));
        assert_eq!(lines.len(), 1);

        // Another signing key (a replaced public key file proves nothing).
        std::fs::write(&live, &text).unwrap();
        let wrong = *SigningKey::from_slice(&[8u8; 32]).unwrap().verifying_key();
        assert!(ledger(&files, &wrong).0.chain.is_err());

        // A line far too long is skipped, not read into memory, and breaks
        // the chain; the lines after it are still visited.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&live)
            .unwrap();
        std::io::Write::write_all(&mut f, &vec![b'x'; MAX_LINE as usize + 10]).unwrap();
        std::io::Write::write_all(&mut f, b"\n").unwrap();
        std::io::Write::write_all(&mut f, kept[1].as_bytes()).unwrap();
        std::io::Write::write_all(&mut f, b"\n").unwrap();
        drop(f);
        let (s, lines) = ledger(&files, &vk);
        assert!(s.chain.unwrap_err().what.contains("longer than"));
        assert_eq!(lines.len(), 2);
    }
}
