//! The pvpanic I/O port (conventionally 0x505): the guest kernel reports a
//! panic by writing a bit set here, after reading which events the host
//! understands. The guest finds the port through ACPI (`QEMU0001`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{BusDevice, VmRequests};

/// The guest kernel panicked.
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// A crash kernel was loaded and will take over (kdump): informational.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;
const SUPPORTED_EVENTS: u8 = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;

/// The pvpanic device (one byte wide).
pub struct PvPanic {
    vm: Arc<dyn VmRequests>,
    crash_loaded: AtomicBool,
}

impl PvPanic {
    /// A pvpanic port reporting panics to `vm`.
    pub fn new(vm: Arc<dyn VmRequests>) -> Self {
        Self {
            vm,
            crash_loaded: AtomicBool::new(false),
        }
    }

    /// Whether the guest has reported loading a crash kernel.
    pub fn crash_loaded(&self) -> bool {
        self.crash_loaded.load(Ordering::Relaxed)
    }
}

impl BusDevice for PvPanic {
    fn read(&self, offset: u64, data: &mut [u8]) {
        // Only a byte read of the port itself advertises events; anything
        // else reads 0 ("no events"), never a bogus all-ones bitmap.
        let value = if offset == 0 && data.len() == 1 {
            SUPPORTED_EVENTS
        } else {
            0
        };
        data.fill(value);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let (0, [events]) = (offset, data) else {
            return;
        };
        if events & PVPANIC_CRASH_LOADED != 0 {
            self.crash_loaded.store(true, Ordering::Relaxed);
        }
        if events & PVPANIC_PANICKED != 0 {
            self.vm.report_panic();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_fakes::RecordingVm;

    #[test]
    fn advertises_panicked_and_crash_loaded() {
        let dev = PvPanic::new(Arc::new(RecordingVm::default()));
        let mut b = [0];
        dev.read(0, &mut b);
        assert_eq!(b, [0x03]);
        let mut wide = [0xff; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }

    #[test]
    fn panicked_bit_reports_a_panic() {
        let vm = Arc::new(RecordingVm::default());
        let dev = PvPanic::new(vm.clone());
        dev.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(vm.panics.load(Ordering::SeqCst), 1);
        assert!(!dev.crash_loaded());
    }

    #[test]
    fn crash_loaded_is_recorded_but_not_fatal() {
        let vm = Arc::new(RecordingVm::default());
        let dev = PvPanic::new(vm.clone());
        dev.write(0, &[PVPANIC_CRASH_LOADED]);
        assert!(dev.crash_loaded());
        assert_eq!(vm.panics.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn other_writes_are_ignored() {
        let vm = Arc::new(RecordingVm::default());
        let dev = PvPanic::new(vm.clone());
        dev.write(0, &[0xfc]);
        dev.write(1, &[PVPANIC_PANICKED]);
        dev.write(0, &[PVPANIC_PANICKED, 0]);
        dev.write(0, &[]);
        assert_eq!(vm.panics.load(Ordering::SeqCst), 0);
        assert!(!dev.crash_loaded());
    }
}
