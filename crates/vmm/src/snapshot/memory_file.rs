//! Guest RAM as a file: each region at its guest-physical offset, so a
//! restore maps the file straight into the new VM. Pages the guest never
//! touched stay holes (a sparse file), so creating a snapshot writes only
//! what exists, and restoring maps the file copy-on-write: nothing is read
//! until the guest touches it.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sie_hv::GuestMemory;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
};

use super::durable::Staged;

const PAGE: usize = 4096;

/// One RAM region's place in the memory file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionEntry {
    /// Guest-physical start (and file offset).
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// The RAM layout of a VM, as the snapshot records it.
pub fn layout_of(memory: &GuestMemory) -> Vec<RegionEntry> {
    memory
        .iter()
        .map(|region| RegionEntry {
            guest_addr: region.start_addr().0,
            len: region.len(),
        })
        .collect()
}

/// Bytes the memory file must have for `layout`.
pub fn file_len(layout: &[RegionEntry]) -> u64 {
    layout
        .iter()
        .map(|r| r.guest_addr.saturating_add(r.len))
        .max()
        .unwrap_or(0)
}

/// Which pages of `region` are in memory (`mincore`); pages never touched
/// are not, and need not be written.
pub(crate) fn resident_pages(region: &GuestRegionMmap<AtomicBitmap>) -> io::Result<Vec<bool>> {
    let len = usize::try_from(region.len()).map_err(io::Error::other)?;
    let mut residency = vec![0u8; len.div_ceil(PAGE)];
    // SAFETY: the range is exactly one mapping vm-memory created and keeps
    // alive (page-aligned by mmap); `residency` has one byte per page.
    let rc = unsafe { libc::mincore(region.as_ptr().cast(), len, residency.as_mut_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(residency.iter().map(|page| page & 1 != 0).collect())
}

pub(crate) fn is_zero_page(memory: &GuestMemory, at: GuestAddress) -> io::Result<bool> {
    let mut page = [0u8; PAGE];
    memory
        .read_slice(&mut page, at)
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(page.iter().all(|&b| b == 0))
}

/// Writes guest RAM to `path` (crash-safely) and returns the bytes written.
/// With `scan_contents` (memory that came from a file, whose untouched pages
/// are not resident yet still hold data), every page is read and only
/// all-zero pages are left as holes; otherwise pages that are not resident
/// are skipped without being read.
pub fn write(
    memory: &GuestMemory,
    path: &Path,
    scan_contents: bool,
    pair_id: &str,
) -> io::Result<u64> {
    let (staged, written) = stage(memory, path, scan_contents, pair_id)?;
    staged.commit()?;
    Ok(written)
}

/// [`write`] up to the rename: the file is complete and fsynced under its
/// temporary name. Returns it and the bytes written.
pub fn stage(
    memory: &GuestMemory,
    path: &Path,
    scan_contents: bool,
    pair_id: &str,
) -> io::Result<(Staged, u64)> {
    let mut candidates = Vec::new();
    for region in memory.iter() {
        candidates.push(candidate_pages(region, scan_contents)?);
    }
    stage_pages(memory, path, pair_id, |region, base, page| {
        let candidate = candidates
            .get(region)
            .and_then(|pages| pages.get(usize::try_from(page).ok()?))
            .copied()
            .unwrap_or(false);
        Ok(candidate && !is_zero_page(memory, GuestAddress(base + page * PAGE as u64))?)
    })
}

/// The pages of `region` that may hold data: the resident ones, or with
/// `scan_contents` (RAM mapped from a file) every page.
fn candidate_pages(
    region: &GuestRegionMmap<AtomicBitmap>,
    scan_contents: bool,
) -> io::Result<Vec<bool>> {
    if scan_contents {
        let len = usize::try_from(region.len()).map_err(io::Error::other)?;
        Ok(vec![true; len.div_ceil(PAGE)])
    } else {
        resident_pages(region)
    }
}

/// Stages a RAM-sized memory file tagged `pair_id` that holds, of each
/// region (by index and base address), the pages `wanted` picks, written
/// in runs at their guest-physical offsets; everything else is a hole.
/// Returns it and the bytes written.
pub fn stage_pages(
    memory: &GuestMemory,
    path: &Path,
    pair_id: &str,
    mut wanted: impl FnMut(usize, u64, u64) -> io::Result<bool>,
) -> io::Result<(Staged, u64)> {
    let mut written = 0u64;
    let staged = super::durable::stage(path, |file| {
        // Before the rename: a memory file in place always says which
        // snapshot it belongs to.
        super::pairing::tag(file, pair_id)?;
        file.set_len(file_len(&layout_of(memory)))?;
        for (index, region) in memory.iter().enumerate() {
            let base = region.start_addr().0;
            written += write_runs(memory, region, file, base, |page| wanted(index, base, page))?;
        }
        Ok(())
    })?;
    Ok((staged, written))
}

/// How much of a memory file is written before its writeback starts.
const WRITEBACK_SLICE: u64 = 4 << 20;

/// Starts writing `file`'s dirty pages to disk without waiting for them, so
/// the disk works while the next pages are copied. A hint: its failure
/// changes nothing, the fsync after the writes is what makes them durable.
fn start_writeback(file: &File) {
    // SAFETY: sync_file_range on a descriptor we own; offset 0 and length
    // 0 mean the whole file; no memory is passed.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes the pages of `region` that `wanted` picks (by page index) into
/// `file`, in runs, the region's first byte at `file_offset`; returns the
/// bytes written.
fn write_runs(
    memory: &GuestMemory,
    region: &GuestRegionMmap<AtomicBitmap>,
    file: &mut File,
    file_offset: u64,
    mut wanted: impl FnMut(u64) -> io::Result<bool>,
) -> io::Result<u64> {
    let (base, len) = (region.start_addr().0, region.len());
    let count = len.div_ceil(PAGE as u64);
    let mut written = 0u64;
    let mut unwritten = 0u64;
    let mut page = 0;
    while page < count {
        if !wanted(page)? {
            page += 1;
            continue;
        }
        // A run of pages to write in one go.
        let mut end = page + 1;
        while end < count && wanted(end)? {
            end += 1;
        }
        let offset = page * PAGE as u64;
        let bytes = (end * PAGE as u64).min(len) - offset;
        file.seek(SeekFrom::Start(file_offset + offset))?;
        // In slices, each handed to the disk as soon as it is in the page
        // cache: the fsync that follows then waits for the last slice only.
        let mut done = 0;
        while done < bytes {
            let slice = (bytes - done).min(WRITEBACK_SLICE);
            memory
                .write_all_volatile_to(
                    GuestAddress(base + offset + done),
                    file,
                    usize::try_from(slice).map_err(io::Error::other)?,
                )
                .map_err(|e| io::Error::other(e.to_string()))?;
            done += slice;
            unwritten += slice;
            if unwritten >= WRITEBACK_SLICE {
                start_writeback(file);
                unwritten = 0;
            }
        }
        written += bytes;
        page = end;
    }
    Ok(written)
}

/// Writes `region`'s pages into `file` from `file_offset` on (the region's
/// first byte there), leaving holes for pages that need no bytes: not
/// resident (never touched), or, with `scan_contents`, all zeros. Returns
/// the bytes written. Shared with the core dump, which lays regions out
/// at other offsets.
pub(crate) fn write_region(
    memory: &GuestMemory,
    region: &GuestRegionMmap<AtomicBitmap>,
    file: &mut File,
    file_offset: u64,
    scan_contents: bool,
) -> io::Result<u64> {
    let candidates = candidate_pages(region, scan_contents)?;
    let base = region.start_addr().0;
    write_runs(memory, region, file, file_offset, |page| {
        let candidate = usize::try_from(page)
            .ok()
            .and_then(|page| candidates.get(page))
            .copied()
            .unwrap_or(false);
        Ok(candidate && !is_zero_page(memory, GuestAddress(base + page * PAGE as u64))?)
    })
}

/// Why a memory file cannot back a VM.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// It could not be opened or mapped.
    #[error("memory file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Its size does not match the snapshot.
    #[error("memory file {path} has {found} bytes; the snapshot's memory needs {expected}")]
    Size {
        /// The file.
        path: String,
        /// Its size.
        found: u64,
        /// What the layout needs.
        expected: u64,
    },
}

/// Opens the memory file at `path` for reading, checked to be the size
/// `layout` needs; returns it and that size.
pub fn open_checked(path: &Path, layout: &[RegionEntry]) -> Result<(File, u64), MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = OpenOptions::new().read(true).open(path).map_err(io_error)?;
    let found = file.metadata().map_err(io_error)?.len();
    let expected = file_len(layout);
    if found != expected {
        return Err(MemoryFileError::Size {
            path: path.display().to_string(),
            found,
            expected,
        });
    }
    Ok((file, found))
}

/// Maps `path` copy-on-write as guest RAM with `layout`: the file is never
/// written, and nothing is read until the guest touches it.
pub fn map(path: &Path, layout: &[RegionEntry]) -> Result<GuestMemory, MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (file, _) = open_checked(path, layout)?;
    let mut regions = Vec::with_capacity(layout.len());
    for entry in layout {
        let len = usize::try_from(entry.len).map_err(|e| io_error(io::Error::other(e)))?;
        let clone: File = file.try_clone().map_err(io_error)?;
        // The bitmap must cover the region (the builder's default is empty,
        // which would track nothing).
        let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
            .with_file_offset(FileOffset::new(clone, entry.guest_addr))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()
            .map_err(|e| io_error(io::Error::other(e.to_string())))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(entry.guest_addr))
            .ok_or_else(|| io_error(io::Error::other("region past the address space")))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| io_error(io::Error::other(e.to_string())))
}

/// The `[start, end)` byte ranges of `file` that hold data, in order.
pub fn data_extents(file: &File, len: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < len {
        let Some(start) = seek(file, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(file, start, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        if end <= start {
            break;
        }
        extents.push((start, end));
        at = end;
    }
    Ok(extents)
}

/// `lseek(fd, at, whence)`; `None` when there is no more data (`ENXIO`).
fn seek(file: &File, at: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(at).map_err(io::Error::other)?;
    // SAFETY: lseek only moves the file's offset; the descriptor is owned by
    // `file`, which is alive for the call.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found < 0 {
        let error = io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(found as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn touched_pages_are_written_and_the_rest_are_holes() {
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        memory.write_obj(0xfeed_u64, GuestAddress(0x5000)).unwrap();
        memory
            .write_obj(0xbeef_u64, GuestAddress(0x8_0000))
            .unwrap();
        let path = std::env::temp_dir().join(format!("sie-memfile-{}", std::process::id()));
        let written = write(&memory, &path, false, "t1").unwrap();
        assert_eq!(written, 2 * PAGE as u64, "only the two touched pages");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 1 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 64 * 1024, "a sparse file");

        let restored = map(&path, &layout_of(&memory)).unwrap();
        assert_eq!(
            restored.read_obj::<u64>(GuestAddress(0x5000)).unwrap(),
            0xfeed
        );
        assert_eq!(
            restored.read_obj::<u64>(GuestAddress(0x8_0000)).unwrap(),
            0xbeef
        );
        // Copy-on-write: the guest's writes never reach the file.
        restored.write_obj(1u64, GuestAddress(0x5000)).unwrap();
        let again = map(&path, &layout_of(&memory)).unwrap();
        assert_eq!(again.read_obj::<u64>(GuestAddress(0x5000)).unwrap(), 0xfeed);
        // A restored VM's memory is scanned, not asked for residency.
        let second = path.with_extension("2");
        assert_eq!(
            write(&restored, &second, true, "t2").unwrap(),
            2 * PAGE as u64
        );
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&second).unwrap();
    }

    #[test]
    fn a_memory_file_of_the_wrong_size_is_refused() {
        let path = std::env::temp_dir().join(format!("sie-memfile-short-{}", std::process::id()));
        std::fs::write(&path, [0u8; 4096]).unwrap();
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 1 << 20,
        }];
        let error = map(&path, &layout).unwrap_err();
        assert!(error.to_string().contains("has 4096 bytes"), "{error}");
        std::fs::remove_file(&path).unwrap();
    }
}
