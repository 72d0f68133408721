//! Emulated devices and the buses that route guest accesses to them.
//!
//! Devices are state machines reached through [`BusDevice`]; they signal the
//! world through small traits ([`Interrupt`], [`VmRequests`]) and never see
//! KVM, so each is unit-tested with a buffer and a counter. This crate holds
//! the bus, those traits and the legacy PC devices; the virtio devices live
//! in `sie-virtio` on top of the same traits.
//!
//! Locks: a bus is immutable once the vCPUs start and is read without a
//! lock. A device keeps its mutable state behind one mutex of its own at
//! most. vCPU threads take it inside `read`/`write`, and other threads take
//! it too: the VMM event thread (console input into the serial port, all
//! queue and backend work of a virtio transport) and the thread serving API
//! actions (Ctrl+Alt+Del into the i8042). Whoever holds it touches only that
//! device's state and its outlets (an eventfd to raise an interrupt, the
//! serial output, a tap, disk file or socket): never another device's lock
//! and never a bus, so no thread holds two device locks at once and they
//! cannot deadlock. The cost is waiting: a vCPU touching a virtio register
//! waits while the event thread serves that device's queue (a disk request,
//! a burst of frames), which is why the registers an interrupt handler and
//! a doorbell use (InterruptStatus, InterruptAck, QueueNotify) bypass the
//! lock.

pub mod bus;
pub mod legacy;

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
