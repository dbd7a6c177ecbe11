//! The backup file, byte by byte (docs/FORMAT.md#backup-files):
//!
//! ```text
//! "KWBK" | 0x01 | header length (u32, big-endian) | header (JSON)
//!        | an age v1 file (binary, one X25519 recipient) whose plaintext is:
//!   "KWBP" | 0x01 | SHA-256 of every byte before the age file
//!          | entry count (u32) | entries: name length (u16) | name (UTF-8)
//!          | data length (u64) | data
//! ```
//!
//! The header is readable without a quorum (what, when, which deployment);
//! the age layer encrypts and authenticates the payload, and the payload's
//! copy of the header's hash authenticates the header.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The file's first four bytes.
pub const MAGIC: &[u8; 4] = b"KWBK";
/// The first four bytes of the decrypted payload.
pub const PAYLOAD_MAGIC: &[u8; 4] = b"KWBP";
/// The format version this build writes and reads (file and payload).
pub const VERSION: u8 = 1;
/// Bounds what a restore reads (the file is read whole).
pub const MAX_FILE: u64 = 4 << 30;
const MAX_HEADER: u32 = 64 * 1024;
const MAX_ENTRIES: u32 = 1_000_000;

/// Why a backup file was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Keywarden backup (no KWBK magic)")]
    Magic,
    /// A format version this build does not read.
    #[error("backup format version {0}; this build reads version {VERSION}")]
    Version(u8),
    /// The file ends early; the part that is cut short.
    #[error("the backup is truncated ({0})")]
    Truncated(&'static str),
    /// The header is too long or not the header's JSON.
    #[error("the backup header is not valid: {0}")]
    Header(String),
    /// The age layer does not open under this deployment's backup key.
    #[error("the backup does not open under this deployment's backup key (altered, or taken under another share set): {0}")]
    Decrypt(String),
    /// The decrypted payload is malformed.
    #[error("the backup's payload is malformed (altered): {0}")]
    Payload(&'static str),
    /// The clear header is not the one the payload authenticates.
    #[error("the backup header was altered: its hash does not match the one inside the encrypted payload")]
    HeaderAltered,
    /// The age encryption failed while writing a backup.
    #[error("encrypting the backup: {0}")]
    Encrypt(String),
}

/// The chain head: the last audit line written before the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainHead {
    /// The line's audit sequence number.
    pub seq: u64,
    /// Hex SHA-256 of that line.
    pub hash: String,
}

/// Which deployment a backup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The share set whose quorum opens the backup.
    pub set_id: String,
    /// Shares needed to unseal (and to open the backup).
    pub threshold: u8,
    /// Shares in the set.
    pub shares: u8,
    /// Hex of the seal's check value: shares are confirmed against it
    /// before anything is decrypted.
    pub check: String,
    /// CKA_LABEL of the token.
    pub token_label: String,
    /// The token's serial number.
    pub token_serial: String,
    /// The HSM profile's name (`softhsm2`, `kryoptic`, a vendor's).
    pub profile: String,
}

/// The clear header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// When the backup was taken (Unix seconds).
    pub created_at: i64,
    /// The registry generation the snapshot holds.
    pub generation: u64,
    /// The deployment it belongs to.
    pub deployment: Deployment,
    /// `None` when the daemon runs without an audit log (benchmarks).
    pub chain_head: Option<ChainHead>,
    /// Taken while sealed (the registry was not verified at the time).
    pub sealed: bool,
    /// The token's files are inside (software tokens); otherwise the
    /// vendor's own backup procedure keeps the token.
    pub token_files: bool,
    /// The version of the daemon that took it.
    pub daemon_version: String,
}

/// One file of the payload.
pub struct Entry {
    /// The entry's name: one of the `*_ENTRY` names, or a token file's under
    /// the token entries' prefix.
    pub name: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

fn prefix(header: &Header) -> Result<Vec<u8>, FormatError> {
    let json = serde_json::to_vec(header).map_err(|e| FormatError::Header(e.to_string()))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|l| *l <= MAX_HEADER)
        .ok_or(FormatError::Header("too long".into()))?;
    let mut out = Vec::with_capacity(9 + json.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// Writes a backup file: the clear header, then the entries encrypted to
/// `recipient` (an `age1...` X25519 recipient).
pub fn seal(header: &Header, entries: &[Entry], recipient: &str) -> Result<Vec<u8>, FormatError> {
    let recipient: age::x25519::Recipient = recipient
        .parse()
        .map_err(|e: &str| FormatError::Encrypt(format!("backup recipient: {e}")))?;
    let mut out = prefix(header)?;
    let header_hash: [u8; 32] = Sha256::digest(&out).into();
    let mut payload = Vec::new();
    payload.extend_from_slice(PAYLOAD_MAGIC);
    payload.push(VERSION);
    payload.extend_from_slice(&header_hash);
    let count =
        u32::try_from(entries.len()).map_err(|_| FormatError::Encrypt("too many files".into()))?;
    payload.extend_from_slice(&count.to_be_bytes());
    for e in entries {
        let name = e.name.as_bytes();
        let nlen = u16::try_from(name.len())
            .map_err(|_| FormatError::Encrypt("file name too long".into()))?;
        payload.extend_from_slice(&nlen.to_be_bytes());
        payload.extend_from_slice(name);
        payload.extend_from_slice(&(e.data.len() as u64).to_be_bytes());
        payload.extend_from_slice(&e.data);
    }
    let enc = age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
        .map_err(|e| FormatError::Encrypt(e.to_string()))?;
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| FormatError::Encrypt(e.to_string()))?;
    w.write_all(&payload)
        .and_then(|()| w.finish().map(|_| ()))
        .map_err(|e| FormatError::Encrypt(e.to_string()))?;
    Ok(out)
}

/// Reads the clear header; returns it and where the age file starts.
pub fn read_header(file: &[u8]) -> Result<(Header, usize), FormatError> {
    if file.len() < 4 || &file[..4] != MAGIC {
        return Err(FormatError::Magic);
    }
    let version = *file.get(4).ok_or(FormatError::Truncated("version"))?;
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    let len_bytes: [u8; 4] = file
        .get(5..9)
        .and_then(|b| b.try_into().ok())
        .ok_or(FormatError::Truncated("header length"))?;
    let len = u32::from_be_bytes(len_bytes);
    if len > MAX_HEADER {
        return Err(FormatError::Header(format!(
            "length {len} over {MAX_HEADER}"
        )));
    }
    let end = 9 + len as usize;
    let json = file.get(9..end).ok_or(FormatError::Truncated("header"))?;
    let header: Header =
        serde_json::from_slice(json).map_err(|e| FormatError::Header(e.to_string()))?;
    Ok((header, end))
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Payload(what));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FormatError> {
        self.take(N, what)?
            .try_into()
            .map_err(|_| FormatError::Payload(what))
    }
}

/// Decrypts and checks a backup with the deployment's backup identity.
pub fn open(
    file: &[u8],
    identity: &age::x25519::Identity,
) -> Result<(Header, Vec<Entry>), FormatError> {
    let (header, start) = read_header(file)?;
    let dec =
        age::Decryptor::new(&file[start..]).map_err(|e| FormatError::Decrypt(e.to_string()))?;
    let mut r = dec
        .decrypt(std::iter::once(identity as &dyn age::Identity))
        .map_err(|e| FormatError::Decrypt(e.to_string()))?;
    let mut payload = zeroize::Zeroizing::new(Vec::new());
    r.read_to_end(&mut payload)
        .map_err(|e| FormatError::Decrypt(e.to_string()))?;
    let mut c = Cursor(&payload);
    if c.take(4, "magic")? != PAYLOAD_MAGIC {
        return Err(FormatError::Payload("magic"));
    }
    if c.take(1, "version")?[0] != VERSION {
        return Err(FormatError::Payload("version"));
    }
    let want: [u8; 32] = c.array("header hash")?;
    let got: [u8; 32] = Sha256::digest(&file[..start]).into();
    if want != got {
        return Err(FormatError::HeaderAltered);
    }
    let count = u32::from_be_bytes(c.array("entry count")?);
    if count > MAX_ENTRIES {
        return Err(FormatError::Payload("entry count"));
    }
    let mut entries = Vec::new();
    for _ in 0..count {
        let nlen = u16::from_be_bytes(c.array("name length")?) as usize;
        let name = std::str::from_utf8(c.take(nlen, "name")?)
            .map_err(|_| FormatError::Payload("name"))?
            .to_string();
        let dlen = u64::from_be_bytes(c.array("data length")?);
        let dlen = usize::try_from(dlen).map_err(|_| FormatError::Payload("data length"))?;
        let data = c.take(dlen, "data")?.to_vec();
        entries.push(Entry { name, data });
    }
    if !c.0.is_empty() {
        return Err(FormatError::Payload("bytes after the last entry"));
    }
    Ok((header, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            created_at: 1_700_000_000,
            generation: 12,
            deployment: Deployment {
                set_id: "0a0b0c0d".into(),
                threshold: 2,
                shares: 3,
                check: "00".repeat(32),
                token_label: "keywarden-dev".into(),
                token_serial: "1234".into(),
                profile: "softhsm2".into(),
            },
            chain_head: Some(ChainHead {
                seq: 41,
                hash: "ab".repeat(32),
            }),
            sealed: false,
            token_files: true,
            daemon_version: "test".into(),
        }
    }

    #[test]
    fn round_trip_and_every_region_is_authenticated() {
        let id = age::x25519::Identity::generate();
        let rcpt = id.to_public().to_string();
        let entries = vec![
            Entry {
                name: "registry.db".into(),
                data: vec![1; 5000],
            },
            Entry {
                name: "seal.json".into(),
                data: b"{}".to_vec(),
            },
        ];
        let file = seal(&header(), &entries, &rcpt).unwrap();
        let (h, got) = open(&file, &id).unwrap();
        assert_eq!(h, header());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, vec![1; 5000]);

        // Flip one byte in each region: magic, version, length, header,
        // age header, payload, last byte. Every copy is refused.
        let (_, start) = read_header(&file).unwrap();
        for at in [0, 4, 6, 20, start + 10, start + 200, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x01;
            assert!(open(&bad, &id).is_err(), "byte {at} flipped was accepted");
        }
        // Truncated, and extended.
        assert!(open(&file[..file.len() - 1], &id).is_err());
        let mut longer = file.clone();
        longer.push(0);
        assert!(open(&longer, &id).is_err());
        // Another deployment's key.
        assert!(matches!(
            open(&file, &age::x25519::Identity::generate()),
            Err(FormatError::Decrypt(_))
        ));
    }

    #[test]
    fn an_edited_header_that_still_parses_is_refused() {
        let id = age::x25519::Identity::generate();
        let file = seal(&header(), &[], &id.to_public().to_string()).unwrap();
        let needle = b"\"generation\":12";
        let at = file
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
            + needle.len()
            - 1;
        let mut bad = file.clone();
        bad[at] = b'9';
        assert!(matches!(open(&bad, &id), Err(FormatError::HeaderAltered)));
    }

    fn payload_error(r: Result<(Header, Vec<Entry>), FormatError>) -> &'static str {
        match r {
            Err(FormatError::Payload(what)) => what,
            Err(e) => panic!("not a payload error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// A file with a valid clear header and `body` (built by `f` from the
    /// header's hash) encrypted to `id`: what a forger holding the backup
    /// key could write, to reach the payload checks.
    fn forged(id: &age::x25519::Identity, f: impl FnOnce([u8; 32]) -> Vec<u8>) -> Vec<u8> {
        let mut out = prefix(&header()).unwrap();
        let hash: [u8; 32] = Sha256::digest(&out).into();
        let enc = age::encrypt(&id.to_public(), &f(hash)).unwrap();
        out.extend_from_slice(&enc);
        out
    }

    fn payload(hash: [u8; 32], count: u32) -> Vec<u8> {
        let mut p = PAYLOAD_MAGIC.to_vec();
        p.push(VERSION);
        p.extend_from_slice(&hash);
        p.extend_from_slice(&count.to_be_bytes());
        p
    }

    #[test]
    fn every_truncation_of_the_clear_header_is_refused_by_name() {
        let p = prefix(&header()).unwrap();
        for cut in 0..p.len() {
            let r = read_header(&p[..cut]);
            match cut {
                0..=3 => assert!(matches!(r, Err(FormatError::Magic)), "{cut}"),
                4 => assert!(matches!(r, Err(FormatError::Truncated("version"))), "{cut}"),
                5..=8 => assert!(
                    matches!(r, Err(FormatError::Truncated("header length"))),
                    "{cut}"
                ),
                _ => assert!(matches!(r, Err(FormatError::Truncated("header"))), "{cut}"),
            }
        }
        let (h, end) = read_header(&p).unwrap();
        assert_eq!(h, header());
        assert_eq!(end, p.len());
        // Anything after the header is the age file's, not the header's.
        let mut more = p.clone();
        more.extend_from_slice(b"age-encryption.org/v1\n");
        assert_eq!(read_header(&more).unwrap().1, p.len());
    }

    #[test]
    fn versions_lengths_and_header_fields_are_checked() {
        let p = prefix(&header()).unwrap();
        for v in [0u8, 2, 0xff] {
            let mut bad = p.clone();
            bad[4] = v;
            assert!(matches!(read_header(&bad), Err(FormatError::Version(got)) if got == v));
        }
        let with_len = |len: u32, body: &[u8]| {
            let mut f = b"KWBK\x01".to_vec();
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(body);
            f
        };
        // Over the limit is refused before anything is read or allocated.
        for len in [MAX_HEADER + 1, u32::MAX] {
            let e = read_header(&with_len(len, b"{}")).unwrap_err();
            assert!(
                matches!(&e, FormatError::Header(m) if m.contains("over 65536")),
                "{e}"
            );
        }
        // At the limit, a short file is truncated, not malformed.
        assert!(matches!(
            read_header(&with_len(MAX_HEADER, b"{}")),
            Err(FormatError::Truncated("header"))
        ));
        assert!(matches!(
            read_header(&with_len(0, b"")),
            Err(FormatError::Header(_))
        ));
        // A field added, or one missing, is refused.
        let mut v = serde_json::to_value(header()).unwrap();
        v["extra"] = serde_json::json!(1);
        let json = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            read_header(&with_len(json.len() as u32, &json)),
            Err(FormatError::Header(m)) if m.contains("extra")
        ));
        let mut v = serde_json::to_value(header()).unwrap();
        v.as_object_mut().unwrap().remove("generation");
        let json = serde_json::to_vec(&v).unwrap();
        assert!(matches!(
            read_header(&with_len(json.len() as u32, &json)),
            Err(FormatError::Header(m)) if m.contains("generation")
        ));
    }

    #[test]
    fn a_malformed_payload_is_refused_by_what_is_wrong() {
        let id = age::x25519::Identity::generate();
        // The forger's layout is right: a well-formed payload opens.
        let ok = forged(&id, |h| {
            let mut p = payload(h, 1);
            p.extend_from_slice(&2u16.to_be_bytes());
            p.extend_from_slice(b"db");
            p.extend_from_slice(&3u64.to_be_bytes());
            p.extend_from_slice(b"abc");
            p
        });
        let (_, entries) = open(&ok, &id).unwrap();
        assert_eq!(
            (entries[0].name.as_str(), &entries[0].data[..]),
            ("db", &b"abc"[..])
        );

        type Build = Box<dyn FnOnce([u8; 32]) -> Vec<u8>>;
        let cases: Vec<(&str, Build)> = vec![
            ("magic", Box::new(|_| b"KWB".to_vec())),
            (
                "magic",
                Box::new(|h| {
                    let mut p = payload(h, 0);
                    p[0] = b'X';
                    p
                }),
            ),
            (
                "version",
                Box::new(|h| {
                    let mut p = payload(h, 0);
                    p[4] = 2;
                    p
                }),
            ),
            ("header hash", Box::new(|h| payload(h, 0)[..20].to_vec())),
            ("entry count", Box::new(|h| payload(h, MAX_ENTRIES + 1))),
            ("name length", Box::new(|h| payload(h, 1))),
            (
                "name",
                Box::new(|h| {
                    let mut p = payload(h, 1);
                    p.extend_from_slice(&5u16.to_be_bytes());
                    p.extend_from_slice(b"ab");
                    p
                }),
            ),
            (
                "name",
                Box::new(|h| {
                    let mut p = payload(h, 1);
                    p.extend_from_slice(&2u16.to_be_bytes());
                    p.extend_from_slice(&[0xc3, 0x28]);
                    p.extend_from_slice(&0u64.to_be_bytes());
                    p
                }),
            ),
            // A huge length claims more than there is: refused, not allocated.
            (
                "data",
                Box::new(|h| {
                    let mut p = payload(h, 1);
                    p.extend_from_slice(&1u16.to_be_bytes());
                    p.push(b'x');
                    p.extend_from_slice(&u64::MAX.to_be_bytes());
                    p
                }),
            ),
            (
                "bytes after the last entry",
                Box::new(|h| {
                    let mut p = payload(h, 0);
                    p.push(0);
                    p
                }),
            ),
        ];
        for (want, f) in cases {
            assert_eq!(payload_error(open(&forged(&id, f), &id)), want);
        }
    }

    #[test]
    fn a_header_spliced_onto_another_backups_payload_is_refused() {
        let id = age::x25519::Identity::generate();
        let rcpt = id.to_public().to_string();
        let a = seal(&header(), &[], &rcpt).unwrap();
        let mut other = header();
        other.generation = 13;
        other.sealed = true;
        let b = seal(&other, &[], &rcpt).unwrap();
        let (_, a_start) = read_header(&a).unwrap();
        let (_, b_start) = read_header(&b).unwrap();
        let mut spliced = b[..b_start].to_vec();
        spliced.extend_from_slice(&a[a_start..]);
        // The header reads fine on its own; only the payload's hash tells.
        assert_eq!(read_header(&spliced).unwrap().0, other);
        assert!(matches!(
            open(&spliced, &id),
            Err(FormatError::HeaderAltered)
        ));
        // A header with no age file after it does not decrypt.
        assert!(matches!(
            open(&b[..b_start], &id),
            Err(FormatError::Decrypt(_))
        ));
    }

    #[test]
    fn entries_round_trip_in_order_and_seal_refuses_what_it_cannot_write() {
        let id = age::x25519::Identity::generate();
        let rcpt = id.to_public().to_string();
        let entries = vec![
            Entry {
                name: "z-last-name-first".into(),
                data: vec![0, 0, 0],
            },
            Entry {
                name: String::new(),
                data: Vec::new(),
            },
            Entry {
                name: "tokens/Prüfung.db".into(),
                data: vec![0xff; 3],
            },
            Entry {
                name: "n".repeat(usize::from(u16::MAX)),
                data: b"max".to_vec(),
            },
        ];
        let (_, got) = open(&seal(&header(), &entries, &rcpt).unwrap(), &id).unwrap();
        assert_eq!(got.len(), entries.len());
        for (g, e) in got.iter().zip(&entries) {
            assert_eq!((&g.name, &g.data), (&e.name, &e.data));
        }
        let (_, none) = open(&seal(&header(), &[], &rcpt).unwrap(), &id).unwrap();
        assert!(none.is_empty());

        let too_long = [Entry {
            name: "n".repeat(65_536),
            data: Vec::new(),
        }];
        assert!(matches!(
            seal(&header(), &too_long, &rcpt),
            Err(FormatError::Encrypt(m)) if m.contains("file name too long")
        ));
        assert!(matches!(
            seal(&header(), &[], "age1notakey"),
            Err(FormatError::Encrypt(m)) if m.starts_with("backup recipient")
        ));
        let mut big = header();
        big.daemon_version = "v".repeat(70_000);
        assert!(matches!(
            seal(&big, &[], &rcpt),
            Err(FormatError::Header(m)) if m == "too long"
        ));
    }
}
