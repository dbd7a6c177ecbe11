//! The envelope message format, version 1 (specified byte by byte in
//! `docs/FORMAT.md`, with test vectors in `docs/vectors/`).
//!
//! ```text
//! header:  "KWEN" | version 0x01 | suite u16 | segment size u32 |
//!          recipients u8 | (blob length u16 | wrapped data-key blob)...
//! body:    C2SP chunked-encryption v1 with AES-256-GCM:
//!          salt (24) | commitment (32) | segments
//! ```
//!
//! The body follows C2SP's chunked-encryption specification
//! (<https://c2sp.org/chunked-encryption>) unchanged: HKDF-Expand-SHA-256
//! from the data key gives the message key, base nonce and a 32-byte
//! commitment; 16 KiB segments, each sealed under the base nonce XOR its
//! index; the final segment is always shorter than 16 KiB (possibly empty)
//! and so marks the end. The spec's *context* input is
//! SHA-256(header) || SHA-256(canonical encryption context): the header and
//! the context are authenticated through the key derivation, and the
//! commitment is checked before any segment is opened.
//!
//! This module is pure (no I/O, no daemon): it takes the plaintext data key
//! and works on bytes, so every implementation can be checked against the
//! same vectors.

use std::collections::BTreeMap;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::MessageError;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"KWEN";
/// The only message format version so far.
pub const VERSION: u8 = 1;
/// Suite 1: HKDF-SHA-256, AES-256-GCM, C2SP chunked-encryption v1, 16 KiB
/// segments, 32-byte commitment.
pub const SUITE_AES256GCM_C2SP: u16 = 1;
/// Plaintext bytes per segment (every segment but the last, which is
/// shorter).
pub const SEGMENT: usize = 16 * 1024;
/// The AES-GCM tag.
pub const TAG: usize = 16;
/// An encrypted full segment.
pub const SEALED_SEGMENT: usize = SEGMENT + TAG;
/// The per-message random salt.
pub const SALT: usize = 24;
/// The key commitment.
pub const COMMITMENT: usize = 32;
/// Most recipients (wrapped copies of the data key) one message may carry.
pub const MAX_RECIPIENTS: usize = 8;
/// Longest wrapped data-key blob accepted in a header.
pub const MAX_BLOB: usize = 1024;
/// Length of the plaintext data key.
pub const DATA_KEY_LEN: usize = 32;
/// Fixed header bytes before the first recipient.
pub const FIXED_HEADER: usize = 4 + 1 + 2 + 4 + 1;
/// Segments per message are numbered below 2^38 (C2SP's limit): at most
/// 2^38 segments.
pub const MAX_SEGMENTS: u64 = 1 << 38;
/// The AEAD's name in the IANA registry, as the C2SP info string wants it.
const AEAD_NAME: &[u8] = b"AEAD_AES_256_GCM";
const INFO_PREFIX: &[u8] = b"c2sp.org/chunked-encryption@v1+";

/// An encryption context: pairs bound to the wrapped data key (by the
/// daemon) and to the message (by the key derivation). Not secret, not
/// stored in the message.
pub type Context = BTreeMap<String, String>;

/// The canonical encoding of a context (the same as the daemon's, see
/// `docs/FORMAT.md`): a u32 BE pair count, then each pair in ascending
/// byte order of the key as u32 BE length + UTF-8 key, u32 BE length +
/// UTF-8 value.
pub fn encode_context(ctx: &Context) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + ctx
            .iter()
            .map(|(k, v)| 8 + k.len() + v.len())
            .sum::<usize>(),
    );
    out.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
    for (k, v) in ctx {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// A parsed header: the recipients' wrapped data keys and the exact bytes
/// they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    recipients: Vec<Vec<u8>>,
    bytes: Vec<u8>,
}

impl Header {
    /// A header for one to eight wrapped copies of the same data key.
    pub fn new(recipients: Vec<Vec<u8>>) -> Result<Self, MessageError> {
        check_recipient_count(recipients.len())?;
        let mut bytes = Vec::with_capacity(
            FIXED_HEADER + recipients.iter().map(|b| 2 + b.len()).sum::<usize>(),
        );
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.extend_from_slice(&SUITE_AES256GCM_C2SP.to_be_bytes());
        bytes.extend_from_slice(&(SEGMENT as u32).to_be_bytes());
        bytes.push(recipients.len() as u8);
        for b in &recipients {
            check_blob_len(b.len())?;
            bytes.extend_from_slice(&(b.len() as u16).to_be_bytes());
            bytes.extend_from_slice(b);
        }
        Ok(Header { recipients, bytes })
    }

    /// The wrapped data keys, in header order.
    pub fn recipients(&self) -> &[Vec<u8>] {
        &self.recipients
    }

    /// The header exactly as encoded.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Parses a header from the start of `buf`; returns it and its length.
    pub fn parse(buf: &[u8]) -> Result<(Header, usize), MessageError> {
        let mut r = HeaderParser::default();
        let mut at = 0;
        loop {
            match r.need() {
                0 => return r.finish().map(|h| (h, at)),
                n => {
                    let end = at + n;
                    let part = buf
                        .get(at..end)
                        .ok_or(MessageError::TruncatedHeader { field: r.field() })?;
                    r.feed(part)?;
                    at = end;
                }
            }
        }
    }
}

fn check_recipient_count(n: usize) -> Result<(), MessageError> {
    if n == 0 || n > MAX_RECIPIENTS {
        return Err(MessageError::Header {
            field: "recipients",
            reason: format!("{n} recipients; a message has 1 to {MAX_RECIPIENTS}"),
        });
    }
    Ok(())
}

fn check_blob_len(n: usize) -> Result<(), MessageError> {
    if n == 0 || n > MAX_BLOB {
        return Err(MessageError::Header {
            field: "blob length",
            reason: format!("{n} bytes; a wrapped data key has 1 to {MAX_BLOB}"),
        });
    }
    Ok(())
}

/// Reads a header piece by piece, so a stream reader can ask for exactly
/// the bytes it needs next (no look-ahead, no over-read).
#[derive(Debug, Default)]
pub struct HeaderParser {
    bytes: Vec<u8>,
    recipients: Vec<Vec<u8>>,
    count: Option<usize>,
    pending_blob: Option<usize>,
}

impl HeaderParser {
    /// How many bytes to feed next; 0 when the header is complete.
    pub fn need(&self) -> usize {
        match (self.count, self.pending_blob) {
            (None, _) => FIXED_HEADER,
            (Some(_), Some(n)) => n,
            (Some(c), None) if self.recipients.len() < c => 2,
            (Some(_), None) => 0,
        }
    }

    fn field(&self) -> &'static str {
        match (self.count, self.pending_blob) {
            (None, _) => "fixed header",
            (Some(_), Some(_)) => "wrapped data key",
            (Some(_), None) => "blob length",
        }
    }

    /// Feeds exactly [`need`](Self::need) bytes.
    pub fn feed(&mut self, part: &[u8]) -> Result<(), MessageError> {
        if self.need() == 0 {
            return Err(MessageError::Header {
                field: "header",
                reason: "fed past the end of a complete header".into(),
            });
        }
        if part.len() != self.need() {
            return Err(MessageError::TruncatedHeader {
                field: self.field(),
            });
        }
        match (self.count, self.pending_blob) {
            (None, _) => {
                if part[0..4] != MAGIC {
                    return Err(MessageError::BadMagic);
                }
                if part[4] != VERSION {
                    return Err(MessageError::Header {
                        field: "version",
                        reason: format!("unsupported version {}", part[4]),
                    });
                }
                let suite = u16::from_be_bytes([part[5], part[6]]);
                if suite != SUITE_AES256GCM_C2SP {
                    return Err(MessageError::Header {
                        field: "suite",
                        reason: format!("unknown algorithm suite {suite}"),
                    });
                }
                let seg = u32::from_be_bytes([part[7], part[8], part[9], part[10]]);
                if seg as usize != SEGMENT {
                    return Err(MessageError::Header {
                        field: "segment size",
                        reason: format!("{seg}; suite 1 uses {SEGMENT}"),
                    });
                }
                let count = part[11] as usize;
                check_recipient_count(count)?;
                self.count = Some(count);
            }
            (Some(_), None) => {
                let n = u16::from_be_bytes([part[0], part[1]]) as usize;
                check_blob_len(n)?;
                self.pending_blob = Some(n);
            }
            (Some(_), Some(_)) => {
                self.recipients.push(part.to_vec());
                self.pending_blob = None;
            }
        }
        self.bytes.extend_from_slice(part);
        Ok(())
    }

    /// The header, once [`need`](Self::need) is 0.
    pub fn finish(self) -> Result<Header, MessageError> {
        if self.need() != 0 {
            return Err(MessageError::TruncatedHeader {
                field: self.field(),
            });
        }
        Ok(Header {
            recipients: self.recipients,
            bytes: self.bytes,
        })
    }
}

/// The C2SP *context* input: SHA-256(header) || SHA-256(encoded context).
pub fn chunk_context(header: &[u8], ctx: &Context) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&Sha256::digest(header));
    out[32..].copy_from_slice(&Sha256::digest(encode_context(ctx)));
    out
}

/// The per-message key, base nonce and commitment.
pub struct MessageKeys {
    cipher: Aes256Gcm,
    base_nonce: [u8; 12],
    commitment: [u8; COMMITMENT],
}

impl MessageKeys {
    /// HKDF-Expand(prk = data key, info = "c2sp.org/chunked-encryption@v1+"
    /// || "AEAD_AES_256_GCM" || 0x00 || salt || chunk context), 76 bytes:
    /// key (32) || base nonce (12) || commitment (32).
    pub fn derive(
        data_key: &[u8; DATA_KEY_LEN],
        salt: &[u8; SALT],
        header: &[u8],
        ctx: &Context,
    ) -> Result<MessageKeys, MessageError> {
        let mut info = Vec::with_capacity(INFO_PREFIX.len() + AEAD_NAME.len() + 1 + SALT + 64);
        info.extend_from_slice(INFO_PREFIX);
        info.extend_from_slice(AEAD_NAME);
        info.push(0);
        info.extend_from_slice(salt);
        info.extend_from_slice(&chunk_context(header, ctx));
        // (The HMAC state inside `Hkdf` is keyed by the data key and is not
        // wiped on drop: the hkdf crate offers no zeroize. The okm is.)
        let mut okm = Zeroizing::new([0u8; 32 + 12 + COMMITMENT]);
        Hkdf::<Sha256>::from_prk(data_key)
            .and_then(|hk| {
                hk.expand(&info, okm.as_mut())
                    .map_err(|_| hkdf::InvalidPrkLength)
            })
            .map_err(|_| MessageError::KeyDerivation)?;
        let cipher = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&okm[..32]));
        let mut base_nonce = [0u8; 12];
        base_nonce.copy_from_slice(&okm[32..44]);
        let mut commitment = [0u8; COMMITMENT];
        commitment.copy_from_slice(&okm[44..]);
        Ok(MessageKeys {
            cipher,
            base_nonce,
            commitment,
        })
    }

    /// The commitment to write after the salt.
    pub fn commitment(&self) -> &[u8; COMMITMENT] {
        &self.commitment
    }

    /// Checks a message's commitment in constant time.
    pub fn check_commitment(&self, found: &[u8]) -> Result<(), MessageError> {
        if found.len() == COMMITMENT && bool::from(self.commitment.ct_eq(found)) {
            Ok(())
        } else {
            Err(MessageError::Commitment)
        }
    }

    fn nonce(&self, index: u64) -> Result<[u8; 12], MessageError> {
        if index >= MAX_SEGMENTS {
            return Err(MessageError::TooLong);
        }
        let mut n = self.base_nonce;
        for (b, c) in n[4..].iter_mut().zip(index.to_be_bytes()) {
            *b ^= c;
        }
        Ok(n)
    }

    /// Seals segment `index` in place: `buf[start..]` holds its plaintext
    /// on entry and its ciphertext followed by the tag on return.
    pub fn seal_segment(
        &self,
        index: u64,
        buf: &mut Vec<u8>,
        start: usize,
    ) -> Result<(), MessageError> {
        let nonce = self.nonce(index)?;
        let plain = buf.get_mut(start..).ok_or(MessageError::TooLong)?;
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &[], plain)
            .map_err(|_| MessageError::TooLong)?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens segment `index` in place: `sealed` holds ciphertext and tag;
    /// on success its first `len - 16` bytes are the plaintext and that
    /// length is returned. On failure the buffer is wiped.
    pub fn open_segment(&self, index: u64, sealed: &mut [u8]) -> Result<usize, MessageError> {
        let nonce = self.nonce(index)?;
        let Some(split) = sealed.len().checked_sub(TAG) else {
            sealed.fill(0);
            return Err(MessageError::Segment { index });
        };
        let (body, tag) = sealed.split_at_mut(split);
        let tag = *Tag::from_slice(tag);
        if self
            .cipher
            .decrypt_in_place_detached(Nonce::from_slice(&nonce), &[], body, &tag)
            .is_err()
        {
            sealed.fill(0);
            return Err(MessageError::Segment { index });
        }
        Ok(split)
    }
}

/// Seals a whole message in memory with a given data key and salt: the
/// deterministic core that the test vectors pin down. Applications call
/// `Client::encrypt`, which draws the salt from the OS.
pub fn seal_message(
    data_key: &[u8; DATA_KEY_LEN],
    header: &Header,
    salt: &[u8; SALT],
    ctx: &Context,
    plaintext: &[u8],
) -> Result<Vec<u8>, MessageError> {
    let keys = MessageKeys::derive(data_key, salt, header.as_bytes(), ctx)?;
    let segments = plaintext.len() / SEGMENT + 1;
    let mut out = Vec::with_capacity(
        header.as_bytes().len() + SALT + COMMITMENT + plaintext.len() + segments * TAG,
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(salt);
    out.extend_from_slice(keys.commitment());
    // Full segments, then the final short (possibly empty) one.
    let mut chunks = plaintext.chunks_exact(SEGMENT);
    let mut index = 0u64;
    for c in chunks.by_ref() {
        let start = out.len();
        out.extend_from_slice(c);
        keys.seal_segment(index, &mut out, start)?;
        index += 1;
    }
    let start = out.len();
    out.extend_from_slice(chunks.remainder());
    keys.seal_segment(index, &mut out, start)?;
    Ok(out)
}

/// Where a message's parts start, once its header is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of header.
    pub header_len: u64,
    /// Total message length.
    pub total_len: u64,
}

impl Layout {
    /// Offset of the first segment.
    pub fn body_start(&self) -> u64 {
        self.header_len + (SALT + COMMITMENT) as u64
    }

    /// Segments (full ones plus the final one) and the plaintext length;
    /// an impossible length is a truncation.
    pub fn segments(&self) -> Result<(u64, u64), MessageError> {
        let body =
            self.total_len
                .checked_sub(self.body_start())
                .ok_or(MessageError::TruncatedHeader {
                    field: "salt and commitment",
                })?;
        let full = body / SEALED_SEGMENT as u64;
        let rest = body % SEALED_SEGMENT as u64;
        if rest < TAG as u64 {
            return Err(MessageError::Truncated { segments: full });
        }
        if full >= MAX_SEGMENTS {
            return Err(MessageError::TooLong);
        }
        Ok((full + 1, full * SEGMENT as u64 + rest - TAG as u64))
    }

    /// Offset of segment `index`.
    pub fn segment_offset(&self, index: u64) -> u64 {
        self.body_start() + index * SEALED_SEGMENT as u64
    }
}

/// A whole message in memory, cut into its parts. The length is checked
/// (a message cut at a segment boundary is refused here); nothing is
/// authenticated yet.
pub struct Parts<'a> {
    /// The parsed header.
    pub header: Header,
    /// The per-message salt.
    pub salt: [u8; SALT],
    /// The stored key commitment.
    pub commitment: &'a [u8],
    /// The sealed segments.
    pub body: &'a [u8],
    /// The plaintext's length.
    pub plain_len: u64,
}

/// Cuts a message into its parts.
pub fn split_message(message: &[u8]) -> Result<Parts<'_>, MessageError> {
    let (header, header_len) = Header::parse(message)?;
    let rest = &message[header_len..];
    let salt: [u8; SALT] = rest
        .get(..SALT)
        .and_then(|s| s.try_into().ok())
        .ok_or(MessageError::TruncatedHeader { field: "salt" })?;
    let commitment = rest
        .get(SALT..SALT + COMMITMENT)
        .ok_or(MessageError::TruncatedHeader {
            field: "commitment",
        })?;
    let (_, plain_len) = Layout {
        header_len: header_len as u64,
        total_len: message.len() as u64,
    }
    .segments()?;
    Ok(Parts {
        header,
        salt,
        commitment,
        body: &rest[SALT + COMMITMENT..],
        plain_len,
    })
}

/// Opens every segment of a body with keys whose commitment was checked;
/// nothing is returned unless all of them verify.
pub fn open_body(
    keys: &MessageKeys,
    body: &[u8],
    plain_len: u64,
) -> Result<Zeroizing<Vec<u8>>, MessageError> {
    let mut out = Zeroizing::new(Vec::with_capacity(plain_len as usize + TAG));
    for (index, sealed) in body.chunks(SEALED_SEGMENT).enumerate() {
        let start = out.len();
        out.extend_from_slice(sealed);
        let n = keys.open_segment(index as u64, &mut out[start..])?;
        out.truncate(start + n);
    }
    Ok(out)
}

/// Opens a whole message in memory with the data key that one of its
/// recipients unwrapped. The commitment is checked before any segment.
pub fn open_message(
    data_key: &[u8; DATA_KEY_LEN],
    message: &[u8],
    ctx: &Context,
) -> Result<Zeroizing<Vec<u8>>, MessageError> {
    let p = split_message(message)?;
    let keys = MessageKeys::derive(data_key, &p.salt, p.header.as_bytes(), ctx)?;
    keys.check_commitment(p.commitment)?;
    open_body(&keys, p.body, p.plain_len)
}

/// The key id (UUID text) and version a daemon blob names, for `inspect`
/// and the cache: bytes 4..20 and 20..24 of a version-1 blob. `None` for a
/// blob this client does not recognise (the daemon will judge it).
pub fn blob_key(blob: &[u8]) -> Option<(String, u32)> {
    if blob.len() < 24 || &blob[0..2] != b"KW" || blob[2] != 1 {
        return None;
    }
    let id = &blob[4..20];
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let text = format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    );
    let version = u32::from_be_bytes([blob[20], blob[21], blob[22], blob[23]]);
    Some((text, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        [("tenant".to_string(), "clinic-1".to_string())].into()
    }

    fn header() -> Header {
        Header::new(vec![vec![0x4b, 0x57, 1, 1, 9, 9, 9], vec![7; 84]])
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn round_trip_at_segment_edges() {
        let key = [7u8; 32];
        let salt = [3u8; SALT];
        for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT + 5] {
            let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let m = seal_message(&key, &header(), &salt, &ctx(), &pt).unwrap_or_default();
            let (segments, plain) = Layout {
                header_len: header().as_bytes().len() as u64,
                total_len: m.len() as u64,
            }
            .segments()
            .unwrap_or((0, 0));
            assert_eq!(segments as usize, len / SEGMENT + 1, "len {len}");
            assert_eq!(plain as usize, len);
            let back = open_message(&key, &m, &ctx()).map(|z| z.to_vec());
            assert_eq!(back, Ok(pt), "len {len}");
        }
    }

    #[test]
    fn header_parses_back_and_rejects_bad_fields() {
        let h = header();
        let (p, n) = Header::parse(h.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p, h);
        assert_eq!(n, h.as_bytes().len());
        let mut b = h.as_bytes().to_vec();
        b[0] = b'X';
        assert_eq!(Header::parse(&b), Err(MessageError::BadMagic));
        let mut b = h.as_bytes().to_vec();
        b[11] = 9;
        assert!(matches!(
            Header::parse(&b),
            Err(MessageError::Header {
                field: "recipients",
                ..
            })
        ));
        let mut b = h.as_bytes().to_vec();
        b[11] = 0;
        assert!(matches!(
            Header::parse(&b),
            Err(MessageError::Header {
                field: "recipients",
                ..
            })
        ));
        assert!(Header::new(vec![vec![1]; 9]).is_err());
        assert!(Header::new(vec![]).is_err());
        for cut in 0..h.as_bytes().len() {
            assert!(Header::parse(&h.as_bytes()[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn context_encoding_matches_the_daemon_example() {
        let enc = encode_context(&ctx());
        assert_eq!(
            hex(&enc),
            "00000001000000067465 6e616e7400000008636c696e69632d31".replace(' ', "")
        );
    }

    #[test]
    fn blob_key_reads_id_and_version() {
        let mut blob = vec![0x4b, 0x57, 1, 1];
        blob.extend_from_slice(&[
            0x3f, 0x2a, 0x9c, 0x4e, 0x1b, 0x7d, 0x4e, 0x8a, 0x9c, 0x21, 0x5d, 0x6e, 0x7f, 0x80,
            0x12, 0x34,
        ]);
        blob.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(
            blob_key(&blob),
            Some(("3f2a9c4e-1b7d-4e8a-9c21-5d6e7f801234".into(), 1))
        );
        assert_eq!(blob_key(b"nope"), None);
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
