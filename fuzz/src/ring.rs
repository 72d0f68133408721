//! A hand-rolled split virtqueue in real guest memory and a minimal driver
//! that brings a virtio-MMIO transport up through its registers: what the
//! device targets use to get past the transport and into request parsing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sie_devices::virtio::{GuestMemory, VirtioDevice, VirtioMmioTransport};
use sie_devices::{BusDevice, Interrupt};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
pub use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: 1 MiB at address 0.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where the rings go by default.
pub const RING_BASE: u64 = 0x1000;
/// Where data buffers go by default (clear of rings up to 32768 entries).
pub const DATA: u64 = 0x8_0000;

/// Fresh, zeroed guest memory.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("1 MiB of guest memory")
}

/// An interrupt line that only counts.
#[derive(Default)]
pub struct CountingIrq(AtomicU64);

impl CountingIrq {
    /// How often the line was raised.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Interrupt for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// A transport over `device` in fresh memory, with a counting interrupt.
pub fn transport<D: VirtioDevice>(
    device: D,
) -> (VirtioMmioTransport<D>, GuestMemory, Arc<CountingIrq>) {
    let mem = memory();
    let irq = Arc::new(CountingIrq::default());
    let line: Arc<dyn Interrupt> = irq.clone();
    let t = VirtioMmioTransport::new(device, mem.clone(), line).expect("transport");
    (t, mem, irq)
}

/// A split virtqueue's three areas. Writes ignore errors: the fuzzer may put
/// a ring where memory ends, and that is for the device to cope with.
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
}

impl Ring {
    /// The three areas back to back from `base`, each properly aligned.
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

    /// Writes descriptor `index`.
    pub fn set_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(index);
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    /// Writes `buffers` (addr, len, writable) as a chain in descriptors
    /// `first..`, linked in order (wrapping at the table's end).
    pub fn set_chain(&self, mem: &GuestMemory, first: u16, buffers: &[(u64, u32, bool)]) {
        let size = self.size.max(1);
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = ((u32::from(first) + i as u32) % u32::from(size)) as u16;
            let next = ((u32::from(index) + 1) % u32::from(size)) as u16;
            let mut flags = if writable {
                VRING_DESC_F_WRITE as u16
            } else {
                0
            };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(mem, index, addr, len, flags, next);
        }
    }

    fn read_u16(mem: &GuestMemory, at: u64) -> u16 {
        mem.read_obj(GuestAddress(at)).unwrap_or(0)
    }

    /// The driver's available index.
    pub fn avail_idx(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.avail + 2)
    }

    /// Sets the driver's available index.
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        let _ = mem.write_obj(idx, GuestAddress(self.avail + 2));
    }

    /// Sets the available ring's flags.
    pub fn set_avail_flags(&self, mem: &GuestMemory, flags: u16) {
        let _ = mem.write_obj(flags, GuestAddress(self.avail));
    }

    /// Sets `used_event` (the slot after the available ring).
    pub fn set_used_event(&self, mem: &GuestMemory, idx: u16) {
        let at = self.avail + 4 + 2 * u64::from(self.size);
        let _ = mem.write_obj(idx, GuestAddress(at));
    }

    /// Writes `head` in available slot `slot` (modulo the size).
    pub fn set_avail_slot(&self, mem: &GuestMemory, slot: u16, head: u16) {
        let at = self.avail + 4 + 2 * u64::from(slot % self.size.max(1));
        let _ = mem.write_obj(head, GuestAddress(at));
    }

    /// Offers chains starting at `heads`.
    pub fn publish(&self, mem: &GuestMemory, heads: &[u16]) {
        let mut idx = self.avail_idx(mem);
        for &head in heads {
            self.set_avail_slot(mem, idx, head);
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(mem, idx);
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.used + 2)
    }

    /// Used element `slot` (modulo the size): (id, len).
    pub fn used(&self, mem: &GuestMemory, slot: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(slot % self.size.max(1));
        let id = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        (id, len)
    }
}

/// Register-level access to a transport, as a guest driver does it.
pub struct Driver<'a> {
    pub bus: &'a dyn BusDevice,
}

impl<'a> Driver<'a> {
    pub fn new(bus: &'a dyn BusDevice) -> Self {
        Self { bus }
    }

    pub fn read(&self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.bus.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    pub fn write(&self, offset: u32, value: u32) {
        self.bus.write(u64::from(offset), &value.to_le_bytes());
    }

    /// Configures queue `index` on `ring` and marks it ready.
    pub fn set_queue(&self, index: u32, ring: &Ring) {
        let split = |a: u64| (a as u32, (a >> 32) as u32);
        self.write(VIRTIO_MMIO_QUEUE_SEL, index);
        self.write(VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
        for (lo, hi, addr) in [
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
        ] {
            let (l, h) = split(addr);
            self.write(lo, l);
            self.write(hi, h);
        }
        self.write(VIRTIO_MMIO_QUEUE_READY, 1);
    }

    /// The full bring-up: status handshake, `features` (VERSION_1 is always
    /// added) acknowledged, `rings[i]` as queue i, DRIVER_OK.
    pub fn start(&self, features: u64, rings: &[Ring]) {
        let features = features | 1 << VIRTIO_F_VERSION_1;
        self.write(VIRTIO_MMIO_STATUS, 0);
        let mut status = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        self.write(VIRTIO_MMIO_STATUS, status);
        status |= VIRTIO_CONFIG_S_DRIVER;
        self.write(VIRTIO_MMIO_STATUS, status);
        for sel in 0..2u32 {
            self.write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            self.write(VIRTIO_MMIO_DRIVER_FEATURES, (features >> (32 * sel)) as u32);
        }
        status |= VIRTIO_CONFIG_S_FEATURES_OK;
        self.write(VIRTIO_MMIO_STATUS, status);
        for (i, ring) in rings.iter().enumerate() {
            self.set_queue(i as u32, ring);
        }
        status |= VIRTIO_CONFIG_S_DRIVER_OK;
        self.write(VIRTIO_MMIO_STATUS, status);
    }

    /// Rings queue `index`'s doorbell through the register (the path taken
    /// without an ioeventfd).
    pub fn kick(&self, index: u32) {
        self.write(VIRTIO_MMIO_QUEUE_NOTIFY, index);
    }

    /// Reads and acknowledges InterruptStatus.
    pub fn take_interrupt(&self) -> u32 {
        let status = self.read(VIRTIO_MMIO_INTERRUPT_STATUS);
        self.write(VIRTIO_MMIO_INTERRUPT_ACK, status);
        status
    }
}
