//! Per-device access statistics, shared by every vCPU.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{Histogram, HistogramSnapshot};

/// Reads, writes and handling time of one device.
#[derive(Debug, Default)]
pub struct DeviceStats {
    reads: AtomicU64,
    writes: AtomicU64,
    handling: Histogram,
}

impl DeviceStats {
    /// Records one access handled in `handling_ns`.
    #[inline]
    pub fn record(&self, is_write: bool, handling_ns: u64) {
        let counter = if is_write { &self.writes } else { &self.reads };
        counter.fetch_add(1, Ordering::Relaxed);
        self.handling.record_shared(handling_ns);
    }

    /// Copies the statistics.
    pub fn snapshot(&self) -> DeviceSnapshot {
        DeviceSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            handling: self.handling.snapshot(),
        }
    }
}

/// A copy of one device's statistics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Guest reads of the device's registers.
    pub reads: u64,
    /// Guest writes to the device's registers.
    pub writes: u64,
    /// Distribution of handling time, ns.
    pub handling: HistogramSnapshot,
}
