//! Emulated devices and the buses that route guest accesses to them.
//!
//! Devices are state machines reached through [`BusDevice`]; they signal the
//! world through small traits ([`Interrupt`], [`VmRequests`]) and never see
//! KVM, so each is unit-tested with a buffer and a counter.
//!
//! Lock order: a bus is immutable once the vCPUs start (no lock); each device
//! holds at most one internal mutex, taken only inside its own `read`/`write`,
//! and never calls back into a bus while holding it.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError, BusHit};

use std::io;

/// An interrupt line a device can raise (edge): in sie, an eventfd wired to
/// the in-kernel irqchip through irqfd.
pub trait Interrupt: Send + Sync {
    /// Raises the interrupt once.
    fn trigger(&self) -> io::Result<()>;
}

impl Interrupt for vmm_sys_util::eventfd::EventFd {
    fn trigger(&self) -> io::Result<()> {
        self.write(1)
    }
}

/// Requests a device can make of the whole VM.
pub trait VmRequests: Send + Sync {
    /// The guest asked for a reset (e.g. through the i8042); sie ends the VM.
    fn request_reset(&self);
    /// The guest reported a kernel panic (pvpanic).
    fn report_panic(&self);
}
