//! Paravirtual I/O: virtio 1.x devices behind the virtio-MMIO transport.
//!
//! Wiring (done by the VMM): wrap a device in a [`VirtioMmioTransport`] with
//! guest memory and an irqfd, put it on the MMIO bus at `base` for
//! [`MMIO_WINDOW_LEN`] bytes, register each of
//! [`VirtioMmioTransport::queue_events`] as an ioeventfd at
//! `base + QUEUE_NOTIFY_OFFSET` with datamatch = queue index, and add a
//! [`VirtioWorker`] to the event manager. The guest learns of the device
//! from the kernel command line (`virtio_mmio.device=4K@base:irq`).
//!
//! Everything the guest controls (registers, rings, buffers) is treated as
//! hostile: bad accesses are ignored and counted, bad chains fail the
//! request, and unrecoverable ring states mark the device NEEDS_RESET.

pub mod block;
mod chain;
mod counters;
mod device;
mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;
mod worker;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod mmio_tests;
#[cfg(test)]
pub(crate) mod test_ring;

pub use chain::{ChainError, Segment};
pub use counters::{CountersSnapshot, VirtioCounters};
pub use device::{
    ActivateError, Activation, DeviceFault, GuestMemory, SingleQueue, VirtioDevice,
    VirtioInterrupt, read_config_bytes,
};
pub use mmio::{
    MMIO_MAGIC, MMIO_VENDOR_ID, MMIO_VERSION, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET, TransportError,
    VirtioMmioTransport,
};
pub use worker::VirtioWorker;
