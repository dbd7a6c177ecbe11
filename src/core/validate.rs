//! Input validation. Every limit is checked before anything changes, and
//! every error names the field.

use std::collections::{BTreeMap, HashMap};

use super::error::{CoreError, CoreResult};

pub const MAX_KEY_NAME: usize = 128;
pub const MAX_DESCRIPTION: usize = 1024;
pub const MAX_CONTEXT_PAIRS: usize = 64;
pub const MAX_CONTEXT_KEY: usize = 256;
pub const MAX_CONTEXT_VALUE: usize = 1024;
pub const MAX_CONTEXT_TOTAL: usize = 8 * 1024;
/// The longest blob of any format version (a 4096-byte payload).
pub const MAX_BLOB: usize = super::blob::BLOB_MAX;
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
}
