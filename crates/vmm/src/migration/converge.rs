//! Auto-converge: a guest that dirties memory about as fast as the link
//! carries it keeps every pre-copy round as large as the last, and the
//! rest never fits the allowed downtime. Slowing its vCPUs step by step
//! (each sits out a share of every [`PERIOD`]) slows the dirtying until a
//! round is small enough.
//!
//! ```
//! use sie_vmm::migration::converge::AutoConverge;
//! let mut converge = AutoConverge::new(true);
//! // 4 MiB went out while the guest dirtied 3 MiB: throttle.
//! assert_eq!(converge.after_round(4 << 20, 3 << 20, 900), Some(20));
//! assert_eq!(converge.after_round(3 << 20, 2 << 20, 700), Some(30));
//! ```

use std::time::Duration;

/// The throttle's period: each vCPU sits out `percent` of every one.
pub const PERIOD: Duration = Duration::from_millis(10);
/// The first step, in percent of every period.
pub const FIRST_PERCENT: u8 = 20;
/// Each further step adds this much.
pub const STEP_PERCENT: u8 = 10;
/// The most: the guest still runs a little (its timers, its console).
pub const MAX_PERCENT: u8 = 99;
/// Rounds in a row whose estimated downtime did not fall before the
/// throttle rises even though each dirtied less than half what it sent.
const STALLED_ROUNDS: u32 = 2;

/// The throttle decision, round by round.
#[derive(Debug, Default)]
pub struct AutoConverge {
    enabled: bool,
    percent: u8,
    last_estimate_ms: Option<u64>,
    stalled: u32,
}

impl AutoConverge {
    /// A decision that never throttles when `enabled` is false.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            ..Self::default()
        }
    }

    /// The throttle now, in percent.
    pub fn percent(&self) -> u8 {
        self.percent
    }

    /// After a round that did not converge: `sent` bytes went out while
    /// the guest dirtied `dirtied` bytes, and the pause would now take
    /// `estimate_ms`. Returns the new throttle when it rises: when the
    /// guest dirtied at least half what went out, or the estimate did not
    /// fall for [`STALLED_ROUNDS`] rounds.
    pub fn after_round(&mut self, sent: u64, dirtied: u64, estimate_ms: u64) -> Option<u8> {
        let stalled = self
            .last_estimate_ms
            .is_some_and(|last| estimate_ms >= last);
        self.stalled = if stalled { self.stalled + 1 } else { 0 };
        self.last_estimate_ms = Some(estimate_ms);
        let dirty_heavy = sent > 0 && dirtied.saturating_mul(2) >= sent;
        if !self.enabled || !(dirty_heavy || self.stalled >= STALLED_ROUNDS) {
            return None;
        }
        self.stalled = 0;
        let next = match self.percent {
            0 => FIRST_PERCENT,
            now => now.saturating_add(STEP_PERCENT).min(MAX_PERCENT),
        };
        if next == self.percent {
            return None;
        }
        self.percent = next;
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throttle_rises_from_20_by_10_to_99() {
        let mut converge = AutoConverge::new(true);
        let steps: Vec<Option<u8>> = (0..12)
            .map(|_| converge.after_round(1 << 20, 1 << 20, 500))
            .collect();
        let expected: Vec<Option<u8>> = [20, 30, 40, 50, 60, 70, 80, 90, 99]
            .into_iter()
            .map(Some)
            .chain([None, None, None])
            .collect();
        assert_eq!(steps, expected);
        assert_eq!(converge.percent(), 99);
    }

    #[test]
    fn shrinking_rounds_are_left_alone() {
        let mut converge = AutoConverge::new(true);
        // Each round dirties a quarter of what it sent, and the estimate falls.
        assert_eq!(converge.after_round(8 << 20, 2 << 20, 800), None);
        assert_eq!(converge.after_round(2 << 20, 1 << 19, 200), None);
        assert_eq!(converge.after_round(1 << 19, 1 << 17, 50), None);
        assert_eq!(converge.percent(), 0);
    }

    #[test]
    fn an_estimate_that_stops_falling_throttles_after_two_rounds() {
        let mut converge = AutoConverge::new(true);
        assert_eq!(converge.after_round(8 << 20, 1 << 20, 400), None);
        assert_eq!(converge.after_round(8 << 20, 1 << 20, 400), None);
        assert_eq!(converge.after_round(8 << 20, 1 << 20, 410), Some(20));
        // The count starts again after a step.
        assert_eq!(converge.after_round(8 << 20, 1 << 20, 420), None);
        assert_eq!(converge.after_round(8 << 20, 1 << 20, 420), Some(30));
    }

    #[test]
    fn off_never_throttles() {
        let mut converge = AutoConverge::new(false);
        for _ in 0..5 {
            assert_eq!(converge.after_round(1 << 20, 1 << 20, 900), None);
        }
        assert_eq!(converge.percent(), 0);
    }

    #[test]
    fn a_round_that_sent_nothing_is_not_dirty_heavy() {
        let mut converge = AutoConverge::new(true);
        assert_eq!(converge.after_round(0, 4096, 1), None);
    }
}
