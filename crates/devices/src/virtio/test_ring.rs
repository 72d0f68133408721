//! Test helpers: split virtqueues built by hand in real guest memory, and a
//! minimal driver that brings a transport up through its registers. Shared
//! by every virtio device's tests (blk, rng, later net and vsock).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
pub use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

use super::{GuestMemory, VirtioDevice, VirtioMmioTransport};
use crate::{BusDevice, Interrupt};

/// Guest RAM size used by the tests.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where tests put data buffers (well clear of the rings).
pub const DATA: u64 = 0x4_0000;

/// 1 MiB of zeroed guest memory at address 0.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// An interrupt line that counts how often it was raised.
#[derive(Default)]
pub struct CountingIrq(pub AtomicU64);

impl CountingIrq {
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

/// A split virtqueue laid out at `base`: descriptor table, available ring,
/// used ring, each properly aligned.
#[derive(Clone, Copy)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    pub fn new(base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        Self {
            size,
            desc,
            avail,
            used,
        }
    }

    /// Writes descriptor `index` (indices past the table are allowed: the
    /// memory is just there).
    pub fn set_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u32,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(index));
        mem.write_obj(addr, at).expect("desc addr");
        mem.write_obj(len, GuestAddress(at.0 + 8))
            .expect("desc len");
        mem.write_obj(flags as u16, GuestAddress(at.0 + 12))
            .expect("desc flags");
        mem.write_obj(next, GuestAddress(at.0 + 14))
            .expect("desc next");
    }

    /// Writes a chain of buffers `(addr, len, writable)` into descriptors
    /// `first..`, linked in order.
    pub fn set_chain(&self, mem: &GuestMemory, first: u16, buffers: &[(u64, u32, bool)]) {
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = first + i as u16;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(mem, index, addr, len, flags, index + 1);
        }
    }

    pub fn avail_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.avail + 2))
            .expect("avail idx")
    }

    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        mem.write_obj(idx, GuestAddress(self.avail + 2))
            .expect("avail idx");
    }

    /// Offers the chains starting at `heads`.
    pub fn publish(&self, mem: &GuestMemory, heads: &[u16]) {
        let mut idx = self.avail_idx(mem);
        for &head in heads {
            let slot = u64::from(idx % self.size);
            mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
                .expect("avail ring");
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(mem, idx);
    }

    /// `used_event` (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&self, mem: &GuestMemory, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        mem.write_obj(idx, GuestAddress(at)).expect("used_event");
    }

    /// `avail_event` (EVENT_IDX) as published by the device.
    pub fn avail_event(&self, mem: &GuestMemory) -> u16 {
        let at = self.used + 4 + 8 * u64::from(self.size);
        mem.read_obj(GuestAddress(at)).expect("avail_event")
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY).
    pub fn used_flags(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used)).expect("used flags")
    }

    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).expect("used idx")
    }

    /// Used element `slot`: (head id, length written).
    pub fn used(&self, mem: &GuestMemory, slot: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(slot % self.size);
        (
            mem.read_obj(GuestAddress(at)).expect("used id"),
            mem.read_obj(GuestAddress(at + 4)).expect("used len"),
        )
    }
}

/// A driver talking to a transport through its registers only.
pub struct Driver<'a, D: VirtioDevice> {
    pub transport: &'a VirtioMmioTransport<D>,
}

impl<'a, D: VirtioDevice> Driver<'a, D> {
    pub fn new(transport: &'a VirtioMmioTransport<D>) -> Self {
        Self { transport }
    }

    pub fn read(&self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.transport.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write(&self, offset: u32, value: u32) {
        self.transport
            .write(u64::from(offset), &value.to_le_bytes());
    }

    pub fn status(&self) -> u32 {
        self.read(VIRTIO_MMIO_STATUS)
    }

    /// Adds `bit` to Status the way Linux does (read, or, write).
    pub fn add_status(&self, bit: u32) {
        let s = self.status();
        self.write(VIRTIO_MMIO_STATUS, s | bit);
    }

    pub fn device_features(&self) -> u64 {
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
        let low = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        self.write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
        let high = self.read(VIRTIO_MMIO_DEVICE_FEATURES);
        u64::from(high) << 32 | u64::from(low)
    }

    /// ACKNOWLEDGE, DRIVER, accept `features`, FEATURES_OK; returns whether
    /// the device kept FEATURES_OK.
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

    /// Bring-up accepting exactly `features`.
    pub fn start_with(&self, features: u64, rings: &[Ring]) {
        assert!(self.negotiate(features));
        for (index, ring) in rings.iter().enumerate() {
            self.setup_queue(index as u32, ring);
        }
        self.add_status(VIRTIO_CONFIG_S_DRIVER_OK);
    }

    /// Kicks queue `index` through QueueNotify and runs the worker's step.
    pub fn notify(&self, index: u32) {
        self.write(VIRTIO_MMIO_QUEUE_NOTIFY, index);
        self.transport.queue_event(index as usize);
    }

    /// Reads InterruptStatus and acknowledges it.
    pub fn take_interrupt(&self) -> u32 {
        let status = self.read(VIRTIO_MMIO_INTERRUPT_STATUS);
        self.write(VIRTIO_MMIO_INTERRUPT_ACK, status);
        status
    }
}

/// A transport for `device` on fresh memory with a counting interrupt.
pub fn transport<D: VirtioDevice>(
    device: D,
) -> (VirtioMmioTransport<D>, GuestMemory, Arc<CountingIrq>) {
    let mem = memory();
    let irq = Arc::new(CountingIrq::default());
    let transport = VirtioMmioTransport::new(device, mem.clone(), irq.clone()).expect("transport");
    (transport, mem, irq)
}
