//! The VM-exit observatory.
//!
//! Every VM exit is decoded in one place (the vCPU's exit dispatch in the
//! `vmm` crate), which records here the exit's kind, the device it reached and
//! two durations: time inside `KVM_RUN` and time the VMM spent handling it.
//! Recording is lock-free: each vCPU writes only its own [`VcpuStats`], devices
//! use relaxed atomic adds, and only rare events (boot markers, accesses to
//! unclaimed addresses) take a lock.
//!
//! ```
//! use std::time::Instant;
//! use sie_obs::{ExitKind, Observatory};
//!
//! let obs = Observatory::new(Instant::now(), 1);
//! let com1 = obs.register_device("com1");
//! obs.vcpu(0).unwrap().record(ExitKind::PioOut, 2_000, 150);
//! com1.record(true, 150);
//! let report = obs.report();
//! assert_eq!(report.exit(ExitKind::PioOut).count, 1);
//! assert_eq!(report.devices[0].stats.writes, 1);
//! ```

mod device_stats;
mod exit_kind;
mod histogram;
mod markers;
mod report;
mod unknown;
mod vcpu_stats;

use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use device_stats::{DeviceSnapshot, DeviceStats};
pub use exit_kind::ExitKind;
pub use histogram::{Histogram, HistogramSnapshot};
pub use markers::{BootMarker, BootTimeline, MAX_STORED_MARKERS, MarkerSource};
pub use report::{DeviceRow, ExitRow, Report};
pub use unknown::{AddressSpace, UnknownAccesses, UnknownCounts};
pub use vcpu_stats::{KindSnapshot, VcpuStats};

/// All statistics of one VM.
#[derive(Debug)]
pub struct Observatory {
    start: Instant,
    vcpus: Box<[VcpuStats]>,
    /// Registered devices in registration order; the lock is taken only to
    /// register (while the VM is built) and to report, never per exit:
    /// the bus holds each device's `Arc<DeviceStats>` itself.
    devices: Mutex<Vec<(String, Arc<DeviceStats>)>>,
    markers: BootTimeline,
    unknown: UnknownAccesses,
}

impl Observatory {
    /// Creates the observatory for `vcpus` vCPUs, before any device exists:
    /// devices register as they are created ([`Observatory::register_device`]).
    /// `start` is when the sie process started; boot markers are stamped
    /// relative to it.
    pub fn new(start: Instant, vcpus: usize) -> Self {
        Self {
            start,
            vcpus: (0..vcpus).map(|_| VcpuStats::default()).collect(),
            devices: Mutex::new(Vec::new()),
            markers: BootTimeline::default(),
            unknown: UnknownAccesses::default(),
        }
    }

    /// When the sie process started.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// The statistics of vCPU `index`, written only by that vCPU's thread.
    pub fn vcpu(&self, index: usize) -> Option<&VcpuStats> {
        self.vcpus.get(index)
    }

    /// Registers a device under `name` (as reports show it) and returns the
    /// statistics its accesses are recorded in.
    pub fn register_device(&self, name: impl Into<String>) -> Arc<DeviceStats> {
        let stats = Arc::new(DeviceStats::default());
        self.devices_lock().push((name.into(), stats.clone()));
        stats
    }

    /// The registered devices and their statistics, in registration order.
    pub(crate) fn registered_devices(&self) -> Vec<(String, Arc<DeviceStats>)> {
        self.devices_lock().clone()
    }

    fn devices_lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<DeviceStats>)>> {
        // A panic while registering leaves a valid vector behind.
        self.devices.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a boot marker now.
    pub fn mark(&self, source: MarkerSource, value: u64) {
        self.markers.push(BootMarker {
            at: self.start.elapsed(),
            source,
            value,
        });
    }

    /// Counts an access nothing claimed; returns the running total at that
    /// address (`u64::MAX` once too many addresses are tracked).
    pub fn record_unknown(&self, space: AddressSpace, addr: u64, is_write: bool) -> u64 {
        self.unknown.record(space, addr, is_write)
    }

    /// A consistent-enough copy of everything, for printing or export.
    pub fn report(&self) -> Report {
        Report::collect(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_merges_vcpus_and_devices() {
        let obs = Observatory::new(Instant::now(), 2);
        obs.register_device("a");
        let b = obs.register_device("b");
        obs.vcpu(0).unwrap().record(ExitKind::PioOut, 10, 1);
        obs.vcpu(1).unwrap().record(ExitKind::PioOut, 10, 1);
        b.record(true, 5);
        obs.mark(MarkerSource::DebugPort, 0x40);
        obs.record_unknown(AddressSpace::Pio, 0x99, false);
        let report = obs.report();
        assert_eq!(report.exit(ExitKind::PioOut).count, 2);
        assert_eq!(report.total_exits(), 2);
        assert_eq!(report.devices[1].name, "b");
        assert_eq!(report.devices[1].stats.writes, 1);
        assert_eq!(report.markers.len(), 1);
        assert_eq!(report.unknown.len(), 1);
        assert!(obs.vcpu(2).is_none());
    }
}
