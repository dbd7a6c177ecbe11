//! Input validation. Every limit is checked before anything changes, and
//! every error names the field.

use std::collections::{BTreeMap, HashMap};

use super::error::{CoreError, CoreResult};

/// The longest key name, in bytes.
pub const MAX_KEY_NAME: usize = 128;
/// The longest key description, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;
/// The most pairs an encryption context may hold.
pub const MAX_CONTEXT_PAIRS: usize = 64;
/// The longest encryption-context key, in bytes.
pub const MAX_CONTEXT_KEY: usize = 256;
/// The longest encryption-context value, in bytes.
pub const MAX_CONTEXT_VALUE: usize = 1024;
/// The most bytes an encryption context may hold, keys and values
/// together.
pub const MAX_CONTEXT_TOTAL: usize = 8 * 1024;
/// The longest blob of any format version (a 4096-byte payload).
pub const MAX_BLOB: usize = super::blob::BLOB_MAX;
/// The most items one batched request may carry.
pub const MAX_BATCH: usize = 1024;
/// The largest Encrypt plaintext and the largest MAC input.
pub const MAX_PAYLOAD: usize = super::blob::MAX_PAYLOAD;

/// Key names: 1 to 128 of `A-Z a-z 0-9 . _ - /`, starting with a letter or
/// digit.
pub fn key_name(field: &'static str, name: &str) -> CoreResult<()> {
    if name.is_empty() {
        return Err(CoreError::invalid(field, "must not be empty"));
    }
    if name.len() > MAX_KEY_NAME {
        return Err(CoreError::invalid(
            field,
            format!("is {} bytes long; at most {MAX_KEY_NAME}", name.len()),
        ));
    }
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok {
        return Err(CoreError::invalid(
            field,
            "must start with a letter or digit",
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(CoreError::invalid(
            field,
            format!("contains {c:?}; allowed are letters, digits and . _ - /"),
        ));
    }
    Ok(())
}

/// A key description: printable text of at most [`MAX_DESCRIPTION`]
/// bytes (empty allowed).
pub fn description(d: &str) -> CoreResult<()> {
    text("description", d, MAX_DESCRIPTION)
}

/// Reasons (legal holds, break-glass, acknowledgements): 3 to 512 bytes.
pub const MAX_REASON: usize = 512;

/// Free text an operator will read on a terminal (descriptions, reasons,
/// labels): at most `max` bytes and no control characters (an escape
/// sequence could hide or fake a line of `keywarden status`) nor
/// bidirectional overrides (which reorder what is shown).
pub fn text(field: &'static str, s: &str, max: usize) -> CoreResult<()> {
    if s.len() > max {
        return Err(CoreError::invalid(
            field,
            format!("is {} bytes long; at most {max}", s.len()),
        ));
    }
    if let Some((i, c)) = s.char_indices().find(|(_, c)| unprintable(*c)) {
        return Err(CoreError::invalid(
            field,
            format!(
                "contains the control character U+{:04X} at byte {i}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// A reason: printable text of 3 to [`MAX_REASON`] bytes.
pub fn reason(field: &'static str, s: &str) -> CoreResult<()> {
    text(field, s, MAX_REASON)?;
    if s.trim().len() < 3 {
        return Err(CoreError::invalid(
            field,
            "a reason of at least 3 characters is required",
        ));
    }
    Ok(())
}

/// Characters that must never reach an operator's terminal raw.
pub fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// [`escape`] for a whole block of output: line breaks stay (stored text
/// never holds one: [`text`] refuses them), everything else is escaped.
pub fn escape_lines(s: &str) -> String {
    s.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// Text for a terminal: every unprintable character escaped (`\x1b`,
/// `\u{202e}`), so nothing stored can move the cursor or fake a line.
pub fn escape(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(unprintable) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unprintable(c) {
            if (c as u32) < 0x100 {
                out.push_str(&format!("\\x{:02x}", c as u32));
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Checks an encryption context and returns it sorted.
pub fn context(ctx: HashMap<String, String>) -> CoreResult<BTreeMap<String, String>> {
    check_context(&ctx)?;
    Ok(ctx.into_iter().collect())
}

/// Checks an encryption context against its limits without copying it.
pub fn check_context(ctx: &HashMap<String, String>) -> CoreResult<()> {
    const F: &str = "encryption_context";
    if ctx.len() > MAX_CONTEXT_PAIRS {
        return Err(CoreError::invalid(
            F,
            format!("has {} pairs; at most {MAX_CONTEXT_PAIRS}", ctx.len()),
        ));
    }
    let mut total = 0usize;
    for (k, v) in ctx {
        if k.is_empty() {
            return Err(CoreError::invalid(F, "a key is empty"));
        }
        if k.len() > MAX_CONTEXT_KEY {
            return Err(CoreError::invalid(
                F,
                format!("a key is {} bytes long; at most {MAX_CONTEXT_KEY}", k.len()),
            ));
        }
        if v.len() > MAX_CONTEXT_VALUE {
            return Err(CoreError::invalid(
                F,
                format!(
                    "the value of {:?} is {} bytes long; at most {MAX_CONTEXT_VALUE}",
                    truncate(k),
                    v.len()
                ),
            ));
        }
        total += k.len() + v.len();
    }
    if total > MAX_CONTEXT_TOTAL {
        return Err(CoreError::invalid(
            F,
            format!("is {total} bytes in all; at most {MAX_CONTEXT_TOTAL}"),
        ));
    }
    Ok(())
}

/// A ciphertext blob's length: at most [`MAX_BLOB`] bytes (its format is
/// checked when it is decoded).
pub fn blob_size(len: usize) -> CoreResult<()> {
    if len > MAX_BLOB {
        return Err(CoreError::invalid(
            "ciphertext_blob",
            format!("is {len} bytes long; at most {MAX_BLOB}"),
        ));
    }
    Ok(())
}

/// Encrypt's plaintext, a MAC's data: at most 4096 bytes.
pub fn payload(field: &'static str, len: usize) -> CoreResult<()> {
    if len > MAX_PAYLOAD {
        return Err(CoreError::invalid(
            field,
            format!("is {len} bytes long; at most {MAX_PAYLOAD}"),
        ));
    }
    Ok(())
}

/// A batch's item count: 1 to [`MAX_BATCH`].
pub fn batch_size(n: usize) -> CoreResult<()> {
    if n == 0 {
        return Err(CoreError::invalid("requests", "must not be empty"));
    }
    if n > MAX_BATCH {
        return Err(CoreError::invalid(
            "requests",
            format!("has {n} items; at most {MAX_BATCH}"),
        ));
    }
    Ok(())
}

/// Rotation periods: the configured minimum to ten years.
pub fn rotation_period(p: std::time::Duration, min: std::time::Duration) -> CoreResult<()> {
    if p < min || p.as_secs() > 10 * 366 * 86_400 {
        return Err(CoreError::invalid(
            "rotation_period",
            format!("must be between {} seconds and 10 years", min.as_secs()),
        ));
    }
    Ok(())
}

/// Legal-hold ids: 1 to 64 of letters, digits, . _ -
pub fn hold_id(id: &str) -> CoreResult<()> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(CoreError::invalid(
            "hold_id",
            "must be 1 to 64 letters, digits, . _ -",
        ));
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    s.chars().take(32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names() {
        assert!(key_name("key", "patients/records-2026_v1.x").is_ok());
        for bad in ["", "-x", "/x", "a b", "a\0", "ключ"] {
            let e = key_name("key", bad).unwrap_err().to_string();
            assert!(e.starts_with("key: "), "{e}");
        }
        assert!(key_name("key", &"a".repeat(129)).is_err());
        assert!(key_name("key", &"a".repeat(128)).is_ok());
    }

    #[test]
    fn contexts() {
        let mut c = HashMap::new();
        c.insert("tenant".to_string(), "clinic-1".to_string());
        assert_eq!(context(c.clone()).unwrap().len(), 1);
        c.insert(String::new(), "x".to_string());
        assert!(context(c).unwrap_err().to_string().contains("key is empty"));
        let mut big = HashMap::new();
        big.insert("k".to_string(), "v".repeat(1 << 20));
        let e = context(big).unwrap_err().to_string();
        assert!(e.starts_with("encryption_context:"), "{e}");
        let many: HashMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(context(many).unwrap_err().to_string().contains("65 pairs"));
        let total: HashMap<_, _> = (0..16)
            .map(|i| (format!("k{i}"), "v".repeat(1000)))
            .collect();
        assert!(context(total).unwrap_err().to_string().contains("in all"));
    }

    #[test]
    fn text_refuses_control_characters_and_escape_shows_them() {
        assert!(text("reason", "court order 2026-114 (Müller)", 512).is_ok());
        for bad in [
            "\r\x1b[2Khardening: ok",
            "a\x07b",
            "x\u{202e}y",
            "tab\there",
            "nul\0",
        ] {
            let e = text("reason", bad, 512).unwrap_err().to_string();
            assert!(
                e.starts_with("reason: contains the control character"),
                "{e}"
            );
        }
        assert!(text("reason", &"a".repeat(513), 512).is_err());
        assert!(reason("reason", "  x ").is_err());
        assert!(reason("reason", "audit").is_ok());
        assert_eq!(escape("\x1b]0;pwned\x07"), "\\x1b]0;pwned\\x07");
        assert_eq!(escape("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(escape("plain"), "plain");
    }

    #[test]
    fn batches_and_blobs() {
        assert!(batch_size(0).is_err());
        assert!(batch_size(1024).is_ok());
        assert!(batch_size(1025).is_err());
        assert!(blob_size(4148).is_ok());
        assert!(blob_size(4149).is_err());
        assert!(payload("plaintext", 4096).is_ok());
        assert!(payload("plaintext", 4097).is_err());
    }

    fn field_of(e: &CoreError) -> &'static str {
        match e {
            CoreError::InvalidArgument { field, .. } => field,
            other => panic!("not an InvalidArgument: {other}"),
        }
    }

    #[test]
    fn key_name_errors_name_the_callers_field_and_the_rule_broken() {
        for ok in ["9lives", "a..b//c__d--e", "Z", "x/y.z"] {
            assert!(key_name("key", ok).is_ok(), "{ok}");
        }
        // The field named is the one the caller passes, not a fixed one.
        let e = key_name("new_name", "ab c").unwrap_err();
        assert_eq!(field_of(&e), "new_name");
        assert!(e.to_string().contains("contains ' '"), "{e}");
        for bad in [".hidden", "_x", "-x", "/x"] {
            let e = key_name("key", bad).unwrap_err().to_string();
            assert!(
                e.ends_with("must start with a letter or digit"),
                "{bad}: {e}"
            );
        }
        // The length is reported as given, in bytes.
        let e = key_name("key", &"a".repeat(129)).unwrap_err().to_string();
        assert_eq!(e, "key: is 129 bytes long; at most 128");
        // 64 two-byte characters are 128 bytes, but not ASCII.
        let e = key_name("key", &"é".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("letter or digit"), "{e}");
    }

    #[test]
    fn context_limits_are_inclusive_at_their_maxima() {
        let pairs = |n: usize| -> HashMap<String, String> {
            (0..n).map(|i| (format!("k{i}"), String::new())).collect()
        };
        assert!(check_context(&pairs(MAX_CONTEXT_PAIRS)).is_ok());
        assert!(check_context(&pairs(MAX_CONTEXT_PAIRS + 1)).is_err());

        let one = |k: String, v: String| HashMap::from([(k, v)]);
        assert!(check_context(&one("k".repeat(256), String::new())).is_ok());
        let e = check_context(&one("k".repeat(257), String::new())).unwrap_err();
        assert_eq!(field_of(&e), "encryption_context");
        assert!(e.to_string().contains("a key is 257 bytes long"), "{e}");
        assert!(check_context(&one("k".into(), "v".repeat(1024))).is_ok());
        assert!(check_context(&one("k".into(), "v".repeat(1025))).is_err());

        // Eight pairs of 2 + 1022 bytes: exactly 8 KiB in all.
        let mut full: HashMap<_, _> = (0..8)
            .map(|i| (format!("k{i}"), "v".repeat(1022)))
            .collect();
        assert!(check_context(&full).is_ok());
        full.insert("k0".into(), "v".repeat(1023));
        let e = check_context(&full).unwrap_err().to_string();
        assert_eq!(e, "encryption_context: is 8193 bytes in all; at most 8192");
    }

    #[test]
    fn context_comes_back_sorted_and_unchanged() {
        let ctx: HashMap<String, String> = [("zeta", "1"), ("alpha", "2"), ("mid", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sorted = context(ctx.clone()).unwrap();
        let keys: Vec<&str> = sorted.keys().map(String::as_str).collect();
        assert_eq!(keys, ["alpha", "mid", "zeta"]);
        for (k, v) in &ctx {
            assert_eq!(sorted.get(k), Some(v));
        }
    }

    #[test]
    fn an_oversized_value_is_reported_with_its_key_cut_to_32_characters() {
        let key = format!("{}{}", "x".repeat(32), "TAIL".repeat(40));
        let ctx = HashMap::from([(key, "v".repeat(1025))]);
        let e = check_context(&ctx).unwrap_err().to_string();
        let want = format!("the value of \"{}\" is 1025 bytes long", "x".repeat(32));
        assert!(e.contains(&want), "{e}");
        assert!(!e.contains("TAIL"), "{e}");
    }

    #[test]
    fn reasons_are_counted_after_trimming_and_checked_as_text() {
        assert!(reason("reason", "abc").is_ok());
        assert!(reason("reason", &"r".repeat(MAX_REASON)).is_ok());
        for short in ["", "   ", "  ab  ", "\u{3000}a\u{3000}"] {
            let e = reason("hold_reason", short).unwrap_err();
            assert_eq!(field_of(&e), "hold_reason", "{short:?}");
            assert!(e.to_string().contains("at least 3"), "{short:?}: {e}");
        }
        let e = reason("reason", &"r".repeat(MAX_REASON + 1))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "reason: is 513 bytes long; at most 512");
        // A long enough reason with a control character is still refused.
        let e = reason("reason", "court\norder").unwrap_err().to_string();
        assert_eq!(e, "reason: contains the control character U+000A at byte 5");
    }

    #[test]
    fn every_bidi_override_and_c1_control_is_refused_and_escaped() {
        let overrides = ('\u{202A}'..='\u{202E}').chain('\u{2066}'..='\u{2069}');
        for c in overrides {
            let s = format!("ab{c}");
            let e = text("label", &s, 64).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "label: contains the control character U+{:04X} at byte 2",
                    c as u32
                )
            );
            assert_eq!(escape(&s), format!("ab\\u{{{:x}}}", c as u32));
        }
        // C1 controls (NEL, CSI) are below 0x100: shown as \xNN.
        assert_eq!(escape("a\u{85}b\u{9b}"), "a\\x85b\\x9b");
        assert!(text("label", "\u{9b}31m", 64).is_err());
        // Clean text is not copied.
        assert!(matches!(escape("Müller"), std::borrow::Cow::Borrowed(_)));
        // Line breaks survive escape_lines; nothing else raw does.
        assert_eq!(
            escape_lines("ok\x1b[2K\nfine\u{202e}\n"),
            "ok\\x1b[2K\nfine\\u{202e}\n"
        );
    }

    #[test]
    fn rotation_periods_and_hold_ids_at_their_bounds() {
        use std::time::Duration;
        let min = Duration::from_secs(86_400);
        let ten_years = Duration::from_secs(10 * 366 * 86_400);
        assert!(rotation_period(min, min).is_ok());
        assert!(rotation_period(ten_years, min).is_ok());
        for bad in [
            min - Duration::from_secs(1),
            ten_years + Duration::from_secs(1),
        ] {
            let e = rotation_period(bad, min).unwrap_err();
            assert_eq!(field_of(&e), "rotation_period");
            assert!(e.to_string().contains("86400 seconds"), "{e}");
        }
        assert!(hold_id("LH-2026.01_x").is_ok());
        assert!(hold_id(&"h".repeat(64)).is_ok());
        for bad in [String::new(), "h".repeat(65), "a/b".into(), "a b".into()] {
            let e = hold_id(&bad).unwrap_err();
            assert_eq!(field_of(&e), "hold_id", "{bad:?}");
        }
    }
}
