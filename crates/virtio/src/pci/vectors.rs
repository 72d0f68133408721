//! Where a virtio-PCI device's interrupts go (virtio 1.x §4.1.5.1.2 and
//! §4.1.4.5): the MSI-X vector the driver chose for each queue and for
//! configuration changes, and the ISR status byte.
//!
//! The choices are atomics, not behind the transport's lock: the device
//! raises interrupts while the event thread holds that lock. The MSI-X
//! table's own lock comes last in every lock order.
//!
//! sie's virtio-PCI functions have no INTx pin: with MSI-X disabled a
//! used-buffer interrupt only sets the ISR queue bit and reaches nobody
//! (Linux's driver always enables MSI-X when the platform offers it).

use std::io;
use std::sync::atomic::{AtomicU8, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sie_pci::MsixTable;

use super::layout::NO_VECTOR;
use crate::interrupt::{InterruptCause, InterruptSink};

/// ISR status bit: a queue was used (only without MSI-X).
pub(crate) const ISR_QUEUE: u8 = 1;
/// ISR status bit: the configuration changed.
pub(crate) const ISR_CONFIG: u8 = 2;

/// The driver's vector choices, the ISR byte and the MSI-X table.
pub(crate) struct VectorRoutes {
    msix: Arc<Mutex<MsixTable>>,
    config: AtomicU16,
    queues: Vec<AtomicU16>,
    isr: AtomicU8,
}

impl VectorRoutes {
    pub fn new(msix: Arc<Mutex<MsixTable>>, queues: usize) -> Self {
        Self {
            msix,
            config: AtomicU16::new(NO_VECTOR),
            queues: (0..queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
        }
    }

    fn vector_count(&self) -> u16 {
        self.table().vector_count()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, MsixTable> {
        self.msix.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the driver may store: an existing vector or NO_VECTOR; any
    /// other value reads back as NO_VECTOR, which tells the driver the
    /// mapping failed (§4.1.5.1.2).
    fn checked(&self, vector: u16) -> u16 {
        if vector < self.vector_count() {
            vector
        } else {
            NO_VECTOR
        }
    }

    /// `config_msix_vector`.
    pub fn config_vector(&self) -> u16 {
        self.config.load(Ordering::Acquire)
    }

    /// A driver write of `config_msix_vector`.
    pub fn set_config_vector(&self, vector: u16) {
        self.config.store(self.checked(vector), Ordering::Release);
    }

    /// `queue_msix_vector` of queue `queue` (NO_VECTOR for no such queue).
    pub fn queue_vector(&self, queue: usize) -> u16 {
        self.queues
            .get(queue)
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    /// A driver write of `queue_msix_vector`; `false` for no such queue.
    pub fn set_queue_vector(&self, queue: usize, vector: u16) -> bool {
        let checked = self.checked(vector);
        match self.queues.get(queue) {
            Some(slot) => {
                slot.store(checked, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// A driver read of the ISR status: returns it and clears it.
    pub fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    /// Raises `vector` through MSI-X if the driver enabled it.
    fn send(&self, vector: u16) -> bool {
        let mut table = self.table();
        if vector == NO_VECTOR || !table.enabled() {
            return false;
        }
        table.trigger(vector);
        true
    }
}

impl InterruptSink for VectorRoutes {
    fn raise(&self, cause: InterruptCause) -> io::Result<bool> {
        Ok(match cause {
            InterruptCause::Used(queue) => {
                let vector = self.queue_vector(queue);
                let mut table = self.table();
                if !table.enabled() {
                    self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
                    false
                } else if vector == NO_VECTOR {
                    false
                } else {
                    table.trigger(vector);
                    true
                }
            }
            InterruptCause::Config => {
                self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
                self.send(self.config_vector())
            }
        })
    }

    fn reset(&self) {
        self.config.store(NO_VECTOR, Ordering::Release);
        for queue in &self.queues {
            queue.store(NO_VECTOR, Ordering::Release);
        }
        self.isr.store(0, Ordering::Release);
    }
}
