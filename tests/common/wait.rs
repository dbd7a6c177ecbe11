//! Waiting for a state instead of sleeping for a fixed time: a condition
//! polled with a short pause until a deadline. A test that gives up names
//! what it waited for and what it saw last.

use std::time::{Duration, Instant};

/// The pause between two looks.
pub const POLL: Duration = Duration::from_millis(50);

fn give_up(what: &str, within: Duration, seen: &str) -> ! {
    if seen.is_empty() {
        panic!("gave up after {within:?} waiting for {what}");
    }
    panic!("gave up after {within:?} waiting for {what}; last seen: {seen}");
}

/// Polls `probe` until it returns `Ok(value)` and returns the value.
/// `Err(seen)` is what it saw instead (for the failure message); after
/// `within` the test fails, naming `what` it waited for.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            give_up(what, within, &seen);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds; after `within` the test fails, naming
/// `what` it waited for.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    wait_for(what, within, async || {
        if cond().await {
            Ok(())
        } else {
            Err(String::new())
        }
    })
    .await
}

/// [`wait_for`] for code that is not async (it blocks the thread).
pub fn wait_for_blocking<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let seen = match probe() {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            give_up(what, within, &seen);
        }
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] for code that is not async (it blocks the thread).
pub fn wait_until_blocking(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    wait_for_blocking(what, within, || {
        if cond() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
}
