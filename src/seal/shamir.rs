//! Shamir sharing of the unseal key over GF(256), through `vsss-rs`
//! (constant-time field arithmetic). Share identifiers are 1..=N, so a
//! share's index is its x-coordinate.

use sha2::{Digest, Sha256};
use vsss_rs::{Gf256, IdentifierGf256};
use zeroize::{Zeroize, Zeroizing};

use super::keys::{UnsealKey, UNSEAL_KEY_LEN};

/// One share's y-values (32 bytes), zeroized on drop.
pub struct ShareBytes {
    /// The share's index: its x-coordinate, 1 to N.
    pub index: u8,
    /// Its y-values, one per byte of the key.
    pub value: Zeroizing<[u8; UNSEAL_KEY_LEN]>,
}

/// What splitting or combining can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// Not `1 <= m <= n`.
    #[error("invalid threshold {m} of {n}")]
    Threshold {
        /// The threshold.
        m: u8,
        /// The number of shares.
        n: u8,
    },
    /// The OS random generator failed.
    #[error("OS random generator: {0}")]
    Random(String),
    /// Nothing to combine.
    #[error("no shares")]
    NoShares,
    /// The arithmetic library refused (its message), or produced a share
    /// or key of the wrong length.
    #[error("{0}")]
    Arithmetic(String),
}

/// A deterministic random bit generator seeded from the OS: SHA-256 over
/// (seed, counter). `vsss-rs` needs an infallible `CryptoRng`; drawing the
/// seed up front keeps the only fallible step where it can be reported.
struct SeededRng {
    seed: Zeroizing<[u8; 32]>,
    counter: u64,
    buf: Zeroizing<[u8; 32]>,
    used: usize,
}

impl SeededRng {
    fn from_os() -> Result<Self, ShamirError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|e| ShamirError::Random(e.to_string()))?;
        Ok(SeededRng {
            seed,
            counter: 0,
            buf: Zeroizing::new([0u8; 32]),
            used: 32,
        })
    }

    fn refill(&mut self) {
        let mut h = Sha256::new();
        h.update(b"keywarden/v1/shamir-drbg");
        h.update(&self.seed[..]);
        h.update(self.counter.to_be_bytes());
        self.counter += 1;
        self.buf.copy_from_slice(&h.finalize());
        self.used = 0;
    }
}

impl rand_core::TryRng for SeededRng {
    type Error = core::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        for d in dst.iter_mut() {
            if self.used == self.buf.len() {
                self.refill();
            }
            *d = self.buf[self.used];
            self.used += 1;
        }
        Ok(())
    }
}

impl rand_core::TryCryptoRng for SeededRng {}

/// Splits the key into `n` shares, any `m` of which reconstruct it.
/// `m == 1` (dev mode only) gives shares equal to the key.
pub fn split(key: &UnsealKey, m: u8, n: u8) -> Result<Vec<ShareBytes>, ShamirError> {
    if m == 0 || n == 0 || m > n {
        return Err(ShamirError::Threshold { m, n });
    }
    if m == 1 {
        return Ok((1..=n)
            .map(|i| ShareBytes {
                index: i,
                value: Zeroizing::new(*key.expose()),
            })
            .collect());
    }
    let rng = SeededRng::from_os()?;
    let ids = (1..=n).map(|i| IdentifierGf256(Gf256(i)));
    let mut raw = Gf256::split_bytes_with_participant_ids_iter(
        m as usize,
        n as usize,
        key.expose(),
        rng,
        ids,
    )
    .map_err(|e| ShamirError::Arithmetic(format!("splitting failed: {e:?}")))?;
    let mut out = Vec::with_capacity(raw.len());
    for share in raw.iter_mut() {
        if share.len() != UNSEAL_KEY_LEN + 1 {
            share.zeroize();
            return Err(ShamirError::Arithmetic(
                "splitting produced a share of the wrong length".into(),
            ));
        }
        let mut value = Zeroizing::new([0u8; UNSEAL_KEY_LEN]);
        value.copy_from_slice(&share[1..]);
        out.push(ShareBytes {
            index: share[0],
            value,
        });
        share.zeroize();
    }
    Ok(out)
}

/// Reconstructs a key from shares. With too few or wrong shares this
/// silently yields the wrong key: the caller must confirm it with the check
/// value.
pub fn combine(shares: &[&ShareBytes]) -> Result<UnsealKey, ShamirError> {
    match shares {
        [] => Err(ShamirError::NoShares),
        [one] => UnsealKey::from_slice(&one.value[..])
            .ok_or_else(|| ShamirError::Arithmetic("a share of the wrong length".into())),
        many => {
            let mut raw: Vec<Vec<u8>> = many
                .iter()
                .map(|s| {
                    let mut v = Vec::with_capacity(UNSEAL_KEY_LEN + 1);
                    v.push(s.index);
                    v.extend_from_slice(&s.value[..]);
                    v
                })
                .collect();
            let r = Gf256::combine_bytes(&raw);
            for v in raw.iter_mut() {
                v.zeroize();
            }
            let mut secret =
                r.map_err(|e| ShamirError::Arithmetic(format!("combining failed: {e:?}")))?;
            let key = UnsealKey::from_slice(&secret);
            secret.zeroize();
            key.ok_or_else(|| ShamirError::Arithmetic("combined key has the wrong length".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_threshold_subset_reconstructs() {
        let key = UnsealKey::random().unwrap();
        let shares = split(&key, 3, 5).unwrap();
        assert_eq!(shares.len(), 5);
        assert_eq!(
            shares.iter().map(|s| s.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        for pick in [[0, 1, 2], [0, 2, 4], [4, 3, 1], [1, 2, 3]] {
            let subset: Vec<&ShareBytes> = pick.iter().map(|&i| &shares[i]).collect();
            assert_eq!(combine(&subset).unwrap().expose(), key.expose());
        }
        // Too few shares give some other key, silently.
        let two: Vec<&ShareBytes> = shares.iter().take(2).collect();
        assert_ne!(combine(&two).unwrap().expose(), key.expose());
        // No single share equals the key.
        assert!(shares.iter().all(|s| &*s.value != key.expose()));
    }

    #[test]
    fn single_share_dev_mode_and_bad_parameters() {
        let key = UnsealKey::random().unwrap();
        let one = split(&key, 1, 1).unwrap();
        assert_eq!(combine(&[&one[0]]).unwrap().expose(), key.expose());
        assert!(split(&key, 3, 2).is_err());
        assert!(split(&key, 0, 2).is_err());
    }
}
