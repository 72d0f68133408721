//! Restored guest RAM on huge pages (`huge_pages` of `PUT /snapshot/load`
//! with the File backend): anonymous memory that the kernel backs with
//! transparent huge pages (`MADV_HUGEPAGE`), or 2 MiB hugetlb pages
//! (`MAP_HUGETLB`), filled from the memory file's data extents before the
//! vCPUs run. Unlike the copy-on-write mapping of the plain File backend,
//! the load reads everything the guest had touched: load time traded for
//! fewer TLB misses and page-table pages while the guest runs.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use sie_config::HugePages;
use sie_hv::GuestMemory;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestRegionMmap};

use super::memory_file::{MemoryFileError, RegionEntry, data_extents, open_checked};

/// A hugetlb page.
const HUGE_PAGE: u64 = 2 << 20;
/// `MAP_HUGE_2MB`: log2 of the page size in the flags' high bits.
const MAP_HUGE_2MB: i32 = 21 << libc::MAP_HUGE_SHIFT;

/// Guest RAM with `layout`, on the huge pages `pages` asks for (Transparent
/// or TwoMiB), holding what the memory file at `path` holds.
pub fn load(
    path: &Path,
    layout: &[RegionEntry],
    pages: HugePages,
) -> Result<GuestMemory, MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (mut file, file_len) = open_checked(path, layout)?;
    let hugetlb = pages == HugePages::TwoMiB;
    let mut regions = Vec::with_capacity(layout.len());
    for entry in layout {
        if hugetlb && entry.len % HUGE_PAGE != 0 {
            return Err(io_error(io::Error::other(format!(
                "huge_pages 2M: a guest RAM region of {} bytes is not a whole number of 2 MiB pages",
                entry.len
            ))));
        }
        regions.push(region(entry, hugetlb).map_err(io_error)?);
    }
    let memory = GuestMemory::from_regions(regions)
        .map_err(|e| io_error(io::Error::other(e.to_string())))?;
    fill(&memory, &mut file, file_len).map_err(io_error)?;
    // Filling is not the guest writing: the next Diff snapshot holds only
    // what changes from here on.
    for region in memory.iter() {
        region.get_mmap().bitmap().reset();
    }
    Ok(memory)
}

/// One anonymous region: hugetlb pages, or base pages that may become
/// transparent huge pages.
fn region(entry: &RegionEntry, hugetlb: bool) -> io::Result<GuestRegionMmap<AtomicBitmap>> {
    let len = usize::try_from(entry.len).map_err(io::Error::other)?;
    // No MAP_NORESERVE for hugetlb: the pages are reserved now, so a host
    // short of them fails this load instead of killing the guest later.
    let flags = if hugetlb {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | MAP_HUGE_2MB
    } else {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
    };
    let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugetlb)
        .build()
        .map_err(|e| {
            if hugetlb {
                io::Error::other(format!(
                    "huge_pages 2M: the host has fewer than {} free 2 MiB huge pages ({e}; see /proc/sys/vm/nr_hugepages)",
                    entry.len / HUGE_PAGE
                ))
            } else {
                io::Error::other(e.to_string())
            }
        })?;
    if !hugetlb {
        // SAFETY: the range is exactly the mapping just made, which the
        // region owns; madvise only changes how the kernel backs it.
        let advised = unsafe { libc::madvise(mapping.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        if advised != 0 {
            return Err(io::Error::other(format!(
                "huge_pages Transparent: madvise(MADV_HUGEPAGE): {}",
                io::Error::last_os_error()
            )));
        }
    }
    GuestRegionMmap::new(mapping, GuestAddress(entry.guest_addr))
        .ok_or_else(|| io::Error::other("region past the address space"))
}

/// Copies every data extent of the memory file into guest RAM at the same
/// (guest-physical) offset; holes stay the zeros anonymous memory starts as.
fn fill(memory: &GuestMemory, file: &mut File, file_len: u64) -> io::Result<()> {
    for (start, end) in data_extents(file, file_len)? {
        file.seek(SeekFrom::Start(start))?;
        let len = usize::try_from(end - start).map_err(io::Error::other)?;
        memory
            .read_exact_volatile_from(GuestAddress(start), file, len)
            .map_err(|e| io::Error::other(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::memory_file;

    #[test]
    fn transparent_huge_pages_hold_what_the_file_holds_and_nothing_is_dirty() {
        let source = GuestMemory::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        source.write_obj(0xfeed_u64, GuestAddress(0x1000)).unwrap();
        source
            .write_obj(0xbeef_u64, GuestAddress(0x30_0000))
            .unwrap();
        let path = std::env::temp_dir().join(format!("sie-huge-{}", std::process::id()));
        memory_file::write(&source, &path, false, "t").unwrap();
        let layout = memory_file::layout_of(&source);
        let loaded = load(&path, &layout, HugePages::Transparent).unwrap();
        assert_eq!(
            loaded.read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xfeed
        );
        assert_eq!(
            loaded.read_obj::<u64>(GuestAddress(0x30_0000)).unwrap(),
            0xbeef
        );
        assert_eq!(loaded.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 0);
        let taken =
            crate::snapshot::dirty::take(&loaded, &crate::test_doubles::FakeVm::default(), false)
                .unwrap();
        assert_eq!(taken[0].count(), 0, "loading is not writing");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_region_of_no_whole_2m_pages_is_refused_by_name() {
        let source = GuestMemory::from_ranges(&[(GuestAddress(0), 3 << 20)]).unwrap();
        let path = std::env::temp_dir().join(format!("sie-huge-odd-{}", std::process::id()));
        memory_file::write(&source, &path, false, "t").unwrap();
        let error = load(&path, &memory_file::layout_of(&source), HugePages::TwoMiB)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a whole number of 2 MiB pages"),
            "{error}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
