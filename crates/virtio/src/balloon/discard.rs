//! Giving guest pages back to the host: the balloon's inflated pages, the
//! pages free page reporting and hinting name.
//!
//! The device only says which guest-physical range it no longer needs;
//! [`PageDiscard`] decides how. [`HostDiscard`] reads how each RAM region
//! is mapped: private memory is dropped with `MADV_DONTNEED` (the next
//! touch faults in a zero page), shared or file-backed memory with
//! `MADV_REMOVE` (which frees the backing too), and hugetlb regions only
//! in whole 2 MiB pages, which is all the kernel can drop there.

use std::io;

use vm_memory::{GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion};

use crate::memory::GuestMemory;

/// The smallest page the balloon speaks of (`VIRTIO_BALLOON_PFN_SHIFT`).
pub const BALLOON_PAGE: u64 = 4096;
/// A hugetlb page, the unit a hugetlb region can be dropped in.
const HUGE_PAGE: u64 = 2 << 20;

/// Drops the host's backing of guest RAM ranges the guest gave up.
pub trait PageDiscard: Send {
    /// Drops `[addr, addr + len)`, which the device checked lies in guest
    /// RAM. Returns the bytes actually dropped (a hugetlb region drops
    /// only its whole huge pages).
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> io::Result<u64>;
}

/// Discards through `madvise(2)` on the VMM's own mapping of guest RAM.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostDiscard;

impl PageDiscard for HostDiscard {
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) -> io::Result<u64> {
        let Some((region, offset)) = mem.to_region_addr(addr) else {
            return Err(io::Error::other("range outside guest RAM"));
        };
        let offset = offset.0;
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= region.len())
            .ok_or_else(|| io::Error::other("range crosses a RAM region's end"))?;
        let hugetlb = region.is_hugetlbfs() == Some(true);
        let unit = if hugetlb { HUGE_PAGE } else { BALLOON_PAGE };
        let start = offset.next_multiple_of(unit);
        let stop = end - end % unit;
        if stop <= start {
            return Ok(0);
        }
        let shared = region.flags() & libc::MAP_SHARED != 0 || region.file_offset().is_some();
        let advice = if shared {
            libc::MADV_REMOVE
        } else {
            libc::MADV_DONTNEED
        };
        let base = region.as_ptr();
        // SAFETY: `start..stop` lies inside this region's live mapping
        // (checked against `region.len()` above), which guest memory owns
        // for the VM's life; dropping pages only makes the next access
        // fault in zeros (or the file's data), never unmaps them.
        let done = unsafe {
            libc::madvise(
                base.add(start as usize).cast(),
                (stop - start) as usize,
                advice,
            )
        };
        if done != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stop - start)
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn private_ram_reads_zero_after_a_discard_and_partial_pages_are_kept() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 3 * 4096], GuestAddress(0x1000))
            .unwrap();
        // One whole page in the middle, plus half pages at each side.
        let dropped = HostDiscard
            .discard(&mem, GuestAddress(0x1800), 2 * 4096)
            .unwrap();
        assert_eq!(dropped, 4096);
        let mut page = [0u8; 4096];
        mem.read_slice(&mut page, GuestAddress(0x2000)).unwrap();
        assert_eq!(page, [0u8; 4096]);
        mem.read_slice(&mut page, GuestAddress(0x1000)).unwrap();
        assert_eq!(page, [0xaa; 4096]);
        mem.read_slice(&mut page, GuestAddress(0x3000)).unwrap();
        assert_eq!(page, [0xaa; 4096]);
    }

    #[test]
    fn a_range_outside_ram_is_an_error() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(
            HostDiscard
                .discard(&mem, GuestAddress(1 << 20), 4096)
                .is_err()
        );
        assert!(
            HostDiscard
                .discard(&mem, GuestAddress(0xff000), 0x2000)
                .is_err()
        );
    }
}
