//! Guest RAM in shared memory: one sealed memfd per RAM region, mapped
//! `MAP_SHARED`, so a same-host migration (`"local": true`) hands the
//! memfds to the next sie instead of copying the pages
//! (`machine-config` `shared_memory`, `sie run --memory-shared`).
//!
//! Each memfd is sealed against shrinking and growing: a peer that
//! received it cannot cut it under this side's mapping (a SIGBUS), and the
//! receiver checks the seals and size before it maps one.
//!
//! ```no_run
//! use vm_memory::GuestAddress;
//! let memory = sie_vmm::shared_memory::create(&[(GuestAddress(0), 1 << 20)]).unwrap();
//! assert_eq!(sie_vmm::shared_memory::memfds(&memory).unwrap().len(), 1);
//! ```

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use sie_hv::GuestMemory;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::snapshot::memory_file::RegionEntry;

/// The seals every guest RAM memfd carries.
const SEALS: i32 = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;

/// Guest RAM of `ranges` (guest address, length in bytes), each region a
/// fresh sealed memfd.
pub fn create(ranges: &[(GuestAddress, usize)]) -> io::Result<GuestMemory> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(at, len) in ranges {
        let file = memfd(len as u64)?;
        regions.push(map_region(file, at, len)?);
    }
    GuestMemory::from_regions(regions).map_err(|e| io::Error::other(e.to_string()))
}

fn memfd(len: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated literal; the kernel returns a
    // new descriptor or -1 and touches no memory of ours.
    let fd = unsafe {
        libc::memfd_create(
            c"sie-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::other(format!(
            "memfd_create: {}",
            io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len)?;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own, with an int.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } != 0 {
        return Err(io::Error::other(format!(
            "sealing guest RAM's memfd: {}",
            io::Error::last_os_error()
        )));
    }
    Ok(file)
}

fn map_region(
    file: File,
    at: GuestAddress,
    len: usize,
) -> io::Result<GuestRegionMmap<AtomicBitmap>> {
    let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_file_offset(FileOffset::new(file, 0))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_SHARED | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| io::Error::other(format!("mapping shared guest RAM: {e}")))?;
    GuestRegionMmap::new(mapping, at)
        .ok_or_else(|| io::Error::other("region past the address space"))
}

/// Each region's layout and memfd, when every region of `memory` is a
/// whole shared file mapping (what [`create`] and [`map`] make); `None`
/// for private memory (a boot without `shared_memory`, a snapshot
/// restore), which a local migration cannot hand over.
pub fn memfds(memory: &GuestMemory) -> Option<Vec<(RegionEntry, &File)>> {
    memory
        .iter()
        .map(|region| {
            let file = region.file_offset()?;
            let shared = region.flags() & libc::MAP_SHARED != 0;
            (shared && file.start() == 0).then(|| {
                let entry = RegionEntry {
                    guest_addr: region.start_addr().0,
                    len: region.len(),
                };
                (entry, file.file())
            })
        })
        .collect()
}

/// Maps memfds another sie passed for `layout` (one per region, in
/// order), refusing one of another size or one that could still shrink.
pub fn map(layout: &[RegionEntry], files: Vec<File>) -> io::Result<GuestMemory> {
    if files.len() != layout.len() {
        return Err(io::Error::other(format!(
            "{} memory descriptors for {} RAM regions",
            files.len(),
            layout.len()
        )));
    }
    let mut regions = Vec::with_capacity(layout.len());
    for (entry, file) in layout.iter().zip(files) {
        let size = file.metadata()?.len();
        if size != entry.len {
            return Err(io::Error::other(format!(
                "the memory descriptor for {:#x} holds {size} bytes, the layout says {}",
                entry.guest_addr, entry.len
            )));
        }
        // SAFETY: fcntl(F_GET_SEALS) on a descriptor we own.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::other(format!(
                "the memory descriptor for {:#x} is not a memfd sealed against shrinking",
                entry.guest_addr
            )));
        }
        let len = usize::try_from(entry.len).map_err(io::Error::other)?;
        regions.push(map_region(file, GuestAddress(entry.guest_addr), len)?);
    }
    GuestMemory::from_regions(regions).map_err(|e| io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests {
    use vm_memory::Bytes;

    use super::*;

    #[test]
    fn a_second_mapping_of_the_memfds_sees_the_same_bytes() {
        let memory =
            create(&[(GuestAddress(0), 1 << 20), (GuestAddress(1 << 30), 2 << 20)]).unwrap();
        memory
            .write_obj(0x5a5a_u64, GuestAddress((1 << 30) + 0x1000))
            .unwrap();
        let shared = memfds(&memory).unwrap();
        let layout: Vec<_> = shared.iter().map(|(entry, _)| *entry).collect();
        let files = shared.iter().map(|(_, f)| f.try_clone().unwrap()).collect();
        let other = map(&layout, files).unwrap();
        assert_eq!(
            other
                .read_obj::<u64>(GuestAddress((1 << 30) + 0x1000))
                .unwrap(),
            0x5a5a
        );
        other.write_obj(7u64, GuestAddress(8)).unwrap();
        assert_eq!(memory.read_obj::<u64>(GuestAddress(8)).unwrap(), 7);
    }

    #[test]
    fn private_memory_has_no_memfds_and_a_wrong_descriptor_is_refused() {
        let private = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(memfds(&private).is_none());
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 1 << 20,
        }];
        let unsealed = tempfile_of(1 << 20);
        let error = map(&layout, vec![unsealed]).unwrap_err().to_string();
        assert!(error.contains("not a memfd sealed"), "{error}");
        let short = memfd(4096).unwrap();
        let error = map(&layout, vec![short]).unwrap_err().to_string();
        assert!(error.contains("holds 4096 bytes"), "{error}");
        assert!(map(&layout, vec![]).is_err());
    }

    fn tempfile_of(len: u64) -> File {
        // SAFETY: as in `memfd`, without sealing.
        let fd = unsafe { libc::memfd_create(c"test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }
}
