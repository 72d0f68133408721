//! The balloon's own counters, beside the generic virtio ones: pages
//! moved each way, bytes given back to the host, and what the guest got
//! wrong. Lock-free, shared with whoever reads metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live balloon counters (relaxed: independent statistics).
#[derive(Debug, Default)]
pub struct BalloonCounters {
    inflated_pages: AtomicU64,
    deflated_pages: AtomicU64,
    reported_bytes: AtomicU64,
    hinted_bytes: AtomicU64,
    discarded_bytes: AtomicU64,
    stats_updates: AtomicU64,
    invalid_pfns: AtomicU64,
    discard_failures: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl BalloonCounters {
    /// `n` pages went into the balloon.
    pub fn inflated(&self, n: u64) {
        bump(&self.inflated_pages, n);
    }
    /// `n` pages came out of it.
    pub fn deflated(&self, n: u64) {
        bump(&self.deflated_pages, n);
    }
    /// Free page reporting named `n` bytes.
    pub fn reported(&self, n: u64) {
        bump(&self.reported_bytes, n);
    }
    /// Free page hinting named `n` bytes.
    pub fn hinted(&self, n: u64) {
        bump(&self.hinted_bytes, n);
    }
    /// The host dropped `n` bytes of guest RAM.
    pub fn discarded(&self, n: u64) {
        bump(&self.discarded_bytes, n);
    }
    /// The driver sent its statistics.
    pub fn stats_update(&self) {
        bump(&self.stats_updates, 1);
    }
    /// A page number outside guest RAM.
    pub fn invalid_pfn(&self) {
        bump(&self.invalid_pfns, 1);
    }
    /// The host could not drop a range.
    pub fn discard_failure(&self) {
        bump(&self.discard_failures, 1);
    }

    /// Name/value pairs for the metrics.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("inflated_pages", get(&self.inflated_pages)),
            ("deflated_pages", get(&self.deflated_pages)),
            ("reported_bytes", get(&self.reported_bytes)),
            ("hinted_bytes", get(&self.hinted_bytes)),
            ("discarded_bytes", get(&self.discarded_bytes)),
            ("stats_updates", get(&self.stats_updates)),
            ("invalid_pfns", get(&self.invalid_pfns)),
            ("discard_failures", get(&self.discard_failures)),
        ]
    }
}
