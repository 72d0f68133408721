//! Restored guest RAM on huge pages (`huge_pages` of `PUT /snapshot/load`
//! with the File backend): anonymous memory that the kernel backs with
//! transparent huge pages (`MADV_HUGEPAGE`), or 2 MiB hugetlb pages
//! (`MAP_HUGETLB`), filled from the memory file's data extents before the
//! vCPUs run. Unlike the copy-on-write mapping of the plain File backend,
//! the load reads everything the guest had touched: load time traded for
//! fewer TLB misses and page-table pages while the guest runs.
//!
//! A snapshot of shared guest RAM (`shared_memory`) is loaded the same way
//! into fresh memfds ([`load_shared`]), so the restored VM can still go to
//! another sie in local mode.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use sie_config::HugePages;
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::memory_file::{MemoryFileError, RegionEntry, data_extents, open_checked};

/// Guest RAM with `layout`, on the huge pages `pages` asks for (Transparent
/// or TwoMiB), holding what the memory file at `path` holds.
pub fn load(
    path: &Path,
    layout: &[RegionEntry],
    pages: HugePages,
) -> Result<GuestMemory, MemoryFileError> {
    load_with(path, layout, |ranges| {
        crate::guest_memory::anonymous(ranges, pages)
    })
}

/// Guest RAM with `layout` in fresh memfds (`crate::shared_memory`),
/// holding what the memory file at `path` holds.
pub fn load_shared(path: &Path, layout: &[RegionEntry]) -> Result<GuestMemory, MemoryFileError> {
    load_with(path, layout, crate::shared_memory::create)
}

fn load_with(
    path: &Path,
    layout: &[RegionEntry],
    make: impl FnOnce(&[(GuestAddress, usize)]) -> io::Result<GuestMemory>,
) -> Result<GuestMemory, MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (mut file, file_len) = open_checked(path, layout)?;
    let mut ranges = Vec::with_capacity(layout.len());
    for entry in layout {
        let len = usize::try_from(entry.len).map_err(|e| io_error(io::Error::other(e)))?;
        ranges.push((GuestAddress(entry.guest_addr), len));
    }
    let memory = make(&ranges).map_err(io_error)?;
    fill(&memory, &mut file, file_len).map_err(io_error)?;
    // Filling is not the guest writing: the next Diff snapshot holds only
    // what changes from here on.
    for region in memory.iter() {
        region.get_mmap().bitmap().reset();
    }
    Ok(memory)
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
