//! Exponential back-off between retries that starts over after a quiet
//! period, so a rare failure is retried at once but a persistent one
//! cannot turn into a tight loop.

use std::time::Duration;

use tokio::time::Instant;

/// Delays that double from `first` up to `cap`.
#[derive(Debug)]
pub(crate) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    /// A call this long after the previous one starts over at `first`.
    quiet: Duration,
    last: Option<Instant>,
}

impl Backoff {
    pub(crate) fn new(first: Duration, cap: Duration, quiet: Duration) -> Self {
        Self {
            first,
            cap,
            next: first,
            quiet,
            last: None,
        }
    }

    /// Retries of a failed Register call: 0.5 s doubling up to 4 s.
    pub(crate) fn registration() -> Self {
        Self::new(
            Duration::from_millis(500),
            Duration::from_secs(4),
            Duration::from_secs(30),
        )
    }

    /// Restarts of a server generation that served: the first after quiet
    /// 5 s is immediate, a burst is slowed from 100 ms up to 1 s. The
    /// quiet period is longer than the cap, so restarts that keep coming
    /// at the cap never count as quiet.
    pub(crate) fn restart() -> Self {
        Self::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Duration::from_secs(5),
        )
    }

    /// Retries of a server generation that could not start (a file in the
    /// way, a path too long, another agent on the socket): 0.5 s doubling
    /// up to 30 s. Time alone never starts it over; the caller resets it
    /// once a generation has served and stayed registered for a while.
    pub(crate) fn serve_failure() -> Self {
        Self::new(
            Duration::from_millis(500),
            Duration::from_secs(30),
            Duration::MAX,
        )
    }

    /// Returns the delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let now = Instant::now();
        let quiet = self
            .last
            .is_none_or(|last| now.duration_since(last) >= self.quiet);
        self.last = Some(now);
        if quiet {
            self.next = self.first;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Starts over at the first delay.
    pub(crate) fn reset(&mut self) {
        self.next = self.first;
        self.last = None;
    }
}

/// Like [`Backoff::next_delay`] but the first attempt after a quiet period
/// waits nothing.
pub(crate) fn restart_delay(backoff: &mut Backoff) -> Duration {
    let quiet = backoff
        .last
        .is_none_or(|last| last.elapsed() >= backoff.quiet);
    let delay = backoff.next_delay();
    if quiet {
        Duration::ZERO
    } else {
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_cap() {
        let mut backoff = Backoff::registration();
        let delays: Vec<u128> = (0..6).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn quiet_period_starts_over() {
        let quiet = Duration::from_millis(20);
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4), quiet);
        backoff.next_delay();
        backoff.next_delay();
        std::thread::sleep(quiet * 2);
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn restart_burst_is_slowed() {
        let quiet = Duration::from_millis(200);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), quiet);
        assert_eq!(restart_delay(&mut backoff), Duration::ZERO);
        assert_eq!(restart_delay(&mut backoff), Duration::from_millis(200));
        assert_eq!(restart_delay(&mut backoff), Duration::from_millis(400));
        std::thread::sleep(quiet * 2);
        assert_eq!(restart_delay(&mut backoff), Duration::ZERO);
    }

    #[test]
    fn serve_failures_back_off_to_half_a_minute() {
        let mut backoff = Backoff::serve_failure();
        let delays: Vec<u64> = (0..9).map(|_| backoff.next_delay().as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn reset_starts_over() {
        let mut backoff = Backoff::registration();
        backoff.next_delay();
        backoff.next_delay();
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(500));
    }
}
