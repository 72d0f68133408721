//! The one place a VM's end is decided: the first outcome wins, and the
//! VMM's event loop is woken to stop the vCPUs ([`crate::vcpu::VcpuSet`])
//! and wind down. Devices reach it through [`VmRequests`] (an i8042 reset,
//! a pvpanic report), vCPU threads when they crash, the event loop when a
//! stop signal arrives.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use sie_devices::VmRequests;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::outcome::VmOutcome;

/// Shared by the vCPU threads, the devices and the event loop.
pub struct VmControl {
    outcome: Mutex<Option<VmOutcome>>,
    /// Read by every vCPU after each exit, so the vCPU whose exit ended the
    /// VM leaves at once without a round trip through the event loop.
    stopping: AtomicBool,
    /// Written once the VM is stopping, so the event loop wakes up.
    wake: EventFd,
}

impl VmControl {
    /// A control for a VM that has not ended.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
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

    #[test]
    fn first_outcome_wins_and_the_event_loop_is_woken() {
        let control = VmControl::new().unwrap();
        assert!(!control.is_stopping());
        assert_eq!(control.outcome(), None);
        control.report_panic();
        control.request_reset();
        assert!(control.is_stopping());
        assert_eq!(control.outcome(), Some(VmOutcome::GuestPanic));
        assert_eq!(control.wake_fd().read().unwrap(), 2);
    }
}
