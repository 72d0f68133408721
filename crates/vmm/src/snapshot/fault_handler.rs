//! The `sie_uffd` thread of a `Lazy` restore ([`super::lazy`]): it waits
//! on the userfaultfd and fills each missing page of guest RAM from the
//! memory file (`UFFDIO_COPY`, with the missing data pages of its aligned
//! block: fault-around) or with zeros for a hole or discarded memory
//! (`UFFDIO_ZEROPAGE`), and, when asked, records which pages the vCPUs
//! touched first and writes them as the working set.
//!
//! It stops when guest RAM is unmapped (the VM is gone).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sie_hv::GuestMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::uffd::{Event, PAGE, Uffd};
use super::working_set::{self, Identity};

/// Faults pausing this long write the working set recorded so far.
pub const QUIET: Duration = Duration::from_millis(500);
/// How long after the guest's first fault the working set is recorded.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A fault on a page of the file's data also brings in its missing
/// neighbours with data within this many pages (aligned), in one copy:
/// guests touch memory in runs, and each fault costs a round trip.
pub const AROUND_PAGES: u64 = 16;

/// A set of pages of guest RAM, by file offset: which the handler has
/// installed (a present page is never copied over, `UFFDIO_COPY` refuses
/// it; this only keeps fault-around from asking), and which the guest
/// discarded (they read as zeros from then on, not as the file).
pub(super) struct PageSet(Vec<u64>);

impl PageSet {
    /// No pages of a file of `file_len` bytes.
    pub(super) fn new(file_len: u64) -> Self {
        Self(vec![0; (file_len / PAGE as u64).div_ceil(64) as usize])
    }

    fn get(&self, offset: u64) -> bool {
        let page = offset / PAGE as u64;
        self.0
            .get((page / 64) as usize)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    /// Puts `pages` pages from `offset` in the set (`value`) or out of it.
    pub(super) fn set(&mut self, offset: u64, pages: u64, value: bool) {
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

/// Whether the page at `offset` holds any of the file's data (`data` is
/// sorted and disjoint, so the first extent ending after it decides).
pub(super) fn overlaps_data(data: &[(u64, u64)], offset: u64) -> bool {
    let first = data.partition_point(|&(_, end)| end <= offset);
    data.get(first)
        .is_some_and(|&(start, _)| start < offset + PAGE as u64)
}

/// One registered region: where it is in sie and in the file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Region {
    host: u64,
    len: u64,
    offset: u64,
}

/// Each region of `memory`, as the handler looks faults up.
pub(super) fn regions_of(memory: &GuestMemory) -> Vec<Region> {
    memory
        .iter()
        .map(|r| Region {
            host: r.as_ptr() as u64,
            len: r.len(),
            offset: r.start_addr().0,
        })
        .collect()
}

/// Where the `len` bytes at file `offset` are mapped in sie, if one region
/// holds them all.
pub(super) fn host_of(regions: &[Region], offset: u64, len: u64) -> Option<u64> {
    regions
        .iter()
        .find(|r| offset >= r.offset && offset + len <= r.offset + r.len)
        .map(|r| r.host + (offset - r.offset))
}

/// What the handler records while the guest warms up.
pub(super) struct Recorder {
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
pub(super) struct Handler {
    uffd: Uffd,
    file: File,
    regions: Vec<Region>,
    data: Vec<(u64, u64)>,
    installed: PageSet,
    /// Pages the guest discarded: they read as zeros now.
    discarded: PageSet,
    recorder: Option<Recorder>,
    /// Written when the VM has ended: write what was recorded now, then
    /// say so on `flushed` (the process may exit before guest RAM is
    /// unmapped, which would otherwise be the last word).
    finish: Option<(vmm_sys_util::eventfd::EventFd, std::sync::mpsc::Sender<()>)>,
}

impl Handler {
    /// Lets the VMM ask, through `finish`, for the recording to be written
    /// before the process ends; the answer comes on `flushed`.
    pub(super) fn with_finish(
        mut self,
        finish: vmm_sys_util::eventfd::EventFd,
        flushed: std::sync::mpsc::Sender<()>,
    ) -> Self {
        self.finish = Some((finish, flushed));
        self
    }

    /// A handler for `regions` of guest RAM registered with `uffd`, filled
    /// from `file` (whose `data` extents hold data); `installed` has the
    /// pages already there; `recorder` records the working set.
    pub(super) fn new(
        uffd: Uffd,
        file: File,
        regions: Vec<Region>,
        data: Vec<(u64, u64)>,
        installed: PageSet,
        recorder: Option<Recorder>,
    ) -> Self {
        let discarded = PageSet::new(regions.iter().map(|r| r.offset + r.len).max().unwrap_or(0));
        Self {
            uffd,
            file,
            regions,
            data,
            installed,
            discarded,
            recorder,
            finish: None,
        }
    }

    /// Serves faults until guest RAM is unmapped or the userfaultfd fails.
    pub(super) fn serve(mut self) {
        let mut unmapped = 0;
        loop {
            let timeout_ms = self.poll_timeout_ms();
            let mut polls = [
                libc::pollfd {
                    fd: self.uffd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.finish.as_ref().map_or(-1, |(fd, _)| fd.as_raw_fd()),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds for the duration of the call (a
            // negative fd is ignored by poll).
            unsafe { libc::poll(polls.as_mut_ptr(), 2, timeout_ms) };
            if polls[1].revents & libc::POLLIN != 0 {
                self.finish_recording();
            }
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

    /// The VM has ended: what was recorded is written now and the
    /// recording ends; faults are still served (the VMM may read guest RAM
    /// after its vCPUs are gone, to write a core).
    fn finish_recording(&mut self) {
        let Some((fd, flushed)) = self.finish.take() else {
            return;
        };
        let _ = fd.read();
        self.flush(true);
        self.recorder = None;
        let _ = flushed.send(());
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
        let Some(region) = self
            .regions
            .iter()
            .find(|r| host >= r.host && host < r.host + r.len)
            .copied()
        else {
            return Err(std::io::Error::other("a fault outside guest RAM"));
        };
        let offset = region.offset + (host - region.host);
        if self.discarded.get(offset) {
            self.installed.set(offset, 1, true);
            return self.uffd.zero(host, PAGE as u64);
        }
        let recorder = self
            .recorder
            .as_mut()
            .filter(|recorder| thread != recorder.vmm_thread);
        if !overlaps_data(&self.data, offset) {
            if let Some(recorder) = recorder {
                recorder.note(offset);
            }
            self.installed.set(offset, 1, true);
            return self.uffd.zero(host, PAGE as u64);
        }
        let recording = recorder.is_some();
        let (start, pages) = self.run_around(&region, offset);
        // The whole run goes in the working set, not just the page that
        // faulted: a prefetch of only that page would leave its neighbours
        // to fault one run at a time, as many faults as without a working
        // set (a guest rewriting 41 MiB recorded 659 pages of its 10,500).
        if let Some(recorder) = self.recorder.as_mut().filter(|_| recording) {
            for page in 0..pages {
                recorder.note(start + page * PAGE as u64);
            }
        }
        let mut bytes = vec![0u8; (pages as usize) * PAGE];
        self.file.read_exact_at(&mut bytes, start)?;
        self.installed.set(start, pages, true);
        self.uffd
            .copy(region.host + (start - region.offset), &bytes)
    }

    /// The run of missing pages with the file's data around `offset` (one
    /// of them), within its aligned block of [`AROUND_PAGES`] and its
    /// region, that the guest never discarded: (first offset, pages).
    fn run_around(&self, region: &Region, offset: u64) -> (u64, u64) {
        let page = PAGE as u64;
        let block = AROUND_PAGES * page;
        let low = (offset / block * block).max(region.offset);
        let high = (offset / block * block + block).min(region.offset + region.len);
        let missing = |at: u64| {
            !self.installed.get(at) && !self.discarded.get(at) && overlaps_data(&self.data, at)
        };
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
        for region in &self.regions {
            let from = start.max(region.host);
            let to = end.min(region.host + region.len);
            if from < to {
                let offset = region.offset + (from - region.host);
                let pages = (to - from) / PAGE as u64;
                self.installed.set(offset, pages, false);
                self.discarded.set(offset, pages, true);
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
    /// Records into `path` for the memory file `identity`; the recording
    /// window opens at the first fault after `loaded`. Faults of the
    /// calling thread (the VMM thread) are not recorded.
    pub(super) fn new(path: PathBuf, identity: Identity, loaded: Arc<AtomicBool>) -> Self {
        Self {
            path,
            identity,
            offsets: Vec::new(),
            seen: std::collections::HashSet::new(),
            written: 0,
            window_start: None,
            last_fault: Instant::now(),
            loaded,
            // SAFETY: gettid has no arguments and cannot fail.
            vmm_thread: unsafe { libc::gettid() } as u32,
        }
    }

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
}
