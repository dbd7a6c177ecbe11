//! A quorum gathered offline, outside the daemon's ceremony: the
//! recovery tool (`keywarden operator derive-pin`) and the restore of a
//! backup both rebuild the unseal key from share texts given all at once.

use zeroize::Zeroizing;

use super::keys::UnsealKey;
use super::shamir::{self, ShamirError, ShareBytes};
use super::share::{self, ShareError};

/// The share set the quorum must be of.
pub struct SetSpec<'a> {
    /// The set's id.
    pub set_id: [u8; 4],
    /// The set's threshold.
    pub threshold: u8,
    /// The seal's check value: the rebuilt key must match it.
    pub check: &'a [u8],
}

/// Why the shares do not make a quorum; `share` counts from 1 in the
/// order given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuorumError {
    /// A share does not parse.
    #[error("share {share}: {error}")]
    BadShare {
        /// Which share.
        share: usize,
        /// Why.
        error: ShareError,
    },
    /// A share is of another set.
    #[error("share {share}: it belongs to set {got}, but set {want} is needed (shares of another set, or of another deployment)")]
    WrongSet {
        /// Which share.
        share: usize,
        /// Its set.
        got: String,
        /// The set needed.
        want: String,
    },
    /// A share names another threshold than the set's.
    #[error("share {share}: threshold {got} where the set's is {want}")]
    WrongThreshold {
        /// Which share.
        share: usize,
        /// Its threshold.
        got: u8,
        /// The set's.
        want: u8,
    },
    /// Two shares have the same index.
    #[error("share {share}: share number {index} was given twice")]
    Duplicate {
        /// The second of them.
        share: usize,
        /// The index.
        index: u8,
    },
    /// Fewer shares than the threshold.
    #[error("shares: {got} given; the set needs {need}")]
    TooFew {
        /// Shares given (blank ones not counted).
        got: usize,
        /// The threshold.
        need: u8,
    },
    /// The shares could not be combined.
    #[error("shares: {0}")]
    Combine(ShamirError),
    /// The rebuilt key does not match the set's check value: a wrong or
    /// altered share.
    #[error("shares: they do not reconstruct the set's unseal key (a wrong or altered share)")]
    Mismatch,
}

/// Rebuilds and confirms the unseal key from `texts` (blank ones skipped).
pub fn quorum(texts: &[Zeroizing<String>], set: &SetSpec<'_>) -> Result<UnsealKey, QuorumError> {
    let want = hex::encode(set.set_id);
    let mut parsed: Vec<ShareBytes> = Vec::new();
    for (i, text) in texts.iter().filter(|t| !t.trim().is_empty()).enumerate() {
        let n = i + 1;
        let s = share::parse(text).map_err(|error| QuorumError::BadShare { share: n, error })?;
        if s.set_id != set.set_id {
            return Err(QuorumError::WrongSet {
                share: n,
                got: hex::encode(s.set_id),
                want,
            });
        }
        if s.threshold != set.threshold {
            return Err(QuorumError::WrongThreshold {
                share: n,
                got: s.threshold,
                want: set.threshold,
            });
        }
        if parsed.iter().any(|p| p.index == s.bytes.index) {
            return Err(QuorumError::Duplicate {
                share: n,
                index: s.bytes.index,
            });
        }
        parsed.push(s.bytes);
    }
    if parsed.len() < set.threshold as usize {
        return Err(QuorumError::TooFew {
            got: parsed.len(),
            need: set.threshold,
        });
    }
    let refs: Vec<&ShareBytes> = parsed.iter().collect();
    let key = shamir::combine(&refs).map_err(QuorumError::Combine)?;
    if !key.matches(&set.set_id, set.check) {
        return Err(QuorumError::Mismatch);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_of_the_set_rebuilds_the_key_and_nothing_else_does() {
        let key = UnsealKey::random().unwrap();
        let set = [1, 2, 3, 4];
        let check = key.check_value(&set);
        let texts: Vec<Zeroizing<String>> = shamir::split(&key, 2, 3)
            .unwrap()
            .iter()
            .map(|s| share::format(&set, 2, s))
            .collect();
        let spec = SetSpec {
            set_id: set,
            threshold: 2,
            check: &check,
        };
        let got = quorum(&texts[..2], &spec).unwrap();
        assert_eq!(got.expose(), key.expose());
        assert!(matches!(
            quorum(&texts[..1], &spec),
            Err(QuorumError::TooFew { got: 1, need: 2 })
        ));
        let twice = vec![texts[0].clone(), texts[0].clone()];
        assert!(matches!(
            quorum(&twice, &spec),
            Err(QuorumError::Duplicate { share: 2, .. })
        ));
        let other = SetSpec {
            set_id: [9, 9, 9, 9],
            threshold: 2,
            check: &check,
        };
        assert!(matches!(
            quorum(&texts[..2], &other),
            Err(QuorumError::WrongSet { share: 1, .. })
        ));
        let wrong_check = [0u8; 32];
        let spec2 = SetSpec {
            set_id: set,
            threshold: 2,
            check: &wrong_check,
        };
        assert_eq!(
            quorum(&texts[..2], &spec2).err(),
            Some(QuorumError::Mismatch)
        );
    }
}
