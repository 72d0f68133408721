//! Network statistics beyond the generic [`VirtioCounters`]: frames and
//! drops per direction, which is what an operator asks about first.
//!
//! [`VirtioCounters`]: crate::VirtioCounters

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one net device (relaxed: independent statistics).
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
}

/// A plain copy of [`NetCounters`]. Bytes count Ethernet frames, without
/// the virtio-net header.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetCountersSnapshot {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Their bytes.
    pub rx_bytes: u64,
    /// Host frames lost: larger than the guest's buffer, malformed, or a
    /// receive buffer the device could not use.
    pub rx_dropped: u64,
    /// Guest frames handed to the backend (or, on an MMDS interface, to
    /// the metadata service).
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Guest frames lost: malformed or oversize chains, backend full or
    /// failing.
    pub tx_dropped: u64,
}

impl NetCountersSnapshot {
    /// Name/value pairs for whichever metrics format the caller speaks.
    pub fn fields(&self) -> [(&'static str, u64); 6] {
        [
            ("rx_frames", self.rx_frames),
            ("rx_bytes", self.rx_bytes),
            ("rx_dropped", self.rx_dropped),
            ("tx_frames", self.tx_frames),
            ("tx_bytes", self.tx_bytes),
            ("tx_dropped", self.tx_dropped),
        ]
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl NetCounters {
    /// A frame of `len` bytes reached the guest.
    pub fn received(&self, len: u64) {
        bump(&self.rx_frames, 1);
        bump(&self.rx_bytes, len);
    }
    /// A host frame was lost.
    pub fn rx_drop(&self) {
        bump(&self.rx_dropped, 1);
    }
    /// A guest frame of `len` bytes left through the backend.
    pub fn sent(&self, len: u64) {
        bump(&self.tx_frames, 1);
        bump(&self.tx_bytes, len);
    }
    /// A guest frame was lost.
    pub fn tx_drop(&self) {
        bump(&self.tx_dropped, 1);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> NetCountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCountersSnapshot {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
        }
    }
}
