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

/// What every share line starts with (any case).
pub const PREFIX: &str = "KWS1";

/// A parsed share line.
pub struct Share {
    /// The share set's id.
    pub set_id: [u8; 4],
    /// The set's threshold.
    pub threshold: u8,
    /// The share itself.
    pub bytes: ShareBytes,
}

/// Why a share line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShareError {
    /// Not the share format; the message says which part.
    #[error("not a Keywarden share: {0}")]
    Format(String),
    /// The checksum does not match: a character is mistyped.
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

    /// `body` (lowercase, up to the last share group) with its correct
    /// checksum: reaches the field checks that come after the checksum's.
    fn signed(body: &str) -> String {
        format!("{body}-{}", checksum(body))
    }

    const GROUPS: &str = "00010203-04050607-08090a0b-0c0d0e0f-10111213-14151617-18191a1b-1c1d1e1f";

    fn format_error(text: &str) -> String {
        match parse(text) {
            Err(ShareError::Format(m)) => m,
            Err(e) => panic!("{text}: not a format error: {e}"),
            Ok(_) => panic!("{text}: accepted"),
        }
    }

    #[test]
    fn extreme_indexes_thresholds_set_ids_and_bytes_round_trip() {
        for (set, index, threshold, byte) in [
            ([0u8; 4], 1u8, 1u8, 0u8),
            ([0xff; 4], 255, 255, 0xff),
            ([0x00, 0xff, 0x10, 0x01], 128, 2, 0x5a),
        ] {
            let bytes = ShareBytes {
                index,
                value: Zeroizing::new([byte; 32]),
            };
            let line = format(&set, threshold, &bytes);
            assert_eq!(line.len(), 4 + 9 + 4 + 4 + 8 * 9 + 9);
            let s = parse(&line).unwrap();
            assert_eq!(
                (s.set_id, s.bytes.index, s.threshold, *s.bytes.value),
                (set, index, threshold, [byte; 32])
            );
        }
        // The body the checksum covers is the hand-built one.
        let body = format!("kws1-01020304-007-003-{GROUPS}");
        let s = parse(&signed(&body)).unwrap();
        assert_eq!((s.set_id, s.bytes.index, s.threshold), ([1, 2, 3, 4], 7, 3));
        assert_eq!(s.bytes.value[31], 0x1f);
    }

    #[test]
    fn fields_out_of_range_are_refused_even_with_a_valid_checksum() {
        let cases = [
            (format!("kws1-01020304-000-002-{GROUPS}"), "index"),
            (format!("kws1-01020304-256-002-{GROUPS}"), "index"),
            (format!("kws1-01020304-abc-002-{GROUPS}"), "index"),
            (format!("kws1-01020304-001-000-{GROUPS}"), "threshold"),
            (format!("kws1-01020304-001-999-{GROUPS}"), "threshold"),
            (format!("kws1-0102030g-001-002-{GROUPS}"), "set id"),
            (format!("kws1-010203-001-002-{GROUPS}"), "set id"),
            (format!("kws1-0102030405-001-002-{GROUPS}"), "set id"),
            (
                format!(
                    "kws1-01020304-001-002-{}",
                    GROUPS.replace("1c1d1e1f", "1c1d1ezz")
                ),
                "share bytes",
            ),
            (
                format!(
                    "kws1-01020304-001-002-{}",
                    GROUPS.replace("1c1d1e1f", "1c1d1e1")
                ),
                "share bytes",
            ),
            (format!("kws2-01020304-001-002-{GROUPS}"), "KWS1-"),
            (
                format!("kws1-01020304-001-002-{GROUPS}-00000000"),
                "found 14",
            ),
            (format!("kws1-01020304-001-{GROUPS}"), "found 12"),
        ];
        for (body, want) in cases {
            let m = format_error(&signed(&body));
            assert!(m.contains(want), "{body}: {m}");
        }
    }

    #[test]
    fn the_checksum_group_is_eight_hex_digits_and_must_match() {
        let body = format!("kws1-01020304-001-002-{GROUPS}");
        let good = signed(&body);
        let sum = &good[good.len() - 8..];
        for bad_sum in [&sum[..7], "zzzzzzzz", "123456789"] {
            let m = format_error(&format!("{body}-{bad_sum}"));
            assert!(m.contains("checksum"), "{bad_sum}: {m}");
        }
        // Well-formed but wrong: a mistyped character.
        let wrong = if sum == "00000000" {
            "11111111"
        } else {
            "00000000"
        };
        assert_eq!(
            parse(&format!("{body}-{wrong}")).err(),
            Some(ShareError::Checksum)
        );
        // Case does not matter anywhere, the checksum included.
        assert!(parse(&good.to_uppercase()).is_ok());
        // Inner white space is not trimmed away.
        assert!(parse(&good.replacen('-', " -", 1)).is_err());
        assert!(format_error("KWS1").contains("dash-separated"));
    }
}
