//! Per-vCPU exit statistics, written only by that vCPU's thread.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::exit_kind::ExitKind;
use crate::histogram::{Histogram, HistogramSnapshot};

/// Counters and histograms for one exit kind on one vCPU.
#[derive(Debug, Default)]
struct KindStats {
    count: AtomicU64,
    guest_ns_total: AtomicU64,
    handling_ns_total: AtomicU64,
    handling: Histogram,
}

/// Exit statistics of one vCPU. One writer (the vCPU thread), many readers.
#[derive(Debug)]
pub struct VcpuStats {
    kinds: [KindStats; ExitKind::COUNT],
}

impl Default for VcpuStats {
    fn default() -> Self {
        Self {
            kinds: std::array::from_fn(|_| KindStats::default()),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    // Single writer: a plain load and store avoids a locked instruction per exit.
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl VcpuStats {
    /// Records one exit: `guest_ns` spent inside `KVM_RUN` before it, and
    /// `handling_ns` the VMM spent handling it. Must be called only from the
    /// thread that owns this vCPU.
    #[inline]
    pub fn record(&self, kind: ExitKind, guest_ns: u64, handling_ns: u64) {
        let stats = &self.kinds[kind.index()];
        bump(&stats.count, 1);
        bump(&stats.guest_ns_total, guest_ns);
        bump(&stats.handling_ns_total, handling_ns);
        stats.handling.record_single_writer(handling_ns);
    }

    /// Copies the statistics of one kind.
    pub fn snapshot(&self, kind: ExitKind) -> KindSnapshot {
        let stats = &self.kinds[kind.index()];
        KindSnapshot {
            count: stats.count.load(Ordering::Relaxed),
            guest_ns_total: stats.guest_ns_total.load(Ordering::Relaxed),
            handling_ns_total: stats.handling_ns_total.load(Ordering::Relaxed),
            handling: stats.handling.snapshot(),
        }
    }
}

/// A copy of one exit kind's statistics, mergeable across vCPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindSnapshot {
    /// Exits of this kind.
    pub count: u64,
    /// Time spent in the guest (inside `KVM_RUN`) before these exits, ns.
    pub guest_ns_total: u64,
    /// Time the VMM spent handling these exits, ns.
    pub handling_ns_total: u64,
    /// Distribution of handling time.
    pub handling: HistogramSnapshot,
}

impl KindSnapshot {
    /// Adds another snapshot into this one.
    pub fn merge(&mut self, other: &KindSnapshot) {
        self.count += other.count;
        self.guest_ns_total += other.guest_ns_total;
        self.handling_ns_total += other.handling_ns_total;
        self.handling.merge(&other.handling);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_and_sums() {
        let stats = VcpuStats::default();
        stats.record(ExitKind::PioOut, 100, 10);
        stats.record(ExitKind::PioOut, 200, 30);
        stats.record(ExitKind::MmioRead, 5, 5);
        let out = stats.snapshot(ExitKind::PioOut);
        assert_eq!(out.count, 2);
        assert_eq!(out.guest_ns_total, 300);
        assert_eq!(out.handling_ns_total, 40);
        assert_eq!(out.handling.count(), 2);
        assert_eq!(stats.snapshot(ExitKind::MmioRead).count, 1);
        assert_eq!(stats.snapshot(ExitKind::Hlt).count, 0);
    }
}
