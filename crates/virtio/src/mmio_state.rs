//! A virtio-MMIO transport's state as a snapshot keeps it: the registers
//! the driver set and each queue's rings, so a restored transport is one the
//! guest's driver goes on using without knowing.
//!
//! Queue positions are not saved: every device here finishes (puts on the
//! used ring) each chain it takes before it yields (block I/O is synchronous,
//! a throttled request is put back, a frame without a buffer waits in the
//! VMM, not in a chain; the balloon gives its held stats buffer back when
//! quiesced), so at a pause the next chain to take and the next used slot
//! are both the used ring's `idx`, which guest memory (restored with the
//! VM) holds. What a device keeps beside its rings (the balloon's target)
//! travels as its [`crate::DeviceState`].

use serde::{Deserialize, Serialize};
use virtio_queue::QueueState;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// One queue's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedQueue {
    /// What the device offered.
    pub max_size: u16,
    /// What the driver chose.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// Descriptor table.
    pub desc_table: u64,
    /// Driver (available) ring.
    pub avail_ring: u64,
    /// Device (used) ring.
    pub used_ring: u64,
}

/// The transport's registers and queues.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    /// DeviceID, checked on restore.
    pub device_type: u32,
    /// Status.
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver acknowledged.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// Every queue, in index order.
    pub queues: Vec<SavedQueue>,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// The device's own state beside its rings (the balloon's); absent
    /// for most devices, and in snapshots from before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<crate::device_state::DeviceState>,
}

/// A transport whose state can be saved and restored, whatever its device
/// (so the VMM keeps every device in one list).
pub trait TransportSnapshot: Send + Sync {
    /// Finishes the device's work in flight into its used rings (the VM
    /// paused), so the saved queues and guest memory agree; call before
    /// saving anything else of the VM.
    fn quiesce(&self);
    /// The registers and queues (the VM paused).
    fn save(&self) -> TransportState;
    /// Puts them back (guest memory restored, vCPUs not yet running).
    fn load(&self, saved: &TransportState) -> Result<(), TransportStateError>;
}

/// Why a saved transport state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransportStateError {
    /// The state is of another kind of device.
    #[error("saved state is of virtio device type {saved}, this device is {device}")]
    DeviceType {
        /// In the snapshot.
        saved: u32,
        /// Here.
        device: u32,
    },
    /// The queues do not match the device's.
    #[error("saved queues do not match the device's ({0})")]
    Queues(String),
    /// The device refused its own saved state.
    #[error("saved device state: {0}")]
    Device(String),
}

impl SavedQueue {
    /// A queue's configuration, as the transport holds it.
    pub fn of(queue: &virtio_queue::Queue) -> Self {
        let state = queue.state();
        Self {
            max_size: state.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
        }
    }

    /// The queue again, its positions at the used ring's `idx` in `mem`
    /// (see the module's header), checked by virtio-queue.
    pub fn rebuild(
        &self,
        index: usize,
        mem: &GuestMemory,
        event_idx: bool,
    ) -> Result<virtio_queue::Queue, TransportStateError> {
        let position = if self.ready {
            mem.read_obj::<u16>(GuestAddress(self.used_ring.wrapping_add(2)))
                .map_err(|_| {
                    TransportStateError::Queues(format!(
                        "queue {index}'s used ring is outside guest memory"
                    ))
                })?
        } else {
            0
        };
        let state = QueueState {
            max_size: self.max_size,
            next_avail: position,
            next_used: position,
            event_idx_enabled: event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        virtio_queue::Queue::try_from(state)
            .map_err(|e| TransportStateError::Queues(format!("queue {index}: {e}")))
    }
}
