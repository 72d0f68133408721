//! The virtio-MMIO transport, version 2 (virtio 1.x §4.2.2).
//!
//! One 4 KiB-ish register window per device, decoded here into calls on
//! the transport-neutral [`VirtioCore`] (status machine, features, queues,
//! activation), whose one mutex holds the mutable state. InterruptStatus
//! is an atomic shared with the interrupt sink so raising an interrupt
//! never needs that mutex, and the registers a guest's interrupt handler
//! and doorbell touch (InterruptStatus, InterruptAck, QueueNotify) never
//! wait for the event thread. The snapshot of a transport's registers
//! (`mmio_state`) is MMIO-only.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::QueueT;

use crate::device::VirtioDevice;
use crate::interrupt::LineInterrupt;
use crate::memory::GuestMemory;
use crate::mmio_state::{SavedQueue, TransportSnapshot, TransportState, TransportStateError};
use crate::transport_core::{
    QueueField, TransportError, VirtioCore, device_features_word, live, write_driver_features,
    write_queue,
};
use crate::worker::VirtioTransport;
use sie_devices::{BusDevice, Interrupt};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (virtio 1.x, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// The vendor ID reported to the guest ("SIE\0"); informational only.
pub const MMIO_VENDOR_ID: u32 = 0x0045_4953;
/// Size of the register window to put on the MMIO bus.
pub const MMIO_WINDOW_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where the VMM registers its ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;

/// A virtio device behind the virtio-MMIO register window. Derefs to its
/// [`VirtioCore`] (status, queues, the event-thread entry points).
pub struct VirtioMmioTransport<D> {
    core: Arc<VirtioCore<D>>,
    interrupt_status: Arc<AtomicU32>,
}

impl<D> std::ops::Deref for VirtioMmioTransport<D> {
    type Target = VirtioCore<D>;

    fn deref(&self) -> &VirtioCore<D> {
        &self.core
    }
}

impl<D: VirtioDevice> VirtioTransport<D> for VirtioMmioTransport<D> {
    fn core(&self) -> &Arc<VirtioCore<D>> {
        &self.core
    }
}

impl<D: VirtioDevice> VirtioMmioTransport<D> {
    /// Wraps `device`, whose queues live in `mem` and whose interrupts go to
    /// `line` (an irqfd in sie). Creates one eventfd per queue: the VMM
    /// registers each as an ioeventfd at base + [`QUEUE_NOTIFY_OFFSET`]
    /// with datamatch = queue index.
    pub fn new(
        device: D,
        mem: GuestMemory,
        line: Arc<dyn Interrupt>,
    ) -> Result<Self, TransportError> {
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let sink = Arc::new(LineInterrupt {
            status: Arc::clone(&interrupt_status),
            line,
        });
        Ok(Self {
            core: Arc::new(VirtioCore::new(device, mem, sink)?),
            interrupt_status,
        })
    }

    /// The registers and queues, for a snapshot (the VM paused).
    pub fn state(&self) -> TransportState {
        let state = self.lock();
        TransportState {
            device_type: state.device.device_type(),
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            queue_sel: state.queue_sel,
            queues: state.queues.iter().map(SavedQueue::of).collect(),
            config_generation: state.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            device: state.device.save_state(),
        }
    }

    /// Puts saved registers and queues back (guest memory already restored,
    /// the vCPUs not yet running) and, for a device the driver had started,
    /// activates it as DRIVER_OK would. A state that does not fit this
    /// device is refused and the transport left as it was; one whose queues
    /// the device then refuses leaves it NEEDS_RESET, which the driver
    /// handles.
    pub fn restore(&self, saved: &TransportState) -> Result<(), TransportStateError> {
        let mut state = self.lock();
        let device = state.device.device_type();
        if saved.device_type != device {
            return Err(TransportStateError::DeviceType {
                saved: saved.device_type,
                device,
            });
        }
        let offered = state.device.queue_max_sizes();
        let shapes_match = saved.queues.len() == offered.len()
            && saved
                .queues
                .iter()
                .zip(offered)
                .all(|(queue, &max)| queue.max_size == max);
        if !shapes_match {
            return Err(TransportStateError::Queues(format!(
                "{} saved, {} offered",
                saved.queues.len(),
                offered.len()
            )));
        }
        let event_idx = saved.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = saved
            .queues
            .iter()
            .enumerate()
            .map(|(index, queue)| queue.rebuild(index, self.mem(), event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(device_state) = &saved.device {
            state
                .device
                .load_state(device_state)
                .map_err(TransportStateError::Device)?;
        }
        state.queues = queues;
        state.status = saved.status;
        state.device_features_sel = saved.device_features_sel;
        state.driver_features_sel = saved.driver_features_sel;
        state.driver_features = saved.driver_features;
        state.queue_sel = saved.queue_sel;
        state.config_generation = saved.config_generation;
        self.interrupt_status
            .store(saved.interrupt_status, Ordering::SeqCst);
        if live(saved.status) {
            self.activate(&mut state);
            if state.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
                && let Err(fault) = state.device.restored()
            {
                tracing::debug!(%fault, "virtio device could not announce its restore");
                self.needs_reset(&mut state);
            }
            // A kick the driver made just before the pause may have been
            // left in the old process's ioeventfd: the rings moved, that
            // notification did not. With EVENT_IDX the driver never kicks a
            // queue again until the device has consumed up to its
            // avail_event, so one lost kick stalls the queue for good. Every
            // ready queue is served once when the event thread starts; with
            // nothing new in its avail ring that costs nothing.
            let ready: Vec<usize> = (0..state.queues.len())
                .filter(|&index| state.queues[index].ready())
                .collect();
            drop(state);
            for index in ready {
                self.notify(index);
            }
        }
        Ok(())
    }

    fn read_register(&self, offset: u32) -> Option<u32> {
        // Lock-free first: the guest's interrupt handler reads
        // InterruptStatus while the event thread may hold the lock through
        // a long request (a drive finishing its requests before a snapshot).
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => return Some(MMIO_MAGIC),
            VIRTIO_MMIO_VERSION => return Some(MMIO_VERSION),
            VIRTIO_MMIO_VENDOR_ID => return Some(MMIO_VENDOR_ID),
            VIRTIO_MMIO_INTERRUPT_STATUS => {
                return Some(self.interrupt_status.load(Ordering::SeqCst));
            }
            _ => {}
        }
        let state = self.lock();
        let queue = state.selected_queue();
        Some(match offset {
            VIRTIO_MMIO_DEVICE_ID => state.device.device_type(),
            VIRTIO_MMIO_DEVICE_FEATURES => device_features_word(&state),
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_STATUS => state.status,
            VIRTIO_MMIO_CONFIG_GENERATION => state.config_generation,
            _ => return None,
        })
    }

    fn write_register(&self, offset: u32, value: u32) -> bool {
        if offset == VIRTIO_MMIO_QUEUE_NOTIFY {
            return self.notify(value as usize);
        }
        if offset == VIRTIO_MMIO_INTERRUPT_ACK {
            self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            return true;
        }
        let mut state = self.lock();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => state.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => state.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => return write_driver_features(&mut state, value),
            VIRTIO_MMIO_QUEUE_SEL => state.queue_sel = value,
            VIRTIO_MMIO_STATUS => self.write_status(&mut state, value),
            _ => {
                return queue_field(offset)
                    .is_some_and(|field| write_queue(&mut state, field, value));
            }
        }
        true
    }
}

impl<D: VirtioDevice> TransportSnapshot for VirtioMmioTransport<D> {
    fn quiesce(&self) {
        VirtioCore::quiesce(self);
    }

    fn save(&self) -> TransportState {
        self.state()
    }

    fn load(&self, saved: &TransportState) -> Result<(), TransportStateError> {
        self.restore(saved)
    }
}

/// The queue register at `offset`, if it is one.
fn queue_field(offset: u32) -> Option<QueueField> {
    Some(match offset {
        VIRTIO_MMIO_QUEUE_NUM => QueueField::Size,
        VIRTIO_MMIO_QUEUE_READY => QueueField::Ready,
        VIRTIO_MMIO_QUEUE_DESC_LOW => QueueField::DescLow,
        VIRTIO_MMIO_QUEUE_DESC_HIGH => QueueField::DescHigh,
        VIRTIO_MMIO_QUEUE_AVAIL_LOW => QueueField::AvailLow,
        VIRTIO_MMIO_QUEUE_AVAIL_HIGH => QueueField::AvailHigh,
        VIRTIO_MMIO_QUEUE_USED_LOW => QueueField::UsedLow,
        VIRTIO_MMIO_QUEUE_USED_HIGH => QueueField::UsedHigh,
        _ => return None,
    })
}

impl<D: VirtioDevice> BusDevice for VirtioMmioTransport<D> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let ok = if offset >= CONFIG_START {
            self.read_config(offset - CONFIG_START, data)
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            match self.read_register(offset as u32) {
                Some(value) => {
                    data.copy_from_slice(&value.to_le_bytes());
                    true
                }
                None => false,
            }
        } else {
            false
        };
        if !ok {
            data.fill(0);
            self.shared_counters().invalid_access();
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let ok = if offset >= CONFIG_START {
            self.write_config(offset - CONFIG_START, data)
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes))
        } else {
            false
        };
        if !ok {
            self.shared_counters().invalid_access();
        }
    }
}
