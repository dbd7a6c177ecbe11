//! The wrapped data-key blob: a versioned, self-describing binary format
//! (specified byte by byte in `docs/FORMAT.md`), and the canonical encoding
//! of the encryption context bound to it as authenticated data.

use std::collections::BTreeMap;

use super::error::CoreError;
use crate::hsm::{IV_LEN, TAG_LEN};
use crate::secret::DATA_KEY_LEN;

/// The first two bytes of every blob.
pub const MAGIC: [u8; 2] = *b"KW";
/// Format version 1: a wrapped 32-byte data key (GenerateDataKey).
pub const FORMAT_V1: u8 = 1;
/// Format version 2: an encrypted payload of 0 to [`MAX_PAYLOAD`] bytes
/// (Encrypt). Same layout as version 1 but for the ciphertext's length.
pub const FORMAT_V2: u8 = 2;
/// The largest payload Encrypt takes.
pub const MAX_PAYLOAD: usize = 4096;
/// The shortest version-2 blob (an empty payload).
pub const BLOB_V2_MIN: usize = HEADER_LEN + IV_LEN + TAG_LEN;
/// The longest blob of any version (a 4096-byte payload): 4148 bytes.
pub const BLOB_MAX: usize = BLOB_V2_MIN + MAX_PAYLOAD;
/// Algorithm 1: AES-256-GCM, 96-bit IV, 128-bit tag, 32-byte data key.
pub const ALG_AES256_GCM: u8 = 1;
/// Length of the header (magic, version, algorithm, key id, key version).
pub const HEADER_LEN: usize = 2 + 1 + 1 + 16 + 4;
/// Total length of a version-1, algorithm-1 blob.
pub const BLOB_V1_LEN: usize = HEADER_LEN + IV_LEN + DATA_KEY_LEN + TAG_LEN;
/// Domain-separation label that starts the authenticated data of a
/// version-1 blob.
pub const AAD_LABEL: &[u8] = b"keywarden.v1.datakey";
/// The label of a version-2 blob: a payload can never pass for a data key.
pub const AAD_LABEL_V2: &[u8] = b"keywarden.v2.payload";

/// A parsed (not yet authenticated) blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// [`FORMAT_V1`] (a data key) or [`FORMAT_V2`] (a payload).
    pub format: u8,
    /// The id of the key it is wrapped under.
    pub key_id: [u8; 16],
    /// The key version it is wrapped under.
    pub key_version: u32,
    /// The AES-GCM IV (96 bits).
    pub iv: [u8; IV_LEN],
    /// Ciphertext followed by the tag.
    pub ciphertext: Vec<u8>,
}

impl Blob {
    /// The blob's header (format, key id, key version), which its
    /// authenticated data includes.
    pub fn header(&self) -> [u8; HEADER_LEN] {
        header_of(self.format, &self.key_id, self.key_version)
    }

    /// The blob's bytes: header, IV, ciphertext and tag.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + IV_LEN + self.ciphertext.len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.iv);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Parses a blob; each failure names what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, CoreError> {
        const F: &str = "ciphertext_blob";
        if bytes.is_empty() {
            return Err(CoreError::invalid(F, "is empty"));
        }
        if bytes.len() < 4 {
            return Err(CoreError::invalid(
                F,
                format!(
                    "truncated: {} bytes, shorter than any blob header",
                    bytes.len()
                ),
            ));
        }
        if bytes[0..2] != MAGIC {
            let looks_base64 = bytes.iter().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            });
            return Err(CoreError::invalid(
                F,
                if looks_base64 {
                    "not a Keywarden data-key blob (bad magic bytes); it looks like base64 text: send the decoded bytes"
                } else {
                    "not a Keywarden data-key blob (bad magic bytes)"
                },
            ));
        }
        let format = bytes[2];
        if format != FORMAT_V1 && format != FORMAT_V2 {
            return Err(CoreError::invalid(
                F,
                format!("unsupported format version {format}"),
            ));
        }
        if bytes[3] != ALG_AES256_GCM {
            return Err(CoreError::invalid(
                F,
                format!("unknown algorithm {}", bytes[3]),
            ));
        }
        // Version 1 has one length; version 2 a range.
        let (min, max) = match format {
            FORMAT_V1 => (BLOB_V1_LEN, BLOB_V1_LEN),
            _ => (BLOB_V2_MIN, BLOB_MAX),
        };
        if bytes.len() < min {
            return Err(CoreError::invalid(
                F,
                if min == max {
                    format!("truncated: {} bytes, expected {min}", bytes.len())
                } else {
                    format!("truncated: {} bytes, at least {min}", bytes.len())
                },
            ));
        }
        if bytes.len() > max {
            return Err(CoreError::invalid(
                F,
                if min == max {
                    format!(
                        "{} trailing bytes after a {max}-byte blob",
                        bytes.len() - max
                    )
                } else {
                    format!(
                        "{} bytes: a version-{format} blob is at most {max}",
                        bytes.len()
                    )
                },
            ));
        }
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&bytes[4..20]);
        let mut v = [0u8; 4];
        v.copy_from_slice(&bytes[20..24]);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&bytes[HEADER_LEN..HEADER_LEN + IV_LEN]);
        Ok(Blob {
            format,
            key_id,
            key_version: u32::from_be_bytes(v),
            iv,
            ciphertext: bytes[HEADER_LEN + IV_LEN..].to_vec(),
        })
    }
}

/// The header of a version-1 (data-key) blob.
pub fn header(key_id: &[u8; 16], key_version: u32) -> [u8; HEADER_LEN] {
    header_of(FORMAT_V1, key_id, key_version)
}

/// The header of a blob of format `format`.
pub fn header_of(format: u8, key_id: &[u8; 16], key_version: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..2].copy_from_slice(&MAGIC);
    h[2] = format;
    h[3] = ALG_AES256_GCM;
    h[4..20].copy_from_slice(key_id);
    h[20..24].copy_from_slice(&key_version.to_be_bytes());
    h
}

/// The canonical encoding of an encryption context: the pair count, then
/// each pair sorted by key bytes, every field length-prefixed (u32, big
/// endian). Two contexts are equal exactly when their encodings are.
pub fn canonical_context(ctx: &BTreeMap<String, String>) -> Vec<u8> {
    let size: usize = ctx.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(ctx.len() as u32).to_be_bytes());
    for (k, v) in ctx {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// The authenticated data for a blob: the domain label of its format
/// version, the header and the canonical context.
pub fn aad(header: &[u8; HEADER_LEN], canonical_ctx: &[u8]) -> Vec<u8> {
    let label = if header[2] == FORMAT_V2 {
        AAD_LABEL_V2
    } else {
        AAD_LABEL
    };
    let mut out = Vec::with_capacity(label.len() + HEADER_LEN + canonical_ctx.len());
    out.extend_from_slice(label);
    out.extend_from_slice(header);
    out.extend_from_slice(canonical_ctx);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Blob {
        Blob {
            format: FORMAT_V1,
            key_id: [0xab; 16],
            key_version: 7,
            iv: [1; IV_LEN],
            ciphertext: vec![2; DATA_KEY_LEN + TAG_LEN],
        }
    }

    #[test]
    fn round_trip_and_layout() {
        let b = sample();
        let bytes = b.encode();
        assert_eq!(bytes.len(), BLOB_V1_LEN);
        assert_eq!(BLOB_V1_LEN, 84);
        assert_eq!(&bytes[0..4], &[b'K', b'W', 1, 1]);
        assert_eq!(&bytes[20..24], &[0, 0, 0, 7]);
        assert_eq!(Blob::decode(&bytes).unwrap(), b);
    }

    #[test]
    fn decode_names_each_defect() {
        let good = sample().encode();
        let msg = |b: &[u8]| Blob::decode(b).unwrap_err().to_string();
        assert!(msg(&[]).contains("empty"));
        assert!(msg(&good[..3]).contains("truncated"));
        assert!(msg(&good[..50]).contains("truncated: 50 bytes"));
        let mut long = good.clone();
        long.push(0);
        assert!(msg(&long).contains("trailing"));
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(msg(&bad).contains("magic"));
        let mut bad = good.clone();
        bad[2] = 9;
        assert!(msg(&bad).contains("format version 9"));
        let mut bad = good;
        bad[3] = 9;
        assert!(msg(&bad).contains("algorithm 9"));
        assert!(msg(b"garbage garbage garbage").contains("magic"));
    }

    #[test]
    fn version_two_carries_payloads_of_0_to_4096_bytes() {
        for n in [0, 1, 32, MAX_PAYLOAD] {
            let b = Blob {
                format: FORMAT_V2,
                ciphertext: vec![3; n + TAG_LEN],
                ..sample()
            };
            let bytes = b.encode();
            assert_eq!(bytes.len(), BLOB_V2_MIN + n);
            assert_eq!(&bytes[0..4], &[b'K', b'W', 2, 1]);
            assert_eq!(Blob::decode(&bytes).unwrap(), b);
        }
        assert_eq!(BLOB_MAX, 4148);
        let msg = |b: &[u8]| Blob::decode(b).unwrap_err().to_string();
        let mut short = sample().encode()[..BLOB_V2_MIN - 1].to_vec();
        short[2] = FORMAT_V2;
        assert!(msg(&short).contains("at least 52"));
        let mut long = vec![0u8; BLOB_MAX + 1];
        long[..4].copy_from_slice(&[b'K', b'W', 2, 1]);
        assert!(msg(&long).contains("at most 4148"));
        // The formats' labels keep a payload from passing for a data key.
        let h1 = header_of(FORMAT_V1, &[1; 16], 1);
        let h2 = header_of(FORMAT_V2, &[1; 16], 1);
        assert!(aad(&h1, &[]).starts_with(AAD_LABEL));
        assert!(aad(&h2, &[]).starts_with(AAD_LABEL_V2));
    }

    #[test]
    fn canonical_context_is_order_independent_and_unambiguous() {
        let mut a = BTreeMap::new();
        a.insert("b".to_string(), "2".to_string());
        a.insert("a".to_string(), "1".to_string());
        let mut b = BTreeMap::new();
        b.insert("a".to_string(), "1".to_string());
        b.insert("b".to_string(), "2".to_string());
        assert_eq!(canonical_context(&a), canonical_context(&b));
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        let mut c = BTreeMap::new();
        c.insert("ab".to_string(), "c".to_string());
        let mut d = BTreeMap::new();
        d.insert("a".to_string(), "bc".to_string());
        assert_ne!(canonical_context(&c), canonical_context(&d));
        assert_eq!(canonical_context(&BTreeMap::new()), vec![0, 0, 0, 0]);
        assert_eq!(
            canonical_context(&c),
            vec![0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', 0, 0, 0, 1, b'c']
        );
    }
}
