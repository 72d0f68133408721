//! The one place a VM's end is decided: the first outcome wins, every vCPU
//! is kicked out of the guest and the event loop is woken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sie_devices::VmRequests;
use sie_hv::VcpuKicker;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::outcome::VmOutcome;

/// Shared by the vCPU threads, the devices and the event loop.
pub struct VmControl {
    outcome: Mutex<Option<VmOutcome>>,
    stopping: AtomicBool,
    /// Written once the VM is stopping, so the event loop wakes up.
    wake: EventFd,
    kickers: OnceLock<Vec<Arc<dyn VcpuKicker>>>,
}

impl VmControl {
    /// A control for a VM that is running.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            kickers: OnceLock::new(),
        })
    }

    /// Records the vCPUs' kickers, once they exist.
    pub fn set_kickers(&self, kickers: Vec<Arc<dyn VcpuKicker>>) {
        // A second call would be a builder bug; the first set stays.
        let _ = self.kickers.set(kickers);
    }

    /// Ends the VM with `outcome` unless an outcome was already recorded.
    pub fn finish(&self, outcome: VmOutcome) {
        {
            let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.stopping.store(true, Ordering::Release);
        for kicker in self.kickers.get().into_iter().flatten() {
            kicker.kick();
        }
        // A full eventfd counter still wakes the loop; nothing to handle.
        let _ = self.wake.write(1);
    }

    /// True once any outcome was recorded.
    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The eventfd the event loop waits on.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The recorded outcome, if any.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl VmRequests for VmControl {
    fn request_reset(&self) {
        self.finish(VmOutcome::Reset);
    }

    fn report_panic(&self) {
        self.finish(VmOutcome::GuestPanic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingKicker(AtomicUsize);

    impl VcpuKicker for CountingKicker {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn first_outcome_wins_and_everyone_is_told() {
        let control = VmControl::new().unwrap();
        let kicker = Arc::new(CountingKicker(AtomicUsize::new(0)));
        control.set_kickers(vec![kicker.clone(), kicker.clone()]);
        assert!(!control.is_stopping());
        control.report_panic();
        control.request_reset();
        assert!(control.is_stopping());
        assert_eq!(control.outcome(), Some(VmOutcome::GuestPanic));
        assert_eq!(kicker.0.load(Ordering::Relaxed), 4);
        assert_eq!(control.wake_fd().read().unwrap(), 2);
    }
}
