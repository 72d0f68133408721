//! A guest driver that works a virtio-MMIO transport through its registers
//! only, and the transport it drives: fresh guest memory and an interrupt
//! line that counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sie_devices::{BusDevice, Interrupt};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;

use super::ring::{Ring, VIRTIO_RING_F_EVENT_IDX, memory};
use crate::{GuestMemory, VirtioDevice, VirtioMmioTransport};

/// An interrupt line that counts how often it was raised.
#[derive(Default)]
pub struct CountingIrq(pub AtomicU64);

impl CountingIrq {
    /// How often the line was raised.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A transport for `device` on fresh [`memory`] with a counting interrupt.
pub fn transport<D: VirtioDevice>(
    device: D,
) -> (VirtioMmioTransport<D>, GuestMemory, Arc<CountingIrq>) {
    let mem = memory();
    let irq = Arc::new(CountingIrq::default());
    let transport = VirtioMmioTransport::new(device, mem.clone(), irq.clone()).expect("transport");
    (transport, mem, irq)
}

/// A driver talking to a transport through its registers only.
pub struct Driver<'a, D: VirtioDevice> {
    /// The transport driven.
    pub transport: &'a VirtioMmioTransport<D>,
}

impl<'a, D: VirtioDevice> Driver<'a, D> {
    /// A driver for `transport`.
    pub fn new(transport: &'a VirtioMmioTransport<D>) -> Self {
        Self { transport }
    }

    /// A 32-bit register read at `offset` of the window.
    pub fn read(&self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    /// A 32-bit register write at `offset` of the window.
    pub fn write(&self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    /// The Status register.
    pub fn status(&self) -> u32 {
        self.read(VIRTIO_MMIO_STATUS)
    }

    /// Adds `bit` to Status the way Linux does (read, or, write).
    pub fn add_status(&self, bit: u32) {
        let s = self.status();
        self.write(VIRTIO_MMIO_STATUS, s | bit);
    }

    /// All 64 offered feature bits.
    pub fn device_features(&self) -> u64 {
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// Reset, ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns
    /// whether the device kept FEATURES_OK.
    pub fn negotiate(&self, features: u64) -> bool {
        self.write(VIRTIO_MMIO_STATUS, 0);
        self.add_status(VIRTIO_CONFIG_S_ACKNOWLEDGE);
        self.add_status(VIRTIO_CONFIG_S_DRIVER);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, features as u32);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
        self.write(VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32);
        self.add_status(VIRTIO_CONFIG_S_FEATURES_OK);
        self.status() & VIRTIO_CONFIG_S_FEATURES_OK != 0
    }

    /// Programs queue `index` with `ring` and marks it ready.
    pub fn setup_queue(&self, index: u32, ring: &Ring) {
        self.write(VIRTIO_MMIO_QUEUE_SEL, index);
        self.write(VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
        let pairs = [
            (
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                VIRTIO_MMIO_QUEUE_DESC_HIGH,
                ring.desc,
            ),
            (
                VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                ring.avail,
            ),
            (
                VIRTIO_MMIO_QUEUE_USED_LOW,
                VIRTIO_MMIO_QUEUE_USED_HIGH,
                ring.used,
            ),
        ];
        for (low, high, addr) in pairs {
            self.write(low, addr as u32);
            self.write(high, (addr >> 32) as u32);
        }
        self.write(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// The whole bring-up: every offered feature but EVENT_IDX (so every
    /// used buffer interrupts), `rings` as queues 0.., DRIVER_OK.
    pub fn start(&self, rings: &[Ring]) {
        self.start_with(
            self.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX),
            rings,
        );
    }

    /// Bring-up accepting exactly `features`, which the device must take.
    pub fn start_with(&self, features: u64, rings: &[Ring]) {
        assert!(self.try_start(features, rings), "features refused");
    }

    /// Bring-up accepting `features` whatever the device answers: `rings`
    /// as queues 0.. and DRIVER_OK follow even if FEATURES_OK was refused,
    /// as a careless driver would. Returns whether FEATURES_OK was kept.
    pub fn try_start(&self, features: u64, rings: &[Ring]) -> bool {
        let accepted = self.negotiate(features);
        for (index, ring) in rings.iter().enumerate() {
            self.setup_queue(index as u32, ring);
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
        accepted
    }

    /// Writes QueueNotify for queue `index` (only the register: with no
    /// ioeventfd the transport signals the queue's eventfd, and nothing is
    /// served until [`VirtioMmioTransport::queue_event`]).
    pub fn kick(&self, index: u32) {
        self.write(VIRTIO_MMIO_QUEUE_NOTIFY, index);
    }

    /// Kicks queue `index` and runs the worker's step for it.
    pub fn notify(&self, index: u32) {
        self.kick(index);
        self.transport.queue_event(index as usize);
    }

    /// Reads InterruptStatus and acknowledges it.
    pub fn take_interrupt(&self) -> u32 {
        let status = self.read(VIRTIO_MMIO_INTERRUPT_STATUS);
        self.write(VIRTIO_MMIO_INTERRUPT_ACK, status);
        status
    }
}
