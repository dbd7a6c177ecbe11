//! How much room the audit log has left. A full disk stops every key
//! operation (nothing is served unaudited), so Status and the metrics say
//! so well before.

use std::path::Path;

/// The audit log's filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Available to the daemon (not root's reserve).
    pub free: u64,
    /// The filesystem's size.
    pub size: u64,
}

impl DiskSpace {
    /// Fewer than max(1 GiB, 5% of the filesystem) left: time to archive
    /// or grow it, before a full disk stops every key operation.
    pub fn low(&self) -> bool {
        self.free < (1u64 << 30).max(self.size / 20)
    }
}

/// The filesystem holding `dir`, or None if it cannot be read.
pub fn space(dir: &Path) -> Option<DiskSpace> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    Some(DiskSpace {
        free: (st.blocks_available() as u64).saturating_mul(frag),
        size: (st.blocks() as u64).saturating_mul(frag),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_is_under_a_gib_or_five_percent() {
        const G: u64 = 1 << 30;
        let low = |free, size| DiskSpace { free, size }.low();
        assert!(low(G - 1, 10 * G));
        assert!(!low(G, 10 * G));
        // On a large filesystem, 5% is the mark.
        assert!(low(4 * G, 100 * G));
        assert!(!low(6 * G, 100 * G));
        let here = space(Path::new(".")).unwrap();
        assert!(here.size > 0 && here.free <= here.size);
    }

    #[test]
    fn the_five_percent_mark_is_exact_and_a_gib_is_the_floor() {
        const G: u64 = 1 << 30;
        let low = |free, size| DiskSpace { free, size }.low();
        // 5% of 100 GiB is 5 GiB: that much left is enough, a byte less not.
        assert!(!low(5 * G, 100 * G));
        assert!(low(5 * G - 1, 100 * G));
        // At 20 GiB both marks are 1 GiB.
        assert!(!low(G, 20 * G));
        assert!(low(G - 1, 20 * G));
        // A small filesystem still needs a whole GiB free, even nearly empty.
        assert!(low(G - 1, 2 * G));
        assert!(!low(G, 2 * G));
        // An unknown size (0) falls back to the GiB.
        assert!(low(0, 0));
        assert!(!low(G, 0));
    }

    #[test]
    fn space_of_a_missing_directory_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let here = space(dir.path()).unwrap();
        assert!(here.size > 0 && here.free <= here.size);
        assert_eq!(space(&dir.path().join("no/such/dir")), None);
    }
}
