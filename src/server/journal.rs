//! Whether the daemon's stderr is the systemd journal, so that its log can
//! go to the journal natively, each field of an event a journal field
//! (`journalctl -u keywarden KEY=patients`), instead of as text.
//!
//! systemd sets `JOURNAL_STREAM=DEVICE:INODE` for a service whose output
//! goes to the journal; the variable is inherited by children whose stderr
//! may be something else, so it counts only if stderr is that very stream.

use std::os::unix::fs::MetadataExt;

/// Whether `JOURNAL_STREAM`'s value names the file `(dev, ino)`.
pub fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = var.split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// Whether stderr is the journal stream systemd connected.
pub fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(var) = var.to_str() else {
        return false;
    };
    // /proc/self/fd/2 is followed to the stream's socket itself.
    match std::fs::metadata("/proc/self/fd/2") {
        Ok(m) => names_stream(var, m.dev(), m.ino()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_named_counts() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        assert!(!names_stream("8-12345", 8, 12345));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("x:1", 0, 1));
    }
}
