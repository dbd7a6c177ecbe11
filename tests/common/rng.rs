//! Randomness a failure can be replayed from: every random choice of a
//! test derives from one seed, which the test prints at its start and
//! takes from `KEYWARDEN_TEST_SEED` when that is set.

/// The variable that replays a seed.
pub const SEED_VAR: &str = "KEYWARDEN_TEST_SEED";

/// The seed of `test`'s randomness: `KEYWARDEN_TEST_SEED` if set, else a
/// fresh one from the OS. Printed either way.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var(SEED_VAR) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{SEED_VAR}={v:?}: an unsigned decimal number")),
        Err(_) => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b).unwrap();
            u64::from_le_bytes(b)
        }
    };
    eprintln!("{test}: random seed {seed} (replay: {SEED_VAR}={seed})");
    seed
}

/// A small deterministic generator (SplitMix64): the same seed, the same
/// numbers. Not for anything but tests.
#[derive(Clone)]
pub struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed)
    }

    /// An independent generator for part `part` of a test (a round, a
    /// task): what it draws depends on the seed and the part only, not on
    /// how much the other parts drew (which can depend on timing).
    pub fn derived(seed: u64, part: u64) -> TestRng {
        let mut mix = TestRng(seed ^ part.wrapping_mul(0xD1B5_4A32_D192_ED03));
        mix.next_u64();
        TestRng(mix.next_u64())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
