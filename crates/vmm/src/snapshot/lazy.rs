//! The `Lazy` memory backend (a sie extension): guest RAM is anonymous and
//! registered with a userfaultfd that a thread of sie itself (`sie_uffd`,
//! with its own seccomp filter) serves from the memory file: a page the
//! file holds is copied in (`UFFDIO_COPY`), a hole becomes a zero page
//! (`UFFDIO_ZEROPAGE`). No external handler can die and hang the guest.
//!
//! A restore with no usable working set ([`super::working_set`]) records
//! one: the pages the guest touches, in order, written beside the memory
//! file each time faults pause for [`QUIET`], until [`WINDOW`] after the
//! guest's first fault. A restore that finds one reads it in one pass and
//! installs its pages before the vCPUs run; the rest still fault in.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sie_hv::GuestMemory;
use sie_seccomp::{Seccomp, ThreadKind};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::memory_file::{MemoryFileError, RegionEntry, data_extents, file_len};
use super::uffd::{self, Event, PAGE, Uffd};
use super::working_set::{self, Identity};

/// Faults pausing this long write the working set recorded so far.
pub const QUIET: Duration = Duration::from_millis(500);
/// How long after the guest's first fault the working set is recorded.
pub const WINDOW: Duration = Duration::from_secs(10);

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
pub fn anonymous(layout: &[RegionEntry]) -> std::io::Result<GuestMemory> {
    let mut ranges = Vec::with_capacity(layout.len());
    for entry in layout {
        let len = usize::try_from(entry.len).map_err(std::io::Error::other)?;
        ranges.push((GuestAddress(entry.guest_addr), len));
    }
    GuestMemory::from_ranges(&ranges).map_err(|e| std::io::Error::other(e.to_string()))
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

fn regions_of(memory: &GuestMemory) -> Vec<Region> {
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
        uffd::FEATURE_EVENT_REMOVE | uffd::FEATURE_EVENT_UNMAP,
    )
    .map_err(|e| io_error(std::io::Error::other(format!("userfaultfd: {e}"))))?;
    let regions = regions_of(&memory);
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
}

/// The `sie_uffd` thread's state.
struct Handler {
    uffd: Uffd,
    file: File,
    regions: Vec<Region>,
    data: Vec<(u64, u64)>,
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
                    Ok(Some(Event::PageFault(address))) => {
                        if let Err(error) = self.fault(address & !(PAGE as u64 - 1)) {
                            tracing::error!("lazy restore: serving {address:#x}: {error}");
                        }
                    }
                    Ok(Some(Event::Remove(start, end))) => self.removed.push((start, end)),
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

    fn fault(&mut self, host: u64) -> std::io::Result<()> {
        if self.removed.iter().any(|&(s, e)| host >= s && host < e) {
            return self.uffd.zero(host, PAGE as u64);
        }
        let Some(region) = self
            .regions
            .iter()
            .find(|r| host >= r.host && host < r.host + r.len)
        else {
            return Err(std::io::Error::other("a fault outside guest RAM"));
        };
        let offset = region.offset + (host - region.host);
        if let Some(recorder) = &mut self.recorder {
            recorder.note(offset);
        }
        if !overlaps_data(&self.data, offset) {
            return self.uffd.zero(host, PAGE as u64);
        }
        let mut page = [0u8; PAGE];
        self.file.read_exact_at(&mut page, offset)?;
        self.uffd.copy(host, &page)
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
        assert_eq!(lazy.memory.read_obj::<u8>(at(3)).unwrap(), 0xab);
        assert_eq!(lazy.memory.read_obj::<u8>(at(7)).unwrap(), 0, "a hole");
        lazy.memory.write_obj(5u8, at(7)).unwrap();
        assert_eq!(lazy.memory.read_obj::<u8>(at(7)).unwrap(), 5);
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
