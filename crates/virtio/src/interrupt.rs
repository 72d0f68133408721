//! How a device tells the driver about used buffers and configuration
//! changes, whatever the transport: [`VirtioInterrupt`] hands each signal
//! to the transport's [`InterruptSink`] (virtio-MMIO: an InterruptStatus
//! bit and one line; virtio-PCI: the MSI-X vector the driver chose).

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sie_devices::Interrupt;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::counters::VirtioCounters;

/// Why the device interrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InterruptCause {
    /// Buffers were put in queue `n`'s used ring.
    Used(usize),
    /// The configuration space (or NEEDS_RESET) changed.
    Config,
}

/// A transport's way of raising an interrupt.
pub(crate) trait InterruptSink: Send + Sync {
    /// Raises the interrupt for `cause`; `Ok(false)` when the driver asked
    /// for none (a virtio-PCI queue without a vector).
    fn raise(&self, cause: InterruptCause) -> io::Result<bool>;
    /// The driver reset the device: forget pending status and routing.
    fn reset(&self);
}

/// The device's handle on its interrupts (cheap to clone).
#[derive(Clone)]
pub struct VirtioInterrupt {
    sink: Arc<dyn InterruptSink>,
    counters: Arc<VirtioCounters>,
}

impl VirtioInterrupt {
    pub(crate) fn new(sink: Arc<dyn InterruptSink>, counters: Arc<VirtioCounters>) -> Self {
        Self { sink, counters }
    }

    /// Buffers were put in queue `queue`'s used ring.
    pub fn signal_used(&self, queue: usize) {
        self.signal(InterruptCause::Used(queue));
    }

    /// The configuration space (or NEEDS_RESET) changed.
    pub fn signal_config(&self) {
        self.signal(InterruptCause::Config);
    }

    pub(crate) fn reset(&self) {
        self.sink.reset();
    }

    fn signal(&self, cause: InterruptCause) {
        match self.sink.raise(cause) {
            Ok(true) => self.counters.interrupt(),
            Ok(false) => {}
            Err(error) => {
                self.counters.error();
                tracing::warn!(%error, ?cause, "virtio interrupt lost");
            }
        }
    }
}

/// virtio-MMIO's interrupt: sets an InterruptStatus bit, then raises the
/// (edge) line. The status is shared with the transport, which reads and
/// acknowledges it from the vCPU threads.
pub(crate) struct LineInterrupt {
    pub status: Arc<AtomicU32>,
    pub line: Arc<dyn Interrupt>,
}

impl InterruptSink for LineInterrupt {
    fn raise(&self, cause: InterruptCause) -> io::Result<bool> {
        let bit = match cause {
            InterruptCause::Used(_) => VIRTIO_MMIO_INT_VRING,
            InterruptCause::Config => VIRTIO_MMIO_INT_CONFIG,
        };
        // The bit must be visible before the guest's handler reads it.
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.line.trigger()?;
        Ok(true)
    }

    fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
    }
}
