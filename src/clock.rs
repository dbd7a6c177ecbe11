//! Time, injected: the core, the seal and the lifecycle read the time from
//! a [`Clock`], so unit tests drive it ([`ManualClock`]) instead of
//! sleeping.

use crate::sync::Recover;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Wall-clock seconds (for what is stored and shown) and a monotonic
/// reading (for timeouts).
pub trait Clock: Send + Sync {
    /// Unix time in seconds.
    fn now_secs(&self) -> i64;
    /// Time since an arbitrary fixed origin; never goes backwards.
    fn monotonic(&self) -> Duration;
}

/// The system's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_secs(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
    fn monotonic(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to (unit tests).
pub struct ManualClock {
    at: Mutex<(i64, Duration)>,
}

impl ManualClock {
    /// Starts at Unix time `secs`.
    pub fn at(secs: i64) -> Self {
        ManualClock {
            at: Mutex::new((secs, Duration::ZERO)),
        }
    }

    /// Moves both readings forward.
    pub fn advance(&self, d: Duration) {
        let mut at = self.at.locked();
        at.0 += d.as_secs() as i64;
        at.1 += d;
    }
}

impl Clock for ManualClock {
    fn now_secs(&self) -> i64 {
        self.at.locked().0
    }
    fn monotonic(&self) -> Duration {
        self.at.locked().1
    }
}
