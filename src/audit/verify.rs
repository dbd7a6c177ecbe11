//! Offline verification of the audit log: the hash chain, the sequence and
//! every checkpoint signature. Needs only the files and the public key.

use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::canonical;

/// No log reaches this many lines; a line claiming more is refused.
pub const MAX_SEQ: u64 = 1 << 62;

/// What a clean verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Lines verified, checkpoints included.
    pub entries: u64,
    /// Checkpoints whose signature verified.
    pub checkpoints: u64,
    /// The first line's sequence number.
    pub first_seq: u64,
    /// The last line's sequence number.
    pub last_seq: u64,
    /// Entries after the last checkpoint (not covered by a signature).
    pub unsigned_tail: u64,
    /// The first file does not start at the genesis line.
    pub starts_mid_chain: bool,
}

/// The first problem found: the sequence number and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seq {seq}: {what}")]
pub struct Broken {
    /// The sequence number of the line at fault (the one expected where a
    /// line is missing or cut short; 0 for a file that could not be read).
    pub seq: u64,
    /// What is wrong with it.
    pub what: String,
}

/// Why the public key could not be loaded or a checkpoint's signature
/// does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The public key file could not be read.
    #[error("{}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What reading it failed with.
        source: std::io::Error,
    },
    /// The public key file is not hex.
    #[error("{}: not hex", path.display())]
    KeyNotHex {
        /// The file.
        path: PathBuf,
    },
    /// The public key file's bytes are not a P-256 point.
    #[error("{}: {source}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why the point was refused.
        source: p256::ecdsa::Error,
    },
    /// A checkpoint has no `sig`.
    #[error("checkpoint without a signature")]
    NoSignature,
    /// A checkpoint's `sig` is not hex.
    #[error("signature is not hex")]
    SignatureNotHex,
    /// A checkpoint's `sig` is not an r||s signature.
    #[error("malformed signature")]
    MalformedSignature,
    /// A checkpoint's signature does not verify: it, or a line before it, was
    /// altered.
    #[error("bad signature: the checkpoint or an entry before it was altered")]
    BadSignature,
}

/// Reads the audit-signing public key published beside the log (hex of a
/// SEC1 P-256 point).
pub fn load_public_key(path: &Path) -> Result<VerifyingKey, VerifyError> {
    let text = std::fs::read_to_string(path).map_err(|source| VerifyError::ReadKey {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = hex::decode(text.trim()).map_err(|_| VerifyError::KeyNotHex {
        path: path.to_path_buf(),
    })?;
    VerifyingKey::from_sec1_bytes(&bytes).map_err(|source| VerifyError::BadKey {
        path: path.to_path_buf(),
        source,
    })
}

fn check_signature(key: &VerifyingKey, obj: &Map<String, Value>) -> Result<(), VerifyError> {
    let mut body = obj.clone();
    let sig = body
        .remove("sig")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or(VerifyError::NoSignature)?;
    let sig = hex::decode(sig).map_err(|_| VerifyError::SignatureNotHex)?;
    let sig = Signature::from_slice(&sig).map_err(|_| VerifyError::MalformedSignature)?;
    let digest = Sha256::digest(canonical(&body).as_bytes());
    key.verify_prehash(&digest, &sig)
        .map_err(|_| VerifyError::BadSignature)
}

/// Verifies files given in order (oldest first).
pub fn verify_files(
    files: &[&Path],
    key: &VerifyingKey,
    allow_unsigned_tail: bool,
) -> Result<Report, Broken> {
    let mut texts = Vec::with_capacity(files.len());
    for path in files {
        let text = std::fs::read_to_string(path).map_err(|e| Broken {
            seq: 0,
            what: format!("cannot read {}: {e}", path.display()),
        })?;
        texts.push((*path, text));
    }
    let refs: Vec<(&Path, &str)> = texts.iter().map(|(p, t)| (*p, t.as_str())).collect();
    verify_texts(&refs, key, allow_unsigned_tail)
}

/// [`verify_files`] on contents already read (a caller that goes on to use
/// the lines uses exactly the lines verified).
pub fn verify_texts(
    files: &[(&Path, &str)],
    key: &VerifyingKey,
    allow_unsigned_tail: bool,
) -> Result<Report, Broken> {
    let mut chain = Chain::new(key);
    for (path, text) in files {
        chain.report.files += 1;
        for raw in text.split_inclusive('\n') {
            let Some(line) = raw.strip_suffix('\n') else {
                return Err(Broken {
                    seq: chain.expected.unwrap_or(0),
                    what: format!(
                        "{}: a partial last line (truncated mid-write)",
                        path.display()
                    ),
                });
            };
            chain.push(line)?;
        }
    }
    chain.finish(allow_unsigned_tail)
}

/// The chain checked one line at a time (oldest first), so a caller can
/// stream files of any size and keep only the lines it needs.
pub struct Chain<'k> {
    key: &'k VerifyingKey,
    report: Report,
    expected: Option<u64>,
    prev_hash: Option<String>,
}

impl<'k> Chain<'k> {
    /// A chain with nothing checked yet, its checkpoints verified under
    /// `key`.
    pub fn new(key: &'k VerifyingKey) -> Self {
        Chain {
            key,
            report: Report {
                files: 0,
                entries: 0,
                checkpoints: 0,
                first_seq: 0,
                last_seq: 0,
                unsigned_tail: 0,
                starts_mid_chain: false,
            },
            expected: None,
            prev_hash: None,
        }
    }

    /// Counts one more file (for the report).
    pub fn next_file(&mut self) {
        self.report.files += 1;
    }

    /// Checks the next line (without its newline) and returns it parsed.
    pub fn push(&mut self, line: &str) -> Result<Map<String, Value>, Broken> {
        let at = self.expected.unwrap_or(0);
        let v: Value = serde_json::from_str(line).map_err(|_| Broken {
            seq: at,
            what: "a line that is not valid JSON (edited)".into(),
        })?;
        let Value::Object(obj) = v else {
            return Err(Broken {
                seq: at,
                what: "a line that is not an object".into(),
            });
        };
        let seq = obj.get("seq").and_then(Value::as_u64).ok_or(Broken {
            seq: at,
            what: "a line without a sequence number".into(),
        })?;
        if seq > MAX_SEQ {
            return Err(Broken {
                seq,
                what: "a sequence number no log reaches (forged)".into(),
            });
        }
        let prev = obj.get("prev").and_then(Value::as_str).unwrap_or_default();
        match self.expected {
            None => {
                self.report.first_seq = seq;
                if seq == 0 {
                    if obj.get("type").and_then(Value::as_str) != Some("genesis")
                        || prev != "0".repeat(64)
                    {
                        return Err(Broken {
                            seq,
                            what: "seq 0 is not a genesis line".into(),
                        });
                    }
                } else {
                    self.report.starts_mid_chain = true;
                }
            }
            Some(want) if seq < want => {
                return Err(Broken {
                    seq: want,
                    what: format!(
                        "found seq {seq} where {want} was expected: lines reordered or replayed"
                    ),
                })
            }
            Some(want) if seq > want => {
                return Err(Broken {
                    seq: want,
                    what: format!("missing (the next line is seq {seq}): lines deleted"),
                })
            }
            Some(_) => {}
        }
        if let Some(h) = &self.prev_hash {
            if prev != h {
                return Err(Broken {
                    seq: seq.saturating_sub(1),
                    what: "altered: its hash does not match the next line's prev".into(),
                });
            }
        }
        // A line whose canonical form differs was edited by hand.
        if canonical(&obj) != line {
            return Err(Broken {
                seq,
                what: "altered: not in canonical form".into(),
            });
        }
        if obj.get("type").and_then(Value::as_str) == Some("checkpoint") {
            check_signature(self.key, &obj).map_err(|e| Broken {
                seq,
                what: e.to_string(),
            })?;
            self.report.checkpoints += 1;
            self.report.unsigned_tail = 0;
        } else {
            self.report.unsigned_tail += 1;
        }
        self.report.entries += 1;
        self.report.last_seq = seq;
        self.expected = Some(seq.saturating_add(1));
        self.prev_hash = Some(hex::encode(Sha256::digest(line.as_bytes())));
        Ok(obj)
    }

    /// The report, once every line was pushed.
    pub fn finish(self, allow_unsigned_tail: bool) -> Result<Report, Broken> {
        let report = self.report;
        if report.entries == 0 {
            return Err(Broken {
                seq: 0,
                what: "the log is empty".into(),
            });
        }
        if report.unsigned_tail > 0 && !allow_unsigned_tail {
            return Err(Broken {
                seq: report.last_seq,
                what: format!(
                    "the last {} entries are not covered by a checkpoint signature: the log was truncated, or the daemon is running or crashed (use --allow-unsigned-tail for a live log)",
                    report.unsigned_tail
                ),
            });
        }
        Ok(report)
    }
}

/// The log files in `dir`, oldest first: rotated `audit-*.log` files by
/// name (their names carry the last seq, zero-padded), then the live file.
pub fn log_files(dir: &Path, live: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("audit-") && name.ends_with(".log") {
            files.push(p);
        }
    }
    files.sort();
    if live.exists() {
        files.push(live.to_path_buf());
    }
    Ok(files)
}
