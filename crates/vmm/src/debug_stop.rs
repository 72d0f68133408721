//! Debug stops: where a vCPU that took a debug exit (a single step, a
//! breakpoint, a watchpoint armed by the gdb stub) leaves word of it before
//! it pauses itself. The gdb stub ([`crate::gdb`]) takes the word on the VMM
//! thread, pauses the other vCPUs and tells gdb.
//!
//! It lives apart from both so that the vCPU threads and the stub, which
//! also drives the vCPUs, do not import each other.
//!
//! While gdb has `int3` bytes in guest memory every `#BP` exits, the
//! guest's own too (Linux's `text_poke_bp` while it patches its code,
//! kprobes, a debugger inside the guest). The stub lists its `int3`
//! addresses here before the vCPUs run; a `#BP` anywhere else is the
//! guest's ([`DebugStops::is_guests_own`]), and its vCPU hands it back to
//! the guest and runs on without a stop.

use std::collections::BTreeSet;
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
    /// Where gdb's `int3` bytes are, as linear addresses (what a `#BP`
    /// exit reports: CS base + RIP at the `int3`).
    int3s: Mutex<BTreeSet<u64>>,
}

/// The `#BP` vector: an `int3`.
pub const BP_VECTOR: u8 = 3;

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

    /// Sets where gdb's `int3` bytes are (the stub, before the vCPUs run).
    pub fn set_int3s(&self, addresses: impl IntoIterator<Item = u64>) {
        *self.int3s.lock().unwrap_or_else(|e| e.into_inner()) = addresses.into_iter().collect();
    }

    /// A `#BP` at an address where gdb has no `int3`: the guest's own,
    /// which goes back to the guest. Both KVM backends (Intel and AMD)
    /// report the address of the `int3` itself, as gdb named it; gdb's
    /// `int3` over one of the guest's is gdb's (the guest's byte is under
    /// it). Debug-register events (`#DB`) are always gdb's.
    pub fn is_guests_own(&self, exit: &DebugExit) -> bool {
        exit.exception == u32::from(BP_VECTOR)
            && !self
                .int3s
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&exit.pc)
    }

    /// Whether no stop waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.stops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Takes every recorded stop.
    pub fn take(&self) -> Vec<DebugStop> {
        std::mem::take(&mut *self.stops.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(exception: u32, pc: u64) -> DebugExit {
        DebugExit {
            exception,
            pc,
            dr6: 0,
            dr7: 0,
        }
    }

    #[test]
    fn a_bp_at_one_of_gdbs_int3s_is_gdbs() {
        let stops = DebugStops::default();
        stops.set_int3s([0x1000, 0x2000]);
        assert!(!stops.is_guests_own(&exit(u32::from(BP_VECTOR), 0x2000)));
    }

    #[test]
    fn a_bp_anywhere_else_is_the_guests() {
        let stops = DebugStops::default();
        stops.set_int3s([0x1000]);
        assert!(stops.is_guests_own(&exit(u32::from(BP_VECTOR), 0x1001)));
        assert!(stops.is_guests_own(&exit(u32::from(BP_VECTOR), 0xffff_ffff_8100_0000)));
        // gdb took its int3s out: every #BP is the guest's again.
        stops.set_int3s([]);
        assert!(stops.is_guests_own(&exit(u32::from(BP_VECTOR), 0x1000)));
    }

    /// The guest had an `int3` where gdb put one: the exit cannot tell
    /// them apart, and gdb asked to stop there.
    #[test]
    fn a_bp_where_the_guest_and_gdb_both_have_an_int3_is_gdbs() {
        let stops = DebugStops::default();
        stops.set_int3s([0x1000]);
        assert!(!stops.is_guests_own(&exit(u32::from(BP_VECTOR), 0x1000)));
    }

    #[test]
    fn debug_register_events_and_steps_are_gdbs() {
        let stops = DebugStops::default();
        // A hardware breakpoint (DR6.B0) and a single step (DR6.BS), at
        // addresses with no int3 of gdb's.
        assert!(!stops.is_guests_own(&DebugExit {
            dr6: 1,
            ..exit(1, 0x3000)
        }));
        assert!(!stops.is_guests_own(&DebugExit {
            dr6: 1 << 14,
            ..exit(1, 0x3001)
        }));
    }
}
