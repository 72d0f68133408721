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
//! not the guest's working set. A restore that finds one reads it in one pass and
//! installs its pages before the vCPUs run; the rest still fault in.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sie_seccomp::{Seccomp, ThreadKind};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::memory_file::{MemoryFileError, RegionEntry, file_len};
use super::uffd::{self, Event, PAGE, Uffd};
use super::working_set::{self, Identity};

/// Faults pausing this long write the working set recorded so far.
pub const QUIET: Duration = Duration::from_millis(500);
/// How long after the guest's first fault the working set is recorded.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A fault on a page of the file's data also brings in its missing
/// neighbours with data within this many pages (aligned), in one copy:
/// guests touch memory in runs, and each fault costs a round trip.
pub const AROUND_PAGES: u64 = 16;

/// Which pages the handler has installed, by file offset (a page installed
/// is never copied over: `UFFDIO_COPY` refuses present pages anyway, this
/// only keeps fault-around from asking).
struct Installed(Vec<u64>);

impl Installed {
    fn new(file_len: u64) -> Self {
        Self(vec![0; (file_len / PAGE as u64).div_ceil(64) as usize])
    }

    fn get(&self, offset: u64) -> bool {
        let page = offset / PAGE as u64;
        self.0
            .get((page / 64) as usize)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    fn set(&mut self, offset: u64, pages: u64, value: bool) {
        for page in offset / PAGE as u64..offset / PAGE as u64 + pages {
            if let Some(word) = self.0.get_mut((page / 64) as usize) {
                if value {
                    *word |= 1 << (page % 64);
                } else {
                    *word &= !(1 << (page % 64));
                }
            }
        }
    }
}

/// Guest RAM served lazily, and what the restore did with the working set.
#[derive(Debug)]
pub struct LazyMemory {
    /// The anonymous guest RAM the handler fills.
    pub memory: GuestMemoryMmap,
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

/// Anonymous RAM with `layout`, its file checked, or why not.
fn open_file(path: &Path, layout: &[RegionEntry]) -> Result<(File, Identity), MemoryFileError> {
    let io_error = |source| MemoryFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let metadata = file.metadata().map_err(io_error)?;
    let expected = file_len(layout);
    if metadata.len() != expected {
        return Err(MemoryFileError::Size {
            path: path.display().to_string(),
            found: metadata.len(),
            expected,
        });
    }
    Ok((file, Identity::of(&metadata)))
}

/// Fresh anonymous guest RAM with `layout`.
pub fn anonymous(layout: &[RegionEntry]) -> std::io::Result<GuestMemoryMmap> {
    let mut ranges = Vec::with_capacity(layout.len());
    for entry in layout {
        let len = usize::try_from(entry.len).map_err(std::io::Error::other)?;
        ranges.push((GuestAddress(entry.guest_addr), len));
    }
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| std::io::Error::other(e.to_string()))
}

/// The extents of `file` that hold data (`SEEK_DATA`/`SEEK_HOLE`), sorted;
/// everything else reads as zeros.
fn data_extents(file: &File, len: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut extents = Vec::new();
    let mut at = 0u64;
    while at < len {
        // SAFETY: lseek on a descriptor we own; it moves only the offset.
        let start = unsafe { libc::lseek(file.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if start < 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::ENXIO) {
                break; // No data after `at`.
            }
            return Err(error);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(file.as_raw_fd(), start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(std::io::Error::last_os_error());
        }
        extents.push((start as u64, end as u64));
        at = end as u64;
    }
    Ok(extents)
}

/// Whether the page at `offset` holds any of the file's data (`data` is
/// sorted and disjoint, so the first extent ending after it decides).
fn overlaps_data(data: &[(u64, u64)], offset: u64) -> bool {
    let first = data.partition_point(|&(_, end)| end <= offset);
    data.get(first)
        .is_some_and(|&(start, _)| start < offset + PAGE as u64)
}

/// One registered region: where it is in sie and in the file.
#[derive(Clone, Copy, Debug)]
struct Region {
    host: u64,
    len: u64,
    offset: u64,
}

fn regions_of(memory: &GuestMemoryMmap) -> Vec<Region> {
    memory
        .iter()
        .map(|r| Region {
            host: r.as_ptr() as u64,
            len: r.len(),
            offset: r.start_addr().0,
        })
        .collect()
}

fn host_of(regions: &[Region], offset: u64, len: u64) -> Option<u64> {
    regions
        .iter()
        .find(|r| offset >= r.offset && offset + len <= r.offset + r.len)
        .map(|r| r.host + (offset - r.offset))
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
    let mut installed = Installed::new(file_len(layout));
    let ws_path = working_set::path_for(path);
    let started = Instant::now();
    let (prefetched_pages, record) = match working_set::read(&ws_path, identity) {
        Ok(Some(set)) => {
            for (offset, bytes) in set.runs() {
                let result = match host_of(&regions, offset, bytes.len() as u64) {
                    Some(host) => uffd.copy(host, bytes),
                    None => Err(std::io::Error::other("a run across regions")),
                };
                result.map_err(|e| {
                    io_error(std::io::Error::other(format!(
                        "installing the working set: {e}"
                    )))
                })?;
                installed.set(offset, (bytes.len() / PAGE) as u64, true);
            }
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
    let handler = Handler {
        uffd,
        file,
        regions,
        data,
        installed,
        removed: Vec::new(),
        recorder: record.then(|| Recorder {
            path: ws_path.clone(),
            identity,
            offsets: Vec::new(),
            seen: std::collections::HashSet::new(),
            written: 0,
            window_start: None,
            last_fault: Instant::now(),
            loaded: loaded.clone(),
            // SAFETY: gettid has no arguments and cannot fail.
            vmm_thread: unsafe { libc::gettid() } as u32,
        }),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let seccomp = seccomp.clone();
    std::thread::Builder::new()
        .name("sie_uffd".into())
        .spawn(move || {
            let installed = seccomp.install(ThreadKind::Uffd);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed.map_err(|e| e.to_string()));
            if ok {
                handler.serve();
            }
        })
        .map_err(io_error)?;
    ready_rx
        .recv()
        .map_err(|e| io_error(std::io::Error::other(e)))?
        .map_err(|e| io_error(std::io::Error::other(e)))?;
    Ok(LazyMemory {
        memory,
        prefetched_pages,
        working_set: ws_path,
        loaded,
    })
}

/// What the handler records while the guest warms up.
struct Recorder {
    path: PathBuf,
    identity: Identity,
    offsets: Vec<u64>,
    seen: std::collections::HashSet<u64>,
    written: usize,
    window_start: Option<Instant>,
    last_fault: Instant,
    loaded: Arc<AtomicBool>,
    /// The thread that restores the VM and then serves its devices.
    vmm_thread: u32,
}

/// The `sie_uffd` thread's state.
struct Handler {
    uffd: Uffd,
    file: File,
    regions: Vec<Region>,
    data: Vec<(u64, u64)>,
    installed: Installed,
    /// Host ranges the guest discarded: they read as zeros now.
    removed: Vec<(u64, u64)>,
    recorder: Option<Recorder>,
}

impl Handler {
    fn serve(mut self) {
        let mut unmapped = 0;
        loop {
            let timeout_ms = self.poll_timeout_ms();
            let mut poll = libc::pollfd {
                fd: self.uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut poll, 1, timeout_ms) };
            loop {
                match self.uffd.read_event() {
                    Ok(Some(Event::PageFault(address, thread))) => {
                        if let Err(error) = self.fault(address & !(PAGE as u64 - 1), thread) {
                            tracing::error!("lazy restore: serving {address:#x}: {error}");
                        }
                    }
                    Ok(Some(Event::Remove(start, end))) => self.remove(start, end),
                    Ok(Some(Event::Unmap(start, end))) => {
                        unmapped += self
                            .regions
                            .iter()
                            .filter(|r| r.host >= start && r.host + r.len <= end)
                            .count();
                    }
                    Ok(Some(Event::Other(_))) => {}
                    Ok(None) => break,
                    Err(error) => {
                        tracing::error!("lazy restore: reading page faults: {error}");
                        return;
                    }
                }
            }
            if unmapped >= self.regions.len() {
                // The VM is gone; what was recorded is kept.
                self.flush(true);
                return;
            }
            self.flush(false);
        }
    }

    /// Wait for events forever, unless a recording is due to be written.
    fn poll_timeout_ms(&self) -> i32 {
        match &self.recorder {
            Some(r) if r.offsets.len() > r.written => {
                QUIET.saturating_sub(r.last_fault.elapsed()).as_millis() as i32 + 1
            }
            Some(r) if r.window_start.is_some() => 1000,
            _ => -1,
        }
    }

    fn fault(&mut self, host: u64, thread: u32) -> std::io::Result<()> {
        if self.removed.iter().any(|&(s, e)| host >= s && host < e) {
            return self.uffd.zero(host, PAGE as u64);
        }
        let Some(region) = self
            .regions
            .iter()
            .find(|r| host >= r.host && host < r.host + r.len)
            .copied()
        else {
            return Err(std::io::Error::other("a fault outside guest RAM"));
        };
        let offset = region.offset + (host - region.host);
        if let Some(recorder) = &mut self.recorder
            && thread != recorder.vmm_thread
        {
            recorder.note(offset);
        }
        if !overlaps_data(&self.data, offset) {
            self.installed.set(offset, 1, true);
            return self.uffd.zero(host, PAGE as u64);
        }
        let (start, pages) = self.run_around(&region, offset);
        let mut bytes = vec![0u8; (pages as usize) * PAGE];
        self.file.read_exact_at(&mut bytes, start)?;
        self.installed.set(start, pages, true);
        self.uffd
            .copy(region.host + (start - region.offset), &bytes)
    }

    /// The run of missing pages with data around `offset` (which is one),
    /// within its aligned block of [`AROUND_PAGES`] and its region: (first
    /// offset, pages). Just the one page once the guest has discarded any
    /// memory, whose pages must read as zeros.
    fn run_around(&self, region: &Region, offset: u64) -> (u64, u64) {
        if !self.removed.is_empty() {
            return (offset, 1);
        }
        let page = PAGE as u64;
        let block = AROUND_PAGES * page;
        let low = (offset / block * block).max(region.offset);
        let high = (offset / block * block + block).min(region.offset + region.len);
        let missing = |at: u64| !self.installed.get(at) && overlaps_data(&self.data, at);
        let mut start = offset;
        while start > low && missing(start - page) {
            start -= page;
        }
        let mut end = offset + page;
        while end < high && missing(end) {
            end += page;
        }
        (start, (end - start) / page)
    }

    /// `[start, end)` (host addresses) was discarded: it reads as zeros
    /// from now on, and its pages are missing again.
    fn remove(&mut self, start: u64, end: u64) {
        self.removed.push((start, end));
        for region in &self.regions {
            let from = start.max(region.host);
            let to = end.min(region.host + region.len);
            if from < to {
                let offset = region.offset + (from - region.host);
                self.installed.set(offset, (to - from) / PAGE as u64, false);
            }
        }
    }

    /// Writes the working set when faults have paused (or `last`), and
    /// ends the recording once its window is over.
    fn flush(&mut self, last: bool) {
        let Some(recorder) = &mut self.recorder else {
            return;
        };
        let window_over = recorder
            .window_start
            .is_some_and(|start| start.elapsed() >= WINDOW);
        let due = recorder.offsets.len() > recorder.written
            && (last || window_over || recorder.last_fault.elapsed() >= QUIET);
        if due {
            let mut pages = vec![0u8; recorder.offsets.len() * PAGE];
            let mut result = Ok(());
            for (offset, page) in recorder.offsets.iter().zip(pages.chunks_mut(PAGE)) {
                result = self.file.read_exact_at(page, *offset);
                if result.is_err() {
                    break;
                }
            }
            let result = result.and_then(|()| {
                working_set::write(&recorder.path, recorder.identity, &recorder.offsets, &pages)
            });
            match result {
                Ok(()) => {
                    recorder.written = recorder.offsets.len();
                    tracing::info!(
                        "lazy restore: recorded a working set of {} pages in {}",
                        recorder.written,
                        recorder.path.display()
                    );
                }
                Err(error) => {
                    tracing::warn!(
                        "lazy restore: cannot write the working set {}: {error}",
                        recorder.path.display()
                    );
                    self.recorder = None;
                    return;
                }
            }
        }
        if window_over || last {
            self.recorder = None;
        }
    }
}

impl Recorder {
    fn note(&mut self, offset: u64) {
        let now = Instant::now();
        if self.window_start.is_none() && self.loaded.load(Ordering::Acquire) {
            self.window_start = Some(now);
        }
        if self.seen.insert(offset) {
            self.offsets.push(offset);
            self.last_fault = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_and_data_are_told_apart_per_page() {
        let data = [(0x1000, 0x3000), (0x5800, 0x6000)];
        for (offset, expected) in [
            (0x0, false),
            (0x1000, true),
            (0x2000, true),
            (0x3000, false),
            (0x4000, false),
            (0x5000, true),
            (0x6000, false),
        ] {
            assert_eq!(overlaps_data(&data, offset), expected, "{offset:#x}");
        }
    }

    /// Which pages of `memory`'s first region are resident.
    fn resident(memory: &GuestMemoryMmap, pages: usize) -> Vec<bool> {
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

    #[test]
    fn a_lazy_memory_serves_the_file_and_records_what_was_touched() {
        use std::io::{Seek, SeekFrom, Write};
        use vm_memory::Bytes;
        let dir = std::env::temp_dir().join(format!("sie-lazy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.mem");
        let mut file = File::create(&path).unwrap();
        file.set_len(16 * PAGE as u64).unwrap();
        file.seek(SeekFrom::Start(3 * PAGE as u64)).unwrap();
        file.write_all(&[0xab; PAGE]).unwrap();
        drop(file);
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 16 * PAGE as u64,
        }];
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
        let ws = working_set::path_for(&path);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ws.exists() {
            assert!(Instant::now() < deadline, "no working set written");
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(lazy);
        let identity = Identity::of(&std::fs::metadata(&path).unwrap());
        let set = working_set::read(&ws, identity).unwrap().unwrap();
        assert_eq!(set.offsets, vec![3 * PAGE as u64, 7 * PAGE as u64]);
        assert_eq!(set.pages[0], 0xab);

        // The next one installs them before anything touches memory.
        let again = open(&path, &layout, &Seccomp::disabled()).unwrap();
        assert_eq!(again.prefetched_pages, 2);
        assert_eq!(again.memory.read_obj::<u8>(at(3)).unwrap(), 0xab);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
