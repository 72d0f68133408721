//! A guest driver that works a virtio-PCI device through its
//! configuration space and BAR 0 only (as Linux's virtio_pci_modern does),
//! and the device it drives: fresh guest memory and recording MSI-X
//! outlets.

use std::sync::Arc;

use sie_pci::PciDevice;
use sie_pci::testing::RecordingMsi;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};

use super::ring::{Ring, VIRTIO_RING_F_EVENT_IDX, memory};
use crate::pci::{MSIX_TABLE_OFFSET, NOTIFY_MULTIPLIER, NOTIFY_OFFSET, VirtioPciDevice, common};
use crate::{GuestMemory, VirtioDevice};

/// The x86 MSI address the driver programs in every vector.
pub const MSI_ADDRESS: u64 = 0xfee0_0000;

/// A virtio-PCI device for `device` on fresh [`memory`] with recording
/// MSI-X outlets.
pub fn pci_transport<D: VirtioDevice>(
    device: D,
) -> (VirtioPciDevice<D>, GuestMemory, Arc<RecordingMsi>) {
    let mem = memory();
    let msi = Arc::new(RecordingMsi::new(VirtioPciDevice::vectors_needed(&device)));
    let transport = VirtioPciDevice::new(device, mem.clone(), msi.clone()).expect("transport");
    (transport, mem, msi)
}

/// A driver talking to a virtio-PCI device through configuration space
/// and BAR 0.
pub struct PciDriver<'a, D: VirtioDevice> {
    /// The device driven.
    pub device: &'a VirtioPciDevice<D>,
}

impl<'a, D: VirtioDevice> PciDriver<'a, D> {
    /// A driver for `device`.
    pub fn new(device: &'a VirtioPciDevice<D>) -> Self {
        Self { device }
    }

    /// A `width`-byte read at `offset` of BAR 0.
    pub fn read_bar(&self, offset: u64, width: usize) -> u64 {
        let mut data = [0u8; 8];
        self.device.read_bar(0, offset, &mut data[..width]);
        u64::from_le_bytes(data)
    }

    /// A `width`-byte write of `value` at `offset` of BAR 0.
    pub fn write_bar(&self, offset: u64, width: usize, value: u64) {
        self.device
            .write_bar(0, offset, &value.to_le_bytes()[..width]);
    }

    /// A `width`-byte configuration-space read.
    pub fn read_config(&self, offset: u16, width: usize) -> u32 {
        let mut data = [0u8; 4];
        self.device.read_config(offset, &mut data[..width]);
        u32::from_le_bytes(data)
    }

    /// A `width`-byte configuration-space write.
    pub fn write_config(&self, offset: u16, width: usize, value: u32) {
        self.device
            .write_config(offset, &value.to_le_bytes()[..width]);
    }

    /// Walks the capability list: the offsets of capabilities with `id`.
    pub fn capabilities(&self, id: u8) -> Vec<u16> {
        let mut found = Vec::new();
        let mut at = self.read_config(0x34, 1) as u16;
        // A list longer than the space could hold is a loop.
        for _ in 0..64 {
            if at == 0 {
                break;
            }
            if self.read_config(at, 1) as u8 == id {
                found.push(at);
            }
            at = self.read_config(at + 1, 1) as u16;
        }
        found
    }

    /// The device status.
    pub fn status(&self) -> u32 {
        self.read_bar(common::DEVICE_STATUS, 1) as u32
    }

    /// Adds `bit` to the status the way Linux does (read, or, write).
    pub fn add_status(&self, bit: u32) {
        let status = self.status();
        self.write_bar(common::DEVICE_STATUS, 1, u64::from(status | bit));
    }

    /// All 64 offered feature bits.
    pub fn device_features(&self) -> u64 {
        self.write_bar(common::DEVICE_FEATURE_SELECT, 4, 0);
        let low = self.read_bar(common::DEVICE_FEATURE, 4);
        self.write_bar(common::DEVICE_FEATURE_SELECT, 4, 1);
        let high = self.read_bar(common::DEVICE_FEATURE, 4);
        high << 32 | low
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns
    /// whether the device kept FEATURES_OK.
    pub fn negotiate(&self, features: u64) -> bool {
        self.write_bar(common::DEVICE_STATUS, 1, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write_bar(common::DRIVER_FEATURE_SELECT, 4, 0);
        self.write_bar(common::DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.write_bar(common::DRIVER_FEATURE_SELECT, 4, 1);
        self.write_bar(common::DRIVER_FEATURE, 4, features >> 32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Enables MSI-X (function unmasked) in the capability.
    pub fn enable_msix(&self) {
        let cap = self.capabilities(sie_pci::MSIX_CAPABILITY_ID)[0];
        self.write_config(cap + 2, 2, 1 << 15);
    }

    /// Programs MSI-X vector `vector` (message data `0x20 + vector`) and
    /// unmasks it.
    pub fn program_vector(&self, vector: u16) {
        let entry = MSIX_TABLE_OFFSET + u64::from(vector) * 16;
        self.write_bar(entry, 4, MSI_ADDRESS);
        self.write_bar(entry + 4, 4, 0);
        self.write_bar(entry + 8, 4, 0x20 + u64::from(vector));
        self.write_bar(entry + 12, 4, 0);
    }

    /// Programs queue `index` with `ring`, vector `vector`, and enables it.
    pub fn setup_queue(&self, index: u16, ring: &Ring, vector: u16) {
        self.write_bar(common::QUEUE_SELECT, 2, u64::from(index));
        self.write_bar(common::QUEUE_SIZE, 2, u64::from(ring.size));
        self.write_bar(common::QUEUE_MSIX_VECTOR, 2, u64::from(vector));
        for (field, addr) in [
            (common::QUEUE_DESC, ring.desc),
            (common::QUEUE_DRIVER, ring.avail),
            (common::QUEUE_DEVICE, ring.used),
        ] {
            self.write_bar(field, 4, addr & 0xffff_ffff);
            self.write_bar(field + 4, 4, addr >> 32);
        }
        self.write_bar(common::QUEUE_ENABLE, 2, 1);
    }

    /// The whole bring-up as Linux does it: MSI-X on, one vector per queue
    /// (queue n gets vector n) and the last for configuration, every
    /// offered feature but EVENT_IDX, `rings` as queues 0.., DRIVER_OK.
    pub fn start(&self, rings: &[Ring]) {
        let features = self.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        assert!(self.try_start(features, rings), "features refused");
    }

    /// The bring-up accepting `features` whatever the device answers (the
    /// queues and DRIVER_OK follow even if FEATURES_OK was refused, as a
    /// careless driver would). Returns whether FEATURES_OK was kept.
    pub fn try_start(&self, features: u64, rings: &[Ring]) -> bool {
        self.enable_msix();
        let accepted = self.negotiate(features);
        let config_vector = rings.len() as u16;
        for vector in 0..=config_vector {
            self.program_vector(vector);
        }
        self.write_bar(common::CONFIG_MSIX_VECTOR, 2, u64::from(config_vector));
        for (index, ring) in rings.iter().enumerate() {
            self.setup_queue(index as u16, ring, index as u16);
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        accepted
    }

    /// Writes queue `index`'s notification through the BAR (with no
    /// ioeventfd the device signals the queue's eventfd; nothing is served
    /// until [`crate::VirtioCore::queue_event`]).
    pub fn kick(&self, index: u16) {
        let offset = NOTIFY_OFFSET + u64::from(index) * u64::from(NOTIFY_MULTIPLIER);
        self.write_bar(offset, 2, u64::from(index));
    }

    /// Kicks queue `index` and runs the worker's step for it.
    pub fn notify(&self, index: u16) {
        self.kick(index);
        self.device.queue_event(usize::from(index));
    }
}
