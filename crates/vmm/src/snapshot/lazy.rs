//! The `Lazy` memory backend (a sie extension): guest RAM is anonymous and
//! registered with a userfaultfd that a thread of sie itself (`sie_uffd`,
//! with its own seccomp filter) serves from the memory file: a page the
//! file holds is copied in (`UFFDIO_COPY`), a hole becomes a zero page
//! (`UFFDIO_ZEROPAGE`). No external handler can die and hang the guest.
//!
//! A restore with no usable working set ([`super::working_set`]) records
//! one: the pages the vCPUs touch, in order, written beside the memory
//! file each time faults pause for [`QUIET`], until [`WINDOW`] after the
//! guest's first fault. Faults of sie's VMM thread are served but not
//! recorded: a snapshot created meanwhile reads every page, and those are
//! not the guest's working set. A restore that finds one reads it in one
//! pass and installs its pages before the vCPUs run; the rest still fault
//! in (`fault_handler.rs` serves them).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sie_hv::GuestMemory;
use sie_seccomp::Seccomp;
use vm_memory::GuestAddress;

use super::fault_handler::{Handler, PageSet, Recorder, host_of, regions_of};
use super::memory_file::{MemoryFileError, RegionEntry, data_extents, file_len, open_checked};
use super::uffd::{self, PAGE};
use super::working_set::{self, Identity};

pub use super::fault_handler::{AROUND_PAGES, QUIET, WINDOW};

/// Guest RAM served lazily, and what the restore did with the working set.
#[derive(Debug)]
pub struct LazyMemory {
    /// The anonymous guest RAM the handler fills.
    pub memory: GuestMemory,
    /// Pages installed from the working set before the vCPUs run.
    pub prefetched_pages: usize,
    /// The working-set file (read, or to be recorded).
    pub working_set: PathBuf,
    loaded: Arc<AtomicBool>,
}

impl LazyMemory {
    /// The restore is done: faults from now on are the guest's, and the
    /// recording window starts at the first of them.
    pub fn mark_loaded(&self) {
        self.loaded.store(true, Ordering::Release);
    }
}

/// The recordings still open in this process: each handler's finish
/// eventfd and where it answers once its working set is written.
type Recordings = Vec<(
    vmm_sys_util::eventfd::EventFd,
    std::sync::mpsc::Receiver<()>,
)>;
static RECORDINGS: std::sync::Mutex<Recordings> = std::sync::Mutex::new(Vec::new());

/// The VM has ended: every lazy restore still recording writes its working
/// set now (a guest that ends within [`QUIET`] of its last new page would
/// otherwise leave none, as the process exits before its RAM is unmapped).
/// Waits at most `limit` for each.
pub fn finish_recordings(limit: std::time::Duration) {
    let recordings = std::mem::take(&mut *RECORDINGS.lock().unwrap_or_else(|e| e.into_inner()));
    for (finish, flushed) in recordings {
        if finish.write(1).is_ok() {
            let _ = flushed.recv_timeout(limit);
        }
    }
}

/// The memory file at `path`, its size checked against `layout`, and its
/// identity (for the working set).
fn open_file(path: &Path, layout: &[RegionEntry]) -> Result<(File, Identity), MemoryFileError> {
    let (file, _) = open_checked(path, layout)?;
    let metadata = file.metadata().map_err(|source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok((file, Identity::of(&metadata)))
}

/// Fresh anonymous guest RAM with `layout`.
pub fn anonymous(layout: &[RegionEntry]) -> std::io::Result<GuestMemory> {
    let mut ranges = Vec::with_capacity(layout.len());
    for entry in layout {
        let len = usize::try_from(entry.len).map_err(std::io::Error::other)?;
        ranges.push((GuestAddress(entry.guest_addr), len));
    }
    GuestMemory::from_ranges(&ranges).map_err(|e| std::io::Error::other(e.to_string()))
}

/// Maps guest RAM for `layout` lazily from the memory file at `path`:
/// installs the working set if there is a usable one, and starts the
/// thread that serves the rest (with `seccomp`'s uffd filter).
pub fn open(
    path: &Path,
    layout: &[RegionEntry],
    seccomp: &Seccomp,
) -> Result<LazyMemory, MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let (file, identity) = open_file(path, layout)?;
    let data = data_extents(&file, file_len(layout)).map_err(io_error)?;
    let memory = anonymous(layout).map_err(io_error)?;
    let uffd = uffd::register_all(
        &memory,
        uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP | uffd::FEATURE_THREAD_ID,
    )
    .map_err(|e| io_error(std::io::Error::other(format!("userfaultfd: {e}"))))?;
    let regions = regions_of(&memory);
    let mut installed = PageSet::new(file_len(layout));
    let ws_path = working_set::path_for(path);
    let started = Instant::now();
    // Every run must land in guest RAM (not in a hole of the address
    // space) before any is installed.
    let placed = working_set::read(&ws_path, identity).and_then(|set| {
        let Some(set) = set else {
            return Ok(None);
        };
        let inside = set
            .runs()
            .all(|(offset, pages)| host_of(&regions, offset, (pages * PAGE) as u64).is_some());
        if !inside {
            return Err("pages outside guest RAM".into());
        }
        Ok(Some(set))
    });
    let (prefetched_pages, record) = match placed {
        Ok(Some(set)) => {
            set.install(|offset, bytes| {
                let host = host_of(&regions, offset, bytes.len() as u64)
                    .ok_or("pages outside guest RAM")?;
                uffd.copy(host, bytes).map_err(|e| e.to_string())?;
                installed.set(offset, (bytes.len() / PAGE) as u64, true);
                Ok(())
            })
            .map_err(|e| {
                io_error(std::io::Error::other(format!(
                    "installing the working set: {e}"
                )))
            })?;
            tracing::info!(
                "lazy restore: prefetched {} pages from the working set {} in {} µs",
                set.offsets.len(),
                ws_path.display(),
                started.elapsed().as_micros()
            );
            (set.offsets.len(), false)
        }
        Ok(None) => {
            tracing::info!(
                "lazy restore: no working set yet; recording one in {}",
                ws_path.display()
            );
            (0, true)
        }
        Err(why) => {
            tracing::warn!(
                "lazy restore: ignoring the working set {}: {why}; recording a new one",
                ws_path.display()
            );
            (0, true)
        }
    };
    let loaded = Arc::new(AtomicBool::new(false));
    let recorder = record.then(|| Recorder::new(ws_path.clone(), identity, loaded.clone()));
    let mut handler = Handler::new(uffd, file, regions, data, installed, recorder);
    if record {
        let finish = vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
            .map_err(io_error)?;
        let (flushed_tx, flushed_rx) = std::sync::mpsc::channel();
        let ours = finish.try_clone().map_err(io_error)?;
        handler = handler.with_finish(finish, flushed_tx);
        RECORDINGS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((ours, flushed_rx));
    }
    super::uffd::spawn_fault_thread(seccomp, move || handler.serve()).map_err(io_error)?;
    Ok(LazyMemory {
        memory,
        prefetched_pages,
        working_set: ws_path,
        loaded,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::fault_handler::overlaps_data;
    use std::time::Duration;
    use vm_memory::GuestMemoryBackend;

    /// Which pages of `memory`'s first region are resident.
    fn resident(memory: &GuestMemory, pages: usize) -> Vec<bool> {
        let region = memory.iter().next().unwrap();
        let mut residency = vec![0u8; pages];
        // SAFETY: the range is one mapping vm-memory keeps alive; one byte
        // per page.
        let rc = unsafe {
            libc::mincore(
                region.as_ptr().cast(),
                pages * PAGE,
                residency.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, 0);
        residency.iter().map(|r| r & 1 != 0).collect()
    }

    #[test]
    fn a_fault_brings_in_its_block_of_data_pages_and_no_holes() {
        use std::io::{Seek, SeekFrom, Write};
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-around-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.mem");
        let mut file = File::create(&path).unwrap();
        file.set_len(64 * PAGE as u64).unwrap();
        // Data in pages 2..=20; page 23 too, after a hole.
        file.seek(SeekFrom::Start(2 * PAGE as u64)).unwrap();
        file.write_all(&vec![7u8; 19 * PAGE]).unwrap();
        file.seek(SeekFrom::Start(23 * PAGE as u64)).unwrap();
        file.write_all(&[9u8; PAGE]).unwrap();
        drop(file);
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 64 * PAGE as u64,
        }];
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(
            lazy.memory
                .read_obj::<u8>(GuestAddress(5 * PAGE as u64))
                .unwrap(),
            7
        );
        let seen = resident(&lazy.memory, 64);
        let expected: Vec<bool> = (0..64).map(|p| (2..16).contains(&p)).collect();
        assert_eq!(seen, expected, "pages 2..16: data in page 5's block");
        // A run stops at a hole: page 23 comes alone, then page 17 brings
        // in 16..=20 (its block's run of data).
        let read = |page: u64| {
            lazy.memory
                .read_obj::<u8>(GuestAddress(page * PAGE as u64))
                .unwrap()
        };
        assert_eq!(read(23), 9);
        let expected: Vec<bool> = (0..64).map(|p| (2..16).contains(&p) || p == 23).collect();
        assert_eq!(resident(&lazy.memory, 64), expected);
        assert_eq!(read(17), 7);
        let expected: Vec<bool> = (0..64).map(|p| (2..21).contains(&p) || p == 23).collect();
        assert_eq!(resident(&lazy.memory, 64), expected);
        drop(lazy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_sparse_file_has_its_data_extents_found() {
        use std::io::{Seek, SeekFrom, Write};
        let path = std::env::temp_dir().join(format!("sie-lazy-extents-{}", std::process::id()));
        let mut file = File::create(&path).unwrap();
        file.set_len(1 << 20).unwrap();
        file.seek(SeekFrom::Start(0x4_0000)).unwrap();
        file.write_all(&[1u8; PAGE]).unwrap();
        let file = File::open(&path).unwrap();
        let extents = data_extents(&file, 1 << 20).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(overlaps_data(&extents, 0x4_0000), "{extents:?}");
        assert!(!overlaps_data(&extents, 0x8_0000), "{extents:?}");
    }

    /// A memory file `dir/vm.mem` of `pages` pages whose only data is
    /// `data` at page `at`, and its one-region layout.
    fn memory_file(dir: &Path, pages: u64, at: u64, data: &[u8]) -> (PathBuf, [RegionEntry; 1]) {
        use std::io::{Seek, SeekFrom, Write};
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("vm.mem");
        let mut file = File::create(&path).unwrap();
        file.set_len(pages * PAGE as u64).unwrap();
        file.seek(SeekFrom::Start(at * PAGE as u64)).unwrap();
        file.write_all(data).unwrap();
        let layout = [RegionEntry {
            guest_addr: 0,
            len: pages * PAGE as u64,
        }];
        (path, layout)
    }

    /// Waits until faults paused long enough for the working set of the
    /// memory file `path` to be written.
    fn wait_for_working_set(path: &Path) {
        let ws = working_set::path_for(path);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ws.exists() {
            assert!(Instant::now() < deadline, "no working set written");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The page offsets the working set of the memory file `path` names.
    fn recorded_offsets(path: &Path) -> Vec<u64> {
        let identity = Identity::of(&std::fs::metadata(path).unwrap());
        let set = working_set::read(&working_set::path_for(path), identity);
        set.unwrap().unwrap().offsets
    }

    #[test]
    fn the_working_set_holds_every_page_a_fault_brought_in() {
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-run-{}", std::process::id()));
        let (path, layout) = memory_file(&dir, 32, 2, &[0x5a; 4 * PAGE]);
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        lazy.mark_loaded();
        let memory = lazy.memory.clone();
        // One touch, on page 4 of the data run 2..6: the fault brings in
        // the run, and the working set names all four pages.
        std::thread::spawn(move || {
            let at = GuestAddress(4 * PAGE as u64);
            assert_eq!(memory.read_obj::<u8>(at).unwrap(), 0x5a);
        })
        .join()
        .unwrap();
        wait_for_working_set(&path);
        drop(lazy);
        let page = PAGE as u64;
        assert_eq!(
            recorded_offsets(&path),
            [2 * page, 3 * page, 4 * page, 5 * page]
        );
        let again = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(again.prefetched_pages, 4);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lazy_memory_serves_the_file_and_records_what_was_touched() {
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-{}", std::process::id()));
        let (path, layout) = memory_file(&dir, 16, 3, &[0xab; PAGE]);
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(lazy.prefetched_pages, 0);
        lazy.mark_loaded();
        let at = |page: u64| GuestAddress(page * PAGE as u64);
        // The thread that opened it (the VMM thread) is served, not recorded.
        assert_eq!(lazy.memory.read_obj::<u8>(at(9)).unwrap(), 0);
        // Another (as a vCPU is) is recorded.
        let memory = lazy.memory.clone();
        std::thread::spawn(move || {
            assert_eq!(memory.read_obj::<u8>(at(3)).unwrap(), 0xab);
            assert_eq!(memory.read_obj::<u8>(at(7)).unwrap(), 0, "a hole");
            memory.write_obj(5u8, at(7)).unwrap();
            assert_eq!(memory.read_obj::<u8>(at(7)).unwrap(), 5);
        })
        .join()
        .unwrap();
        // Faults pause: the working set is written, in the order touched.
        wait_for_working_set(&path);
        drop(lazy);
        assert_eq!(recorded_offsets(&path), [3 * PAGE as u64, 7 * PAGE as u64]);

        // The next one installs them before anything touches memory.
        let again = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(again.prefetched_pages, 2);
        assert_eq!(again.memory.read_obj::<u8>(at(3)).unwrap(), 0xab);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_working_set_outside_guest_ram_is_ignored_not_fatal() {
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-gap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.mem");
        File::create(&path)
            .unwrap()
            .set_len(24 * PAGE as u64)
            .unwrap();
        // Two regions with a hole between them, as below and above 4 GiB.
        let layout = [
            RegionEntry {
                guest_addr: 0,
                len: 8 * PAGE as u64,
            },
            RegionEntry {
                guest_addr: 16 * PAGE as u64,
                len: 8 * PAGE as u64,
            },
        ];
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let ws = working_set::path_for(&path);
        working_set::write(&ws, identity, &[10 * PAGE as u64], &[1u8; PAGE]).unwrap();
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(lazy.prefetched_pages, 0);
        drop(lazy);
        working_set::write(&ws, identity, &[17 * PAGE as u64], &[1u8; PAGE]).unwrap();
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(lazy.prefetched_pages, 1, "the second region is RAM");
        assert_eq!(
            lazy.memory
                .read_obj::<u8>(GuestAddress(17 * PAGE as u64))
                .unwrap(),
            1
        );
        drop(lazy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn discarded_memory_reads_as_zeros_not_as_the_file() {
        use std::io::Write;
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-discard-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.mem");
        File::create(&path)
            .unwrap()
            .write_all(&vec![0xab; 16 * PAGE])
            .unwrap();
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 16 * PAGE as u64,
        }];
        let lazy = open(&path, &layout, &Seccomp::disabled()).unwrap();
        let at = GuestAddress(3 * PAGE as u64);
        assert_eq!(lazy.memory.read_obj::<u8>(at).unwrap(), 0xab);
        let host = lazy.memory.get_host_address(at).unwrap();
        // SAFETY: one page of the mapping `lazy.memory` keeps alive.
        let rc = unsafe { libc::madvise(host.cast(), PAGE, libc::MADV_DONTNEED) };
        assert_eq!(rc, 0);
        assert_eq!(lazy.memory.read_obj::<u8>(at).unwrap(), 0, "discarded");
        assert_eq!(
            lazy.memory
                .read_obj::<u8>(GuestAddress(4 * PAGE as u64))
                .unwrap(),
            0xab,
            "its neighbour was not"
        );
        drop(lazy);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
