//! Split virtqueues built by hand in real guest memory, as a driver lays
//! them out.
//!
//! Writes ignore errors and reads of memory that is not there give 0: the
//! fuzz targets put rings wherever the input says, even where memory ends,
//! and what the device makes of that is what they test. Tests keep their
//! rings inside [`MEM_SIZE`] and check what they read back.

use vm_memory::{Bytes, GuestAddress};

pub use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

use crate::GuestMemory;

/// Guest RAM size used by [`memory`]: 1 MiB.
pub const MEM_SIZE: u64 = 1 << 20;
/// Where the unit tests put data buffers (clear of their rings, which sit
/// below it).
pub const DATA: u64 = 0x4_0000;

/// [`MEM_SIZE`] bytes of zeroed guest memory at address 0.
pub fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// A split virtqueue's three areas (guest addresses) and its size.
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    /// Entries in the queue.
    pub size: u16,
    /// Descriptor table: 16 bytes per entry.
    pub desc: u64,
    /// Available ring: flags, idx, `size` heads, `used_event`.
    pub avail: u64,
    /// Used ring: flags, idx, `size` (id, len) pairs, `avail_event`.
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

    /// Writes descriptor `index` (indices past the table are allowed: the
    /// memory is just there). `flags` are the `VRING_DESC_F_*` bits; the
    /// field holds their low 16.
    pub fn set_desc(
        &self,
        mem: &GuestMemory,
        index: u16,
        addr: u64,
        len: u32,
        flags: u32,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
        raw[14..].copy_from_slice(&next.to_le_bytes());
        let at = self.desc + 16 * u64::from(index);
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    /// Writes a chain of buffers `(addr, len, writable)` into descriptors
    /// `first..`, linked in order and wrapping at the table's end.
    pub fn set_chain(&self, mem: &GuestMemory, first: u16, buffers: &[(u64, u32, bool)]) {
        let size = u32::from(self.size.max(1));
        for (i, &(addr, len, writable)) in buffers.iter().enumerate() {
            let index = ((u32::from(first) + i as u32) % size) as u16;
            let next = ((u32::from(index) + 1) % size) as u16;
            let mut flags = if writable { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < buffers.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(mem, index, addr, len, flags, next);
        }
    }

    fn read_u16(mem: &GuestMemory, at: u64) -> u16 {
        mem.read_obj(GuestAddress(at)).unwrap_or(0)
    }

    fn write_u16(mem: &GuestMemory, at: u64, value: u16) {
        let _ = mem.write_obj(value, GuestAddress(at));
    }

    /// The driver's available index.
    pub fn avail_idx(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.avail + 2)
    }

    /// Sets the driver's available index.
    pub fn set_avail_idx(&self, mem: &GuestMemory, idx: u16) {
        Self::write_u16(mem, self.avail + 2, idx);
    }

    /// Sets the available ring's flags (VRING_AVAIL_F_NO_INTERRUPT).
    pub fn set_avail_flags(&self, mem: &GuestMemory, flags: u16) {
        Self::write_u16(mem, self.avail, flags);
    }

    /// Writes `head` in available slot `slot` (modulo the size).
    pub fn set_avail_slot(&self, mem: &GuestMemory, slot: u16, head: u16) {
        let at = self.avail + 4 + 2 * u64::from(slot % self.size.max(1));
        Self::write_u16(mem, at, head);
    }

    /// Offers the chains starting at `heads` (one index update).
    pub fn publish(&self, mem: &GuestMemory, heads: &[u16]) {
        let mut idx = self.avail_idx(mem);
        for &head in heads {
            self.set_avail_slot(mem, idx, head);
            idx = idx.wrapping_add(1);
        }
        self.set_avail_idx(mem, idx);
    }

    /// `used_event` (EVENT_IDX): interrupt once the used index passes it.
    pub fn set_used_event(&self, mem: &GuestMemory, idx: u16) {
        Self::write_u16(mem, self.avail + 4 + 2 * u64::from(self.size), idx);
    }

    /// `avail_event` (EVENT_IDX) as published by the device.
    pub fn avail_event(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.used + 4 + 8 * u64::from(self.size))
    }

    /// The used ring's flags (VRING_USED_F_NO_NOTIFY).
    pub fn used_flags(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.used)
    }

    /// The device's used index.
    pub fn used_idx(&self, mem: &GuestMemory) -> u16 {
        Self::read_u16(mem, self.used + 2)
    }

    /// Used element `slot` (modulo the size): (head id, length written).
    pub fn used(&self, mem: &GuestMemory, slot: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(slot % self.size.max(1));
        let id = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        (id, len)
    }
}
