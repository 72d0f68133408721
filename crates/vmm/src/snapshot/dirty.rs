//! The pages written since the last snapshot, and the Diff memory file
//! that holds only them.
//!
//! Two sources say what changed: KVM's dirty log (what the guest wrote; on
//! only with `track_dirty_pages`) and the page bitmap every write through
//! `vm_memory` marks (device DMA, the VMM's own writes). Taking the dirty
//! pages reads and clears both, before any memory is copied, so a write that
//! races with the copy is in the next Diff too. The pages the virtio queues'
//! rings live on are marked again afterwards: a device may write them (a
//! used ring entry) at any time, so every Diff carries them whole.

use std::io;
use std::path::Path;

use sie_hv::GuestMemory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::durable::Staged;

const PAGE: u64 = 4096;

/// One RAM region's written pages: bit `i` (word `i / 64`, bit `i % 64`) is
/// the page at `guest_addr + i * 4096`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionPages {
    /// Guest-physical start of the region.
    pub guest_addr: u64,
    /// Bytes in the region.
    pub len: u64,
    /// One bit per page.
    pub bits: Vec<u64>,
}

impl RegionPages {
    fn is_set(&self, page: u64) -> bool {
        let word = usize::try_from(page / 64).unwrap_or(usize::MAX);
        self.bits
            .get(word)
            .is_some_and(|bits| bits & (1 << (page % 64)) != 0)
    }

    /// How many pages are marked.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// Reads and clears what changed since the last call: the VMM's bitmaps,
/// and KVM's dirty log when `kvm_log` (tracking is on). One entry per RAM
/// region, the two sources merged.
pub fn take(
    memory: &GuestMemory,
    vm: &dyn sie_hv::Vm,
    kvm_log: bool,
) -> sie_hv::Result<Vec<RegionPages>> {
    // KVM's log first: if reading it fails, the VMM's bitmaps still hold
    // their pages.
    let kvm = if kvm_log {
        vm.take_dirty_log()?
    } else {
        Vec::new()
    };
    let mut regions: Vec<RegionPages> = memory
        .iter()
        .map(|region| RegionPages {
            guest_addr: region.start_addr().0,
            len: region.len(),
            bits: region.get_mmap().bitmap().get_and_reset(),
        })
        .collect();
    for log in kvm {
        let Some(region) = regions.iter_mut().find(|r| r.guest_addr == log.guest_addr) else {
            continue;
        };
        if region.bits.len() < log.pages.len() {
            region.bits.resize(log.pages.len(), 0);
        }
        for (word, written) in region.bits.iter_mut().zip(&log.pages) {
            *word |= written;
        }
    }
    Ok(regions)
}

/// Marks `len` bytes at `addr` written in the VMM's bitmap (nothing for
/// bytes outside RAM).
pub fn mark(memory: &GuestMemory, addr: u64, len: u64) {
    let Ok(len) = usize::try_from(len) else {
        return;
    };
    if let Some((region, offset)) = memory.to_region_addr(GuestAddress(addr)) {
        let Ok(offset) = usize::try_from(offset.0) else {
            return;
        };
        region.get_mmap().bitmap().set_addr_range(offset, len);
    }
}

/// Marks every page set in `pages` written again (after a snapshot that
/// took them failed).
pub fn mark_again(memory: &GuestMemory, pages: &[RegionPages]) {
    for region in pages {
        for page in (0..region.len.div_ceil(PAGE)).filter(|&p| region.is_set(p)) {
            mark(memory, region.guest_addr + page * PAGE, PAGE);
        }
    }
}

/// Marks the pages of every queue's rings (descriptor table, available and
/// used ring) of `transports` written.
pub fn mark_rings(memory: &GuestMemory, transports: &[sie_virtio::TransportState]) {
    for queue in transports.iter().flat_map(|t| &t.queues) {
        if !queue.ready {
            continue;
        }
        let size = u64::from(queue.size);
        mark(memory, queue.desc_table, 16 * size);
        mark(memory, queue.avail_ring, 6 + 2 * size);
        mark(memory, queue.used_ring, 6 + 8 * size);
    }
}

/// Writes a Diff memory file to `path` (crash-safely): the full size of
/// RAM, with the marked pages of `pages` at their guest-physical offsets
/// and holes everywhere else. A marked page is written even when it is all
/// zeros, since on a rebase it must replace what the base holds. Returns
/// the bytes written.
pub fn write_diff(
    memory: &GuestMemory,
    path: &Path,
    pages: &[RegionPages],
    pair_id: &str,
) -> io::Result<u64> {
    let (staged, written) = stage_diff(memory, path, pages, pair_id)?;
    staged.commit()?;
    Ok(written)
}

/// [`write_diff`] up to the rename: the file is complete and fsynced under
/// its temporary name, tagged with the snapshot's `pair_id`.
pub fn stage_diff(
    memory: &GuestMemory,
    path: &Path,
    pages: &[RegionPages],
    pair_id: &str,
) -> io::Result<(Staged, u64)> {
    super::memory_file::stage_pages(memory, path, pair_id, |_, base, page| {
        Ok(pages
            .iter()
            .find(|region| region.guest_addr == base)
            .is_some_and(|region| region.is_set(page)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::memory_file::data_extents;
    use crate::test_doubles::FakeVm;
    use vm_memory::Bytes;

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn pages_of(taken: &[RegionPages]) -> Vec<u64> {
        (0..256).filter(|&p| taken[0].is_set(p)).collect()
    }

    #[test]
    fn writes_through_vm_memory_are_taken_once() {
        let memory = memory();
        memory.write_obj(7u32, GuestAddress(0x5004)).unwrap();
        memory.write_slice(&[1; 10], GuestAddress(0x7ffc)).unwrap();
        let taken = take(&memory, &FakeVm::default(), false).unwrap();
        assert_eq!(
            pages_of(&taken),
            [5, 7, 8],
            "a write across pages marks both"
        );
        let again = take(&memory, &FakeVm::default(), false).unwrap();
        assert_eq!(again[0].count(), 0, "taking clears");
        mark_again(&memory, &taken);
        let back = take(&memory, &FakeVm::default(), false).unwrap();
        assert_eq!(pages_of(&back), [5, 7, 8]);
    }

    #[test]
    fn the_guests_writes_and_the_vmms_are_merged() {
        let memory = memory();
        memory.write_obj(1u8, GuestAddress(0x5000)).unwrap();
        let vm = FakeVm::default();
        *vm.dirty.lock().unwrap() = vec![sie_hv::DirtyLog {
            guest_addr: 0,
            len: 1 << 20,
            pages: vec![1 << 3, 0, 0, 1 << 1],
        }];
        let taken = take(&memory, &vm, true).unwrap();
        assert_eq!(pages_of(&taken), [3, 5, 3 * 64 + 1]);
        // Without tracking KVM's log is not asked for.
        *vm.dirty.lock().unwrap() = vec![sie_hv::DirtyLog {
            guest_addr: 0,
            len: 1 << 20,
            pages: vec![1 << 9],
        }];
        assert_eq!(take(&memory, &vm, false).unwrap()[0].count(), 0);
    }

    #[test]
    fn a_device_reading_a_file_into_guest_memory_marks_the_pages() {
        // What virtio-blk does for a guest's read: the file's bytes land in
        // guest RAM through vm-memory, never seen by KVM's log.
        let memory = memory();
        let mut disk: &[u8] = &[0xab; 3 * PAGE as usize];
        memory
            .read_exact_volatile_from(GuestAddress(0x2_0000), &mut disk, 3 * PAGE as usize)
            .unwrap();
        let taken = take(&memory, &FakeVm::default(), false).unwrap();
        assert_eq!(pages_of(&taken), [0x20, 0x21, 0x22]);
    }

    #[test]
    fn ready_rings_are_marked_whole() {
        let memory = memory();
        let queue = sie_virtio::SavedQueue {
            max_size: 256,
            size: 256,
            ready: true,
            desc_table: 0x1_0000,
            avail_ring: 0x2_0000,
            used_ring: 0x3_0000,
        };
        let idle = sie_virtio::SavedQueue {
            ready: false,
            desc_table: 0x9_0000,
            ..queue
        };
        let transport = sie_virtio::TransportState {
            device_type: 2,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues: vec![queue, idle],
            config_generation: 0,
            interrupt_status: 0,
            device: None,
        };
        mark_rings(&memory, &[transport]);
        let taken = take(&memory, &FakeVm::default(), false).unwrap();
        // 256 descriptors of 16 bytes: one page; the used ring (6 + 8 *
        // 256 bytes) fits in one page too.
        assert_eq!(pages_of(&taken), [0x10, 0x20, 0x30]);
    }

    #[test]
    fn a_diff_holds_the_marked_pages_even_when_zero_and_nothing_else() {
        let memory = memory();
        memory.write_obj(0xfeed_u64, GuestAddress(0x3000)).unwrap();
        memory.write_obj(0u64, GuestAddress(0x9000)).unwrap();
        memory.write_obj(1u8, GuestAddress(0xf_f000)).unwrap();
        let taken = take(&memory, &FakeVm::default(), false).unwrap();
        let path = std::env::temp_dir().join(format!("sie-diff-{}", std::process::id()));
        assert_eq!(write_diff(&memory, &path, &taken, "t").unwrap(), 3 * PAGE);
        let file = std::fs::File::open(&path).unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
        let data: u64 = data_extents(&file, 1 << 20)
            .unwrap()
            .iter()
            .map(|(start, end)| end - start)
            .sum();
        assert_eq!(data, 3 * PAGE, "three pages of data, the rest holes");
        let mut word = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut word, 0x3000).unwrap();
        assert_eq!(u64::from_le_bytes(word), 0xfeed);
        std::fs::remove_file(&path).unwrap();
    }
}
