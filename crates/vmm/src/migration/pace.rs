//! A send's bandwidth cap (`max_bandwidth_mib_s`): after each batch the
//! sender waits until the bytes sent so far fit the cap, so a migration
//! leaves room on a shared link (and a test can make the link slower
//! than the guest dirties memory).
//!
//! The wait is a `park_timeout` (a futex) rather than a sleep: the
//! migration thread's seccomp filter has no `nanosleep`.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The cap and what went out under it.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_s: u64,
    since: Cell<Instant>,
    /// A cell: the sender's methods share it through `&self`.
    sent: Cell<u64>,
}

impl Pacer {
    /// A cap of `mib_per_s` MiB/s from now.
    pub fn new(mib_per_s: u64) -> Self {
        Self {
            bytes_per_s: mib_per_s.saturating_mul(1 << 20).max(1),
            since: Cell::new(Instant::now()),
            sent: Cell::new(0),
        }
    }

    /// Counts `bytes` sent and returns how long to wait before the next.
    pub fn note(&self, bytes: u64, now: Instant) -> Duration {
        // Time the sender spent idle (taking dirty pages, say) is no credit
        // for a burst: the schedule starts again from the last batch due.
        let was_due = self.since.get() + self.at_cap(self.sent.get());
        if was_due < now {
            self.since.set(now);
            self.sent.set(0);
        }
        let sent = self.sent.get().saturating_add(bytes);
        self.sent.set(sent);
        (self.since.get() + self.at_cap(sent)).saturating_duration_since(now)
    }

    fn at_cap(&self, bytes: u64) -> Duration {
        Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64)
    }

    /// Counts `bytes` sent and waits as long as the cap asks.
    pub fn sent(&self, bytes: u64) {
        let until = Instant::now() + self.note(bytes, Instant::now());
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::park_timeout(left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_what_the_cap_leaves() {
        let pacer = Pacer::new(2);
        let start = pacer.since.get();
        // 1 MiB at 2 MiB/s is due half a second after the start.
        assert_eq!(pacer.note(1 << 20, start), Duration::from_millis(500));
        // A second, noted when the first was due: due at 1 s.
        let half = start + Duration::from_millis(500);
        assert_eq!(pacer.note(1 << 20, half), Duration::from_millis(500));
    }

    #[test]
    fn idle_time_is_no_credit_for_a_burst() {
        let pacer = Pacer::new(1);
        let start = pacer.since.get();
        assert_eq!(pacer.note(1 << 19, start), Duration::from_millis(500));
        // Ten seconds idle, then 1 MiB: still a second's worth of wait.
        let later = start + Duration::from_secs(10);
        assert_eq!(pacer.note(1 << 20, later), Duration::from_secs(1));
    }
}
