//! Bounded waiting with exponential backoff.

use std::thread;
use std::time::{Duration, Instant};

/// The first pause between two checks.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// The maximum pause between two checks, so that a long wait does not delay
/// noticing a condition that became true later.
const MAX_PAUSE: Duration = Duration::from_millis(10);

/// Checks `done` until it returns true or `timeout` has passed, pausing
/// 1 ms, 2 ms, 4 ms, ... (at most 10 ms) in between. Returns whether the
/// condition became true; it is checked one last time at the deadline.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_true_once_condition_holds() {
        let mut calls = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            calls += 1;
            calls == 4
        }));
        assert_eq!(calls, 4);
    }

    #[test]
    fn gives_up_after_timeout() {
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(20), || false));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
