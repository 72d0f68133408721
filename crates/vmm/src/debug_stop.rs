//! Debug stops: where a vCPU that took a debug exit (a single step, a
//! breakpoint, a watchpoint armed by the gdb stub) leaves word of it before
//! it pauses itself. The gdb stub ([`crate::gdb`]) takes the word on the VMM
//! thread, pauses the other vCPUs and tells gdb.
//!
//! It lives apart from both so that the vCPU threads and the stub, which
//! also drives the vCPUs, do not import each other.

use std::sync::Mutex;

use sie_hv::DebugExit;

/// One vCPU's debug stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugStop {
    /// The vCPU's index.
    pub vcpu: usize,
    /// What the hypervisor reported.
    pub exit: DebugExit,
}

/// The stops not yet taken, oldest first.
#[derive(Debug, Default)]
pub struct DebugStops(Mutex<Vec<DebugStop>>);

impl DebugStops {
    /// Records a stop (on the vCPU thread).
    pub fn push(&self, stop: DebugStop) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(stop);
    }

    /// Takes every recorded stop.
    pub fn take(&self) -> Vec<DebugStop> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
