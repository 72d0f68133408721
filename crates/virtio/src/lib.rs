//! Paravirtual I/O: virtio 1.x devices behind the virtio-MMIO transport or
//! the virtio-PCI transport ([`pci`], wired as its header says); both
//! decode their registers into the same [`VirtioCore`] (status machine,
//! feature negotiation, queues, activation).
//!
//! Wiring (done by the VMM): wrap a device in a [`VirtioMmioTransport`] with
//! guest memory and an irqfd, put it on the MMIO bus at `base` for
//! [`MMIO_WINDOW_LEN`] bytes, register each of
//! [`VirtioCore::queue_events`] as an ioeventfd at
//! `base + QUEUE_NOTIFY_OFFSET` with datamatch = queue index, and add a
//! [`VirtioWorker`] to the event manager. The guest learns of the device
//! from the ACPI DSDT or the kernel command line
//! (`virtio_mmio.device=4K@base:irq`).
//!
//! The console ([`console`], virtio-console) carries `hvc0` when the user
//! asks for it instead of COM1.
//!
//! Drives, network interfaces and the entropy device take Firecracker's
//! rate limiters ([`rate_limiter`]): a request they refuse stays on its
//! ring while the device's worker waits on the limiter's timerfd.
//!
//! Everything the guest controls (registers, rings, buffers) is treated as
//! hostile: bad accesses are ignored and counted, bad chains fail the
//! request, and unrecoverable ring states mark the device NEEDS_RESET.
//!
//! Devices reach the rest of the VMM only through `sie-devices`' traits
//! ([`sie_devices::BusDevice`] for the register window,
//! [`sie_devices::Interrupt`] for the line) or `sie-pci`'s
//! ([`sie_pci::PciDevice`], [`sie_pci::MsiInterrupts`], [`sie_pci::BarMapper`])
//! and never see KVM. The
//! `test-util` feature exports `sie_virtio::testing`: rings built by hand
//! in guest memory, a driver that works the registers and a socket pair
//! for net, for tests and fuzz/.

pub mod balloon;
pub mod block;
mod chain;
pub mod console;
mod counters;
mod device;
mod device_state;
mod fault;
mod interrupt;
pub mod mem;
mod memory;
mod mmio;
mod mmio_state;
pub mod net;
mod net_backend;
pub mod pci;
pub mod pmem;
pub mod rate_limiter;
pub mod rng;
mod transport_core;
pub mod vsock;
mod worker;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod mmio_state_tests;
#[cfg(test)]
mod mmio_tests;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod throttle_tests;

pub use chain::{ChainError, Segment};
pub use counters::{CountersSnapshot, VirtioCounters};
pub use device::{ActivateError, Activation, SingleQueue, VirtioDevice, read_config_bytes};
pub use device_state::{BalloonState, DeviceState};
pub use fault::DeviceFault;
pub use interrupt::VirtioInterrupt;
pub use memory::GuestMemory;
pub use mmio::{
    MMIO_MAGIC, MMIO_VENDOR_ID, MMIO_VERSION, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET,
    VirtioMmioTransport,
};
pub use mmio_state::{SavedQueue, TransportSnapshot, TransportState, TransportStateError};
pub use transport_core::{TransportError, VirtioCore};
pub use worker::{VirtioTransport, VirtioWorker};
