//! Per-device counters: lock-free so the vCPU threads, the event thread and
//! the metrics reader never contend, and a guest cannot stall a reader.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one virtio device. Relaxed ordering: each counter is an
/// independent statistic, never used to synchronise memory.
#[derive(Debug, Default)]
pub struct VirtioCounters {
    requests: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    notifications: AtomicU64,
    interrupts: AtomicU64,
    invalid_accesses: AtomicU64,
    invalid_status: AtomicU64,
    throttled: AtomicU64,
}

/// A plain copy of [`VirtioCounters`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// Descriptor chains taken from the available rings.
    pub requests: u64,
    /// Bytes the device delivered to the guest (disk reads, entropy).
    pub bytes_read: u64,
    /// Bytes the guest handed to the device (disk writes).
    pub bytes_written: u64,
    /// Failed requests, malformed chains, host I/O errors, lost interrupts.
    pub errors: u64,
    /// Queue notifications (ioeventfd or QueueNotify writes) handled.
    pub notifications: u64,
    /// Interrupts raised (used buffer or configuration change).
    pub interrupts: u64,
    /// Register accesses ignored: bad width or offset, frozen or read-only
    /// registers, refused config-space writes.
    pub invalid_accesses: u64,
    /// Status writes that broke the driver initialisation sequence.
    pub invalid_status: u64,
    /// Times a rate limiter stopped a queue until its timer fired.
    pub throttled: u64,
}

impl CountersSnapshot {
    /// Name/value pairs, for whichever metrics format the caller speaks
    /// (the devices crate stays free of serde).
    pub fn fields(&self) -> [(&'static str, u64); 9] {
        [
            ("requests", self.requests),
            ("bytes_read", self.bytes_read),
            ("bytes_written", self.bytes_written),
            ("errors", self.errors),
            ("notifications", self.notifications),
            ("interrupts", self.interrupts),
            ("invalid_accesses", self.invalid_accesses),
            ("invalid_status", self.invalid_status),
            ("throttled", self.throttled),
        ]
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

impl VirtioCounters {
    /// One more request (descriptor chain).
    pub fn request(&self) {
        bump(&self.requests, 1);
    }
    /// `n` bytes delivered to the guest.
    pub fn read_bytes(&self, n: u64) {
        bump(&self.bytes_read, n);
    }
    /// `n` bytes taken from the guest.
    pub fn wrote_bytes(&self, n: u64) {
        bump(&self.bytes_written, n);
    }
    /// One more error.
    pub fn error(&self) {
        bump(&self.errors, 1);
    }
    /// One more queue notification.
    pub fn notification(&self) {
        bump(&self.notifications, 1);
    }
    /// One more interrupt.
    pub fn interrupt(&self) {
        bump(&self.interrupts, 1);
    }
    /// One more ignored register access.
    pub fn invalid_access(&self) {
        bump(&self.invalid_accesses, 1);
    }
    /// One more refused status transition.
    pub fn invalid_status(&self) {
        bump(&self.invalid_status, 1);
    }

    /// A rate limiter stopped a queue.
    pub fn throttled(&self) {
        bump(&self.throttled, 1);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountersSnapshot {
            requests: get(&self.requests),
            bytes_read: get(&self.bytes_read),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
            notifications: get(&self.notifications),
            interrupts: get(&self.interrupts),
            invalid_accesses: get(&self.invalid_accesses),
            invalid_status: get(&self.invalid_status),
            throttled: get(&self.throttled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_every_counter_by_name() {
        let c = VirtioCounters::default();
        c.request();
        c.read_bytes(10);
        c.wrote_bytes(20);
        c.error();
        c.notification();
        c.interrupt();
        c.invalid_access();
        c.invalid_status();
        c.throttled();
        let fields = c.snapshot().fields();
        assert_eq!(fields[1], ("bytes_read", 10));
        assert_eq!(fields[2], ("bytes_written", 20));
        assert!(fields.iter().all(|(_, v)| *v > 0));
    }
}
