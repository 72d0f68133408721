//! Hotpluggable memory (virtio-mem): the region past RAM that
//! `memory-hotplug` asks for, placed by the device manager in the
//! device-memory window (128 MiB aligned: Linux adds hotplugged memory in
//! 128 MiB memory blocks on x86), backed by anonymous memory in KVM slots
//! of `slot_size_mib` from the start, and the device the guest plugs its
//! blocks through.
//!
//! Memory the guest unplugs is given back to the host with
//! `madvise(MADV_DONTNEED)`, so the VMM's RSS falls; a plugged block costs
//! nothing until the guest touches it (`MAP_NORESERVE`).

use std::sync::Arc;

use sie_config::MemoryHotplug;
use sie_virtio::VirtioCore;
use sie_virtio::mem::{Discard, Mem};
use vm_memory::MmapRegion;

use sie_hv::Vm;

use crate::device_manager::DeviceManager;
use crate::error::{Result, VmmError};

const MIB: u64 = 1 << 20;
/// Linux's memory block size on x86 (with less than 64 GiB of RAM): where
/// the region starts.
const REGION_ALIGN: u64 = 128 * MIB;

/// The placed device, for `PATCH` and `GET /hotplug/memory`.
pub struct Hotplug {
    /// The device behind its transport.
    pub transport: Arc<VirtioCore<Mem>>,
    /// The configuration it was built from.
    pub config: MemoryHotplug,
}

impl Hotplug {
    /// Asks the guest to have `mib` MiB plugged: the device's requested
    /// size, then a configuration-change interrupt.
    pub fn request(&self, mib: u64) -> std::result::Result<(), String> {
        let bytes = mib.checked_mul(MIB).ok_or("requested size overflows")?;
        self.transport
            .with_device(|mem| mem.set_requested_size(bytes))?;
        self.transport.config_changed();
        Ok(())
    }

    /// `GET /hotplug/memory`: Firecracker's `MemoryHotplugStatus`.
    pub fn status(&self) -> serde_json::Value {
        let (plugged, requested) = self
            .transport
            .with_device(|mem| (mem.plugged_size(), mem.requested_size()));
        serde_json::json!({
            "total_size_mib": self.config.total_size_mib,
            "slot_size_mib": self.config.slot_size_mib,
            "block_size_mib": self.config.block_size_mib,
            "plugged_size_mib": plugged / MIB,
            "requested_size_mib": requested / MIB,
        })
    }
}

/// `MADV_DONTNEED` on `len` bytes at `offset` into the slots (each
/// `slot_len` long) that back the region.
fn discard(slots: &[Arc<MmapRegion>], slot_len: u64, offset: u64, len: u64) -> std::io::Result<()> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let index = usize::try_from(at / slot_len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let slot = slots.get(index).ok_or(std::io::ErrorKind::InvalidInput)?;
        let within = at % slot_len;
        let piece = (slot_len - within).min(end - at);
        let (start, count) = (
            usize::try_from(within).map_err(|_| std::io::ErrorKind::InvalidInput)?,
            usize::try_from(piece).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        );
        // SAFETY: `start + count <= slot_len`, the size of the mapping
        // `slot` owns; MADV_DONTNEED on private anonymous memory only drops
        // its pages (they read as zero again), which the guest gave up.
        let done =
            unsafe { libc::madvise(slot.as_ptr().add(start).cast(), count, libc::MADV_DONTNEED) };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        at += piece;
    }
    Ok(())
}

/// The device's name in errors.
pub(crate) const NAME: &str = "hotpluggable memory (virtio-mem)";

/// Places and backs the hotpluggable region `config` asks for (RAM ends
/// at `ram_end`): the device, for the virtio wiring to add.
pub(crate) fn place(
    config: &MemoryHotplug,
    vm: &dyn Vm,
    ram_end: u64,
    manager: &mut DeviceManager<'_>,
) -> Result<Mem> {
    let name = NAME;
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
        name: name.to_string(),
        source,
    };
    let total = config.total_size_mib.saturating_mul(MIB);
    let slot_len = config.slot_size_mib.saturating_mul(MIB);
    let block = config.block_size_mib.saturating_mul(MIB);
    let addr = manager.allocate_device_memory(name, ram_end, total, REGION_ALIGN.max(slot_len))?;
    let mut slots = Vec::new();
    for index in 0..total / slot_len {
        let len = usize::try_from(slot_len).map_err(|e| fail(e.into()))?;
        let region = Arc::new(
            MmapRegion::build(
                None,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
            .map_err(|e| fail(e.into()))?,
        );
        vm.map_device_memory(addr + index * slot_len, region.clone())
            .map_err(|e| fail(e.into()))?;
        slots.push(region);
    }
    let give_back: Discard = Box::new(move |offset, len| discard(&slots, slot_len, offset, len));
    Ok(Mem::new(addr, total, block, give_back))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous(len: usize) -> Arc<MmapRegion> {
        Arc::new(
            MmapRegion::build(
                None,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
            .unwrap(),
        )
    }

    #[test]
    fn discarded_blocks_read_as_zero_across_slots() {
        let slots = [anonymous(2 * 4096), anonymous(2 * 4096)];
        for slot in &slots {
            // SAFETY: each mapping holds 2 pages, writable.
            unsafe { std::ptr::write_bytes(slot.as_ptr(), 0xaa, 2 * 4096) };
        }
        // The second page of slot 0 and the first of slot 1.
        discard(&slots, 2 * 4096, 4096, 2 * 4096).unwrap();
        // SAFETY: as above, read back.
        let byte = |slot: usize, at: usize| unsafe { *slots[slot].as_ptr().add(at) };
        assert_eq!(
            [byte(0, 0), byte(0, 4096), byte(1, 0), byte(1, 4096)],
            [0xaa, 0, 0, 0xaa]
        );
        assert!(discard(&slots, 2 * 4096, 3 * 4096, 2 * 4096).is_err());
    }
}
