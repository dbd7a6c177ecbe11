//! The share format: one line a person can read aloud or type.
//!
//! `KWS1-<set id: 8 hex>-<index: 3 digits>-<threshold: 3 digits>-<32 share
//! bytes: 8 groups of 8 hex>-<checksum: 8 hex>`
//!
//! The checksum is the first 4 bytes of SHA-256 over the lowercase text
//! before it (from `kws1` to the last share group, dashes included). It
//! catches a mistyped character before the share is submitted; it is not a
//! secret and proves nothing about the share's correctness, which only the
//! check value at the threshold can decide. Specified in
//! `docs/UNSEAL_CEREMONY.md`.

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::keys::UNSEAL_KEY_LEN;
use super::shamir::ShareBytes;

pub const PREFIX: &str = "KWS1";

/// A parsed share line.
pub struct Share {
    pub set_id: [u8; 4],
    pub threshold: u8,
    pub bytes: ShareBytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    #[error("not a Keywarden share: {0}")]
    Format(String),
    #[error("checksum mismatch: a character of the share is mistyped; nothing was submitted")]
    Checksum,
}

fn checksum(body_lower: &str) -> String {
    hex::encode(&Sha256::digest(body_lower.as_bytes())[..4])
}

/// Formats a share line.
pub fn format(set_id: &[u8; 4], threshold: u8, share: &ShareBytes) -> Zeroizing<String> {
    let value = Zeroizing::new(hex::encode(&share.value[..]));
    let mut body = Zeroizing::new(format!(
        "{}-{}-{:03}-{:03}",
        PREFIX.to_ascii_lowercase(),
        hex::encode(set_id),
        share.index,
        threshold
    ));
    for chunk in value.as_bytes().chunks(8) {
        body.push('-');
        body.push_str(std::str::from_utf8(chunk).unwrap_or_default());
    }
    let sum = checksum(&body);
    let mut line = Zeroizing::new(String::with_capacity(body.len() + 9));
    line.push_str(PREFIX);
    line.push_str(&body[PREFIX.len()..]);
    line.push('-');
    line.push_str(&sum);
    line
}

/// Parses a share line (surrounding white space is ignored; case is not
/// significant).
pub fn parse(text: &str) -> Result<Share, ShareError> {
    let lower = Zeroizing::new(text.trim().to_ascii_lowercase());
    if lower.is_empty() {
        return Err(ShareError::Format("the share is empty".into()));
    }
    let Some((body, sum)) = lower.rsplit_once('-') else {
        return Err(ShareError::Format("expected dash-separated groups".into()));
    };
    let fields: Vec<&str> = body.split('-').collect();
    if fields.first() != Some(&"kws1") {
        return Err(ShareError::Format(format!(
            "it must start with {PREFIX}- (this format's version 1)"
        )));
    }
    if fields.len() != 12 {
        return Err(ShareError::Format(format!(
            "expected 13 dash-separated groups, found {}",
            fields.len() + 1
        )));
    }
    if sum.len() != 8 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ShareError::Format(
            "the last group (checksum) must be 8 hex digits".into(),
        ));
    }
    if checksum(body) != sum {
        return Err(ShareError::Checksum);
    }
    let set: [u8; 4] = hex::decode(fields[1])
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ShareError::Format("the set id must be 8 hex digits".into()))?;
    let index: u8 = fields[2]
        .parse()
        .ok()
        .filter(|&i| i >= 1)
        .ok_or_else(|| ShareError::Format("the index must be a number from 1 to 255".into()))?;
    let threshold: u8 =
        fields[3].parse().ok().filter(|&t| t >= 1).ok_or_else(|| {
            ShareError::Format("the threshold must be a number from 1 to 255".into())
        })?;
    let hexval = Zeroizing::new(fields[4..].concat());
    let mut value = Zeroizing::new([0u8; UNSEAL_KEY_LEN]);
    hex::decode_to_slice(hexval.as_bytes(), value.as_mut()).map_err(|_| {
        ShareError::Format("the share bytes must be 8 groups of 8 hex digits".into())
    })?;
    Ok(Share {
        set_id: set,
        threshold,
        bytes: ShareBytes { index, value },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShareBytes {
        let mut v = [0u8; 32];
        for (i, b) in v.iter_mut().enumerate() {
            *b = i as u8 * 7;
        }
        ShareBytes {
            index: 3,
            value: Zeroizing::new(v),
        }
    }

    #[test]
    fn round_trip_and_shape() {
        let line = format(&[0x9f, 0x3a, 0x61, 0xc2], 3, &sample());
        assert!(
            line.starts_with("KWS1-9f3a61c2-003-003-"),
            "{}",
            line.as_str()
        );
        assert_eq!(line.split('-').count(), 13);
        let s = parse(&line).unwrap();
        assert_eq!(s.set_id, [0x9f, 0x3a, 0x61, 0xc2]);
        assert_eq!(s.threshold, 3);
        assert_eq!(s.bytes.index, 3);
        assert_eq!(*s.bytes.value, *sample().value);
        // Case and surrounding space do not matter.
        assert!(parse(&format!("  {}\n", line.to_uppercase())).is_ok());
    }

    #[test]
    fn every_single_typo_is_caught() {
        let line = format(&[1, 2, 3, 4], 2, &sample());
        let bytes = line.as_bytes();
        for (pos, &b) in bytes.iter().enumerate() {
            if b == b'-' {
                continue;
            }
            let replacement = if b == b'0' { '1' } else { '0' };
            let mut typo = line.to_string();
            typo.replace_range(pos..pos + 1, &replacement.to_string());
            if typo.eq_ignore_ascii_case(&line) {
                continue;
            }
            assert!(parse(&typo).is_err(), "typo at {pos} accepted: {typo}");
        }
    }

    #[test]
    fn format_errors_are_specific() {
        assert_eq!(
            parse("").err(),
            Some(ShareError::Format("the share is empty".into()))
        );
        assert!(matches!(parse("hello-world"), Err(ShareError::Format(m)) if m.contains("KWS1")));
        let line = format(&[1, 2, 3, 4], 2, &sample());
        let short = line.replacen("-", "", 1);
        assert!(parse(&short).is_err());
    }
}
