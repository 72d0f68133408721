//! Debug stops: where a vCPU that took a debug exit (a single step, a
//! breakpoint, a watchpoint armed by the gdb stub) leaves word of it before
//! it pauses itself. The gdb stub ([`crate::gdb`]) takes the word on the VMM
//! thread, pauses the other vCPUs and tells gdb.
//!
//! It lives apart from both so that the vCPU threads and the stub, which
//! also drives the vCPUs, do not import each other.

use std::sync::{Arc, Mutex, OnceLock};

use sie_hv::DebugExit;
use vmm_sys_util::eventfd::EventFd;

/// One vCPU's debug stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugStop {
    /// The vCPU's index.
    pub vcpu: usize,
    /// What the hypervisor reported.
    pub exit: DebugExit,
}

/// The stops not yet taken, oldest first, and the stub's wake-up.
#[derive(Debug, Default)]
pub struct DebugStops {
    stops: Mutex<Vec<DebugStop>>,
    /// Written after each stop (once the gdb stub gave one).
    wake: OnceLock<Arc<EventFd>>,
}

impl DebugStops {
    /// Records a stop (on the vCPU thread) and wakes the stub.
    pub fn push(&self, stop: DebugStop) {
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stop);
        if let Some(wake) = self.wake.get() {
            // A full counter still wakes the loop.
            let _ = wake.write(1);
        }
    }

    /// Has `wake` written after each stop from now on (the first call
    /// wins: one stub per VM).
    pub fn set_wake(&self, wake: Arc<EventFd>) {
        let _ = self.wake.set(wake);
    }

    /// Takes every recorded stop.
    pub fn take(&self) -> Vec<DebugStop> {
        std::mem::take(&mut *self.stops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
