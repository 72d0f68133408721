//! Boot-time markers written by the guest, stamped with the time since sie started.

use std::sync::Mutex;
use std::time::Duration;

/// Where a boot marker came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerSource {
    /// A byte written to I/O port 0x80 (the debug port).
    DebugPort,
    /// The value 123 written to the boot-timer MMIO register (Firecracker's convention).
    BootTimer,
}

/// One boot marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootMarker {
    /// Time since the sie process started.
    pub at: Duration,
    /// Which mechanism the guest used.
    pub source: MarkerSource,
    /// The value written.
    pub value: u64,
}

/// Markers beyond this many are counted but not stored, so a guest cannot
/// grow the VMM's memory by writing to port 0x80 in a loop.
pub const MAX_STORED_MARKERS: usize = 4096;

/// The timeline of boot markers. Writes are rare (a handful per boot), so a
/// mutex is cheaper to reason about than anything lock-free.
#[derive(Debug, Default)]
pub struct BootTimeline {
    inner: Mutex<TimelineInner>,
}

#[derive(Debug, Default)]
struct TimelineInner {
    markers: Vec<BootMarker>,
    dropped: u64,
}

impl BootTimeline {
    /// Appends a marker.
    pub fn push(&self, marker: BootMarker) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.markers.len() < MAX_STORED_MARKERS {
            inner.markers.push(marker);
        } else {
            inner.dropped += 1;
        }
    }

    /// The stored markers, in arrival order, and how many were dropped.
    pub fn snapshot(&self) -> (Vec<BootMarker>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (inner.markers.clone(), inner.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_bounded() {
        let timeline = BootTimeline::default();
        let marker = BootMarker {
            at: Duration::ZERO,
            source: MarkerSource::DebugPort,
            value: 1,
        };
        for _ in 0..MAX_STORED_MARKERS + 3 {
            timeline.push(marker);
        }
        let (markers, dropped) = timeline.snapshot();
        assert_eq!(markers.len(), MAX_STORED_MARKERS);
        assert_eq!(dropped, 3);
    }
}
