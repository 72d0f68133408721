//! virtio-balloon (device type 5, virtio 1.2 §5.5) with Firecracker's
//! options: the host sets a target (`num_pages`), the driver inflates
//! (gives pages to the host, which drops their backing through a
//! [`PageDiscard`]) or deflates towards it and writes `actual`.
//!
//! Queues, in the order Linux numbers them (only those whose feature the
//! driver accepted get an index): inflate, deflate, then stats
//! (`VIRTIO_BALLOON_F_STATS_VQ`, offered when `stats_interval_s > 0`),
//! free page hinting (`F_FREE_PAGE_HINT`) and free page reporting
//! (`F_REPORTING`). `F_DEFLATE_ON_OOM` lets the guest take pages back
//! under memory pressure.
//!
//! Statistics: the driver hands the device one buffer; the device keeps
//! it and gives it back every `stats_interval_s` (its timerfd), and the
//! driver refills it with fresh numbers.
//!
//! Hinting follows Firecracker's endpoints: [`Balloon::start_hinting`]
//! publishes a new command id in `free_page_hint_cmd_id`; the driver
//! answers with that id, hints free pages (dropped here while the run is
//! on) and sends `STOP` when done; the host then writes `DONE` (at once
//! with `acknowledge_on_stop`, else on [`Balloon::stop_hinting`]) so the
//! driver frees the pages it held.
//!
//! Guest input is hostile: page numbers outside RAM are skipped and
//! counted, a request of more than [`MAX_PFNS`] page numbers or of the
//! wrong direction fails whole, a second stats buffer sent while the
//! first is held returns the first (counted), and unusable rings mark the
//! device NEEDS_RESET.

mod counters;
mod discard;
mod stats;

#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BALLOON;
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend as _, GuestMemoryRegion, Permissions,
};
use vmm_sys_util::timerfd::TimerFd;

pub use counters::BalloonCounters;
pub use discard::{BALLOON_PAGE, HostDiscard, PageDiscard};
pub use stats::{GuestStats, STAT_NAMES};

use crate::chain::{Segment, Taken, drain_queue_with};
use crate::counters::VirtioCounters;
use crate::device::{ActivateError, Activation, VirtioDevice, read_config_bytes};
use crate::device_state::{BalloonState, DeviceState};
use crate::fault::DeviceFault;
use crate::interrupt::VirtioInterrupt;
use crate::memory::GuestMemory;

/// Queue size offered for every queue.
pub const BALLOON_QUEUE_SIZE: u16 = 256;
/// Most page numbers one inflate or deflate request may carry (Linux
/// sends at most 256); a longer request fails whole.
pub const MAX_PFNS: usize = 64 * 1024;

/// The host must be told before a deflated page is used (not offered).
pub const VIRTIO_BALLOON_F_MUST_TELL_HOST: u32 = 0;
/// A statistics queue.
pub const VIRTIO_BALLOON_F_STATS_VQ: u32 = 1;
/// The guest deflates under memory pressure.
pub const VIRTIO_BALLOON_F_DEFLATE_ON_OOM: u32 = 2;
/// Free page hinting and `free_page_hint_cmd_id`.
pub const VIRTIO_BALLOON_F_FREE_PAGE_HINT: u32 = 3;
/// Free page reporting.
pub const VIRTIO_BALLOON_F_REPORTING: u32 = 5;

/// Hinting command id: stop hinting (also the driver's "run finished").
pub const CMD_ID_STOP: u32 = 0;
/// Hinting command id: the run is over, free the held pages.
pub const CMD_ID_DONE: u32 = 1;
/// The first command id of a hinting run.
const FIRST_RUN_ID: u32 = 2;

/// Configuration space: num_pages, actual, free_page_hint_cmd_id, poison_val.
const CONFIG_LEN: usize = 16;
/// Offset of `actual`, the one field the driver writes.
const ACTUAL_OFFSET: usize = 4;

/// What the balloon offers, fixed when it is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonOptions {
    /// The first target, in 4 KiB pages.
    pub target_pages: u32,
    /// Offer `VIRTIO_BALLOON_F_DEFLATE_ON_OOM`.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0: no stats queue.
    pub stats_interval_s: u16,
    /// Offer free page reporting.
    pub free_page_reporting: bool,
    /// Offer free page hinting.
    pub free_page_hinting: bool,
}

/// Why a balloon request from the host was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonError {
    /// Statistics were not enabled when the balloon was configured.
    #[error("Statistics for the balloon device are not enabled")]
    StatsDisabled,
    /// Statistics cannot be switched on or off once the VM runs.
    #[error(
        "Cannot enable or disable balloon statistics after boot; change the interval to a non-zero value only"
    )]
    StatsToggle,
    /// Hinting was not enabled when the balloon was configured.
    #[error("Free page hinting is not enabled on the balloon device")]
    HintingDisabled,
    /// The guest's driver has not started the device.
    #[error("The balloon device is not activated by the guest yet")]
    NotActive,
    /// The stats timer could not be set.
    #[error("balloon statistics timer: {0}")]
    Timer(String),
}

/// Free page hinting as `GET /balloon/hinting/status` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HintingStatus {
    /// The last command id the host published.
    pub host_cmd: u32,
    /// The last command id the driver sent, if any.
    pub guest_cmd: Option<u32>,
}

/// Queue indexes as the driver numbered them (by accepted features).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct QueueIndexes {
    stats: Option<usize>,
    hint: Option<usize>,
    report: Option<usize>,
}

const INFLATE: usize = 0;
const DEFLATE: usize = 1;

impl QueueIndexes {
    fn from_features(acked: u64) -> Self {
        let mut next = 2;
        let mut take = |bit: u32| {
            (acked & (1 << bit) != 0).then(|| {
                next += 1;
                next - 1
            })
        };
        Self {
            stats: take(VIRTIO_BALLOON_F_STATS_VQ),
            hint: take(VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            report: take(VIRTIO_BALLOON_F_REPORTING),
        }
    }
}

/// What the balloon keeps while the driver is live.
struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: VirtioInterrupt,
    indexes: QueueIndexes,
    /// The stats buffer the device holds until the next refresh.
    stats_head: Option<u16>,
}

/// The balloon device.
pub struct Balloon {
    options: BalloonOptions,
    target_pages: u32,
    actual_pages: u32,
    stats_interval_s: u16,
    stats: GuestStats,
    stats_timer: TimerFd,
    stats_due: bool,
    hint: HintingStatus,
    ack_on_stop: bool,
    next_run_id: u32,
    max_sizes: Vec<u16>,
    discard: Box<dyn PageDiscard>,
    counters: Arc<VirtioCounters>,
    balloon_counters: Arc<BalloonCounters>,
    active: Option<Active>,
}

impl Balloon {
    /// A balloon offering what `options` asks for, giving pages back
    /// through `discard`.
    pub fn new(options: BalloonOptions, discard: Box<dyn PageDiscard>) -> std::io::Result<Self> {
        let queues = 2
            + usize::from(options.stats_interval_s > 0)
            + usize::from(options.free_page_hinting)
            + usize::from(options.free_page_reporting);
        let mut stats_timer = crate::rate_limiter::nonblocking_timer()?;
        if options.stats_interval_s > 0 {
            // Ticks from now on, live driver or not: activation and reset
            // run on vCPU threads, which must not touch timers. Linux offers
            // its first stats buffer (and kicks, before DRIVER_OK, when the
            // transport serves nothing) at probe: the first tick after
            // activation takes it and asks for fresh numbers.
            let every = Duration::from_secs(u64::from(options.stats_interval_s));
            stats_timer.reset(every, Some(every))?;
        }
        Ok(Self {
            options,
            target_pages: options.target_pages,
            actual_pages: 0,
            stats_interval_s: options.stats_interval_s,
            stats: GuestStats::default(),
            stats_timer,
            stats_due: false,
            hint: HintingStatus::default(),
            ack_on_stop: true,
            next_run_id: FIRST_RUN_ID,
            max_sizes: vec![BALLOON_QUEUE_SIZE; queues],
            discard,
            counters: Arc::default(),
            balloon_counters: Arc::default(),
            active: None,
        })
    }

    /// The balloon's own counters.
    pub fn balloon_counters(&self) -> &Arc<BalloonCounters> {
        &self.balloon_counters
    }

    /// The target, in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.target_pages
    }

    /// What the driver says the balloon holds, in 4 KiB pages.
    pub fn actual_pages(&self) -> u32 {
        self.actual_pages
    }

    /// A new target; the caller tells the driver (a configuration change).
    pub fn set_target_pages(&mut self, pages: u32) {
        self.target_pages = pages;
    }

    /// The latest statistics, if statistics are on.
    pub fn stats(&self) -> Result<GuestStats, BalloonError> {
        if self.options.stats_interval_s == 0 {
            return Err(BalloonError::StatsDisabled);
        }
        Ok(self.stats)
    }

    /// The statistics interval now, in seconds.
    pub fn stats_interval_s(&self) -> u16 {
        self.stats_interval_s
    }

    /// A new statistics interval; the next refresh is at once. Stats
    /// cannot be switched on or off (the stats queue exists or not).
    pub fn set_stats_interval(&mut self, seconds: u16) -> Result<(), BalloonError> {
        if self.options.stats_interval_s == 0 {
            return Err(if seconds == 0 {
                BalloonError::StatsDisabled
            } else {
                BalloonError::StatsToggle
            });
        }
        if seconds == 0 {
            return Err(BalloonError::StatsToggle);
        }
        self.stats_interval_s = seconds;
        // Called on the VMM thread, which may set timers.
        self.arm_stats_timer(Duration::from_micros(1))
    }

    fn arm_stats_timer(&mut self, first: Duration) -> Result<(), BalloonError> {
        let every = Duration::from_secs(u64::from(self.stats_interval_s));
        self.stats_timer
            .reset(first, Some(every))
            .map_err(|e| BalloonError::Timer(e.to_string()))
    }

    /// Starts a hinting run: a fresh command id for the driver (the
    /// caller tells it: a configuration change).
    pub fn start_hinting(&mut self, acknowledge_on_stop: bool) -> Result<(), BalloonError> {
        self.hinting_live()?;
        self.hint.host_cmd = self.next_run_id;
        self.next_run_id = self.next_run_id.wrapping_add(1).max(FIRST_RUN_ID);
        self.ack_on_stop = acknowledge_on_stop;
        Ok(())
    }

    /// Ends a hinting run: `DONE`, so the driver frees the pages it held
    /// (the caller tells it).
    pub fn stop_hinting(&mut self) -> Result<(), BalloonError> {
        self.hinting_live()?;
        self.hint.host_cmd = CMD_ID_DONE;
        Ok(())
    }

    /// The last command ids of each side.
    pub fn hinting_status(&self) -> Result<HintingStatus, BalloonError> {
        if !self.options.free_page_hinting {
            return Err(BalloonError::HintingDisabled);
        }
        Ok(self.hint)
    }

    fn hinting_live(&self) -> Result<(), BalloonError> {
        if !self.options.free_page_hinting {
            return Err(BalloonError::HintingDisabled);
        }
        if self.active.is_none() {
            return Err(BalloonError::NotActive);
        }
        Ok(())
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[0..4].copy_from_slice(&self.target_pages.to_le_bytes());
        config[4..8].copy_from_slice(&self.actual_pages.to_le_bytes());
        config[8..12].copy_from_slice(&self.hint.host_cmd.to_le_bytes());
        config
    }
}

/// The page numbers of an inflate or deflate request and whether bytes
/// were left over past the last whole one, or `None` for a request that
/// fails whole (wrong direction, too long).
fn read_pfns(mem: &GuestMemory, buffers: &[Segment]) -> Option<(Vec<u32>, bool)> {
    if buffers.iter().any(|s| s.writable) {
        return None;
    }
    let total: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
    if total > (MAX_PFNS * 4) as u64 {
        return None;
    }
    let mut bytes = Vec::with_capacity(total as usize);
    for segment in buffers {
        let start = bytes.len();
        bytes.resize(start + segment.len as usize, 0);
        mem.read_slice(&mut bytes[start..], segment.addr).ok()?;
    }
    let pfns = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some((pfns, !bytes.len().is_multiple_of(4)))
}

/// The guest address of `pfn` if its whole page is RAM.
fn page_of(mem: &GuestMemory, pfn: u32) -> Option<GuestAddress> {
    let addr = GuestAddress(u64::from(pfn) * BALLOON_PAGE);
    vm_memory::GuestMemory::check_range(mem, addr, BALLOON_PAGE as usize, Permissions::Write)
        .then_some(addr)
}

/// The start of the RAM region holding `addr` (runs never cross regions).
fn region_start(mem: &GuestMemory, addr: GuestAddress) -> Option<GuestAddress> {
    mem.find_region(addr).map(|r| r.start_addr())
}

impl Balloon {
    fn discard(&self, mem: &GuestMemory, addr: GuestAddress, len: u64) {
        match self.discard.discard(mem, addr, len) {
            Ok(bytes) => self.balloon_counters.discarded(bytes),
            Err(error) => {
                self.balloon_counters.discard_failure();
                tracing::debug!(%error, addr = addr.0, len, "cannot drop guest pages");
            }
        }
    }

    /// Inflate: drop each run of consecutive valid pages. Returns how many
    /// pages were valid.
    fn inflate(&self, mem: &GuestMemory, pfns: &[u32]) -> u64 {
        let mut valid = 0;
        let mut run: Option<(GuestAddress, u64, GuestAddress)> = None;
        for &pfn in pfns {
            let Some(addr) = page_of(mem, pfn) else {
                self.balloon_counters.invalid_pfn();
                continue;
            };
            valid += 1;
            let region = region_start(mem, addr).unwrap_or(addr);
            run = match run {
                Some((start, len, r)) if r == region && start.checked_add(len) == Some(addr) => {
                    Some((start, len + BALLOON_PAGE, r))
                }
                Some((start, len, _)) => {
                    self.discard(mem, start, len);
                    Some((addr, BALLOON_PAGE, region))
                }
                None => Some((addr, BALLOON_PAGE, region)),
            };
        }
        if let Some((start, len, _)) = run {
            self.discard(mem, start, len);
        }
        valid
    }

    /// Serves the inflate or deflate queue.
    fn serve_pages(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = self.drain(&mut active, index, |this, mem, _head, buffers| {
            // A broken chain was counted by the drain already.
            let Ok(buffers) = buffers else {
                return Taken::Used(0);
            };
            let Some((pfns, torn)) = read_pfns(mem, &buffers) else {
                this.counters.error();
                return Taken::Used(0);
            };
            if torn {
                // Bytes past the last whole page number: ignored, counted.
                this.counters.error();
            }
            if index == INFLATE {
                let pages = this.inflate(mem, &pfns);
                this.balloon_counters.inflated(pages);
            } else {
                let valid = pfns.iter().filter(|p| page_of(mem, **p).is_some()).count();
                for _ in valid..pfns.len() {
                    this.balloon_counters.invalid_pfn();
                }
                this.balloon_counters.deflated(valid as u64);
            }
            this.counters.wrote_bytes(pfns.len() as u64 * 4);
            Taken::Used(0)
        });
        self.active = Some(active);
        result
    }

    /// Serves the reporting queue, or the hinting queue's page buffers:
    /// every buffer is a free range the host may drop.
    fn drop_ranges(&self, mem: &GuestMemory, buffers: &[Segment], reporting: bool) {
        for segment in buffers {
            let len = u64::from(segment.len);
            if reporting {
                self.balloon_counters.reported(len);
            } else {
                self.balloon_counters.hinted(len);
            }
            self.discard(mem, segment.addr, len);
        }
    }

    fn serve_report(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let result = self.drain(&mut active, index, |this, mem, _head, buffers| {
            match buffers {
                Ok(b) if b.iter().all(|s| s.writable) => this.drop_ranges(mem, &b, true),
                Ok(_) => this.counters.error(),
                // Counted by the drain already.
                Err(_) => {}
            }
            Taken::Used(0)
        });
        self.active = Some(active);
        result
    }

    fn serve_hint(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let mut acked = false;
        let result = self.drain(&mut active, index, |this, mem, _head, buffers| {
            let Ok(buffers) = buffers else {
                return Taken::Used(0);
            };
            match buffers.as_slice() {
                // The driver's command id: 4 device-readable bytes.
                [cmd] if !cmd.writable && cmd.len == 4 => {
                    let Ok(id) = mem.read_obj::<u32>(cmd.addr) else {
                        this.counters.error();
                        return Taken::Used(0);
                    };
                    this.hint.guest_cmd = Some(id);
                    if id == CMD_ID_STOP && this.ack_on_stop && this.hint.host_cmd >= FIRST_RUN_ID {
                        this.hint.host_cmd = CMD_ID_DONE;
                        acked = true;
                    }
                }
                pages if pages.iter().all(|s| s.writable) => {
                    let run = this.hint.host_cmd;
                    if run >= FIRST_RUN_ID && this.hint.guest_cmd == Some(run) {
                        this.drop_ranges(mem, pages, false);
                    }
                }
                _ => this.counters.error(),
            }
            Taken::Used(0)
        });
        if acked {
            active.interrupt.signal_config();
        }
        self.active = Some(active);
        result
    }

    fn serve_stats(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let mut held = active.stats_head.take();
        let mut to_return = Vec::new();
        let mut result = self.drain(&mut active, index, |this, mem, head, buffers| {
            // Only a usable buffer is held; others go straight back (a
            // broken chain was counted by the drain already).
            let buffers = match buffers {
                Ok(b) if b.iter().all(|s| !s.writable) => b,
                Ok(_) => {
                    this.counters.error();
                    return Taken::Used(0);
                }
                Err(_) => return Taken::Used(0),
            };
            if let Some(old) = held.replace(head) {
                // The driver had a buffer out already: stats queue abuse.
                // The old one goes back, the newest is kept.
                this.counters.error();
                to_return.push(old);
            }
            this.read_stats(mem, &buffers);
            Taken::InFlight
        });
        active.stats_head = held;
        if result.is_ok() {
            result = self.return_stats(&mut active, index, to_return);
        }
        self.active = Some(active);
        result
    }

    /// Puts back the stats buffers given back early, and the held one if
    /// a refresh is due (the driver refills it).
    fn return_stats(
        &mut self,
        active: &mut Active,
        index: usize,
        mut heads: Vec<u16>,
    ) -> Result<(), DeviceFault> {
        if self.stats_due
            && let Some(head) = active.stats_head.take()
        {
            heads.push(head);
            self.stats_due = false;
        }
        let Some(queue) = active.queues.get_mut(index) else {
            return Ok(());
        };
        if heads.is_empty() {
            return Ok(());
        }
        let ring_fault = |counters: &VirtioCounters| {
            counters.error();
            DeviceFault::RingAccess
        };
        for head in heads {
            queue
                .add_used(&active.mem, head, 0)
                .map_err(|_| ring_fault(&self.counters))?;
        }
        if queue
            .needs_notification(&active.mem)
            .map_err(|_| ring_fault(&self.counters))?
        {
            active.interrupt.signal_used(index);
        }
        Ok(())
    }

    fn read_stats(&mut self, mem: &GuestMemory, buffers: &[Segment]) {
        let mut bytes = Vec::new();
        for segment in buffers {
            let room = stats::MAX_STATS_LEN - bytes.len();
            let take = (segment.len as usize).min(room);
            let start = bytes.len();
            bytes.resize(start + take, 0);
            if mem.read_slice(&mut bytes[start..], segment.addr).is_err() {
                self.counters.error();
                return;
            }
        }
        if !self.stats.update(&bytes) {
            self.counters.error();
        }
        self.balloon_counters.stats_update();
    }

    /// Drains queue `index` with `serve` (given the device, guest memory,
    /// the chain's head and buffers) and interrupts if the driver wants.
    fn drain(
        &mut self,
        active: &mut Active,
        index: usize,
        mut serve: impl FnMut(
            &mut Self,
            &GuestMemory,
            u16,
            Result<Vec<Segment>, crate::ChainError>,
        ) -> Taken,
    ) -> Result<(), DeviceFault> {
        let Some(queue) = active.queues.get_mut(index) else {
            return Ok(());
        };
        let mem = &active.mem;
        let counters = Arc::clone(&self.counters);
        let used = drain_queue_with(queue, mem, &counters, |head, buffers| {
            serve(self, mem, head, buffers)
        })?;
        if used
            && queue.needs_notification(mem).map_err(|_| {
                counters.error();
                DeviceFault::RingAccess
            })?
        {
            active.interrupt.signal_used(index);
        }
        Ok(())
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BALLOON
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.max_sizes
    }

    fn features(&self) -> u64 {
        let o = &self.options;
        let mut features = 1 << VIRTIO_F_VERSION_1;
        for (on, bit) in [
            (o.stats_interval_s > 0, VIRTIO_BALLOON_F_STATS_VQ),
            (o.deflate_on_oom, VIRTIO_BALLOON_F_DEFLATE_ON_OOM),
            (o.free_page_hinting, VIRTIO_BALLOON_F_FREE_PAGE_HINT),
            (o.free_page_reporting, VIRTIO_BALLOON_F_REPORTING),
        ] {
            if on {
                features |= 1 << bit;
            }
        }
        features
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> bool {
        // Only `actual`, whole.
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        if offset != ACTUAL_OFFSET {
            return false;
        }
        self.actual_pages = u32::from_le_bytes(bytes);
        true
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let indexes = QueueIndexes::from_features(activation.acked_features);
        let needed = [Some(INFLATE), Some(DEFLATE), indexes.stats, indexes.hint]
            .into_iter()
            .chain([indexes.report])
            .flatten();
        for index in needed {
            if !activation.queues.get(index).is_some_and(|q| q.ready()) {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
            indexes,
            stats_head: None,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(indexes) = self.active.as_ref().map(|a| a.indexes) else {
            return Ok(());
        };
        match Some(index) {
            Some(INFLATE | DEFLATE) => self.serve_pages(index),
            i if i == indexes.stats => self.serve_stats(index),
            i if i == indexes.hint => self.serve_hint(index),
            i if i == indexes.report => self.serve_report(index),
            _ => Ok(()),
        }
    }

    fn reset(&mut self) {
        // The stats timer keeps ticking (it is not touched here: this runs
        // on a vCPU thread, whose seccomp filter has no timer calls); its
        // ticks are ignored while the driver is not live.
        self.active = None;
        self.stats_due = false;
        self.actual_pages = 0;
    }

    fn quiesce(&mut self) -> Result<(), DeviceFault> {
        // The held stats buffer goes back, so the rings hold all state.
        let Some(stats) = self.active.as_ref().and_then(|a| a.indexes.stats) else {
            return Ok(());
        };
        self.stats_due = true;
        self.serve_stats(stats)
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }

    fn save_state(&self) -> Option<DeviceState> {
        Some(DeviceState::Balloon(BalloonState {
            target_pages: self.target_pages,
            actual_pages: self.actual_pages,
            stats_interval_s: self.stats_interval_s,
            hint_host_cmd: self.hint.host_cmd,
            hint_guest_cmd: self.hint.guest_cmd,
            hint_ack_on_stop: self.ack_on_stop,
            hint_next_run_id: self.next_run_id,
        }))
    }

    fn load_state(&mut self, saved: &DeviceState) -> Result<(), String> {
        let DeviceState::Balloon(saved) = saved;
        // The stats queue exists or not by configuration: a saved interval
        // must agree with it (the restore's configuration is the saved one).
        if (saved.stats_interval_s == 0) != (self.options.stats_interval_s == 0) {
            return Err(format!(
                "balloon statistics every {} s saved, {} s configured",
                saved.stats_interval_s, self.options.stats_interval_s
            ));
        }
        if saved.stats_interval_s != self.stats_interval_s {
            self.stats_interval_s = saved.stats_interval_s;
            let every = Duration::from_secs(u64::from(saved.stats_interval_s));
            self.arm_stats_timer(every).map_err(|e| e.to_string())?;
        }
        self.target_pages = saved.target_pages;
        self.actual_pages = saved.actual_pages;
        self.hint = HintingStatus {
            host_cmd: saved.hint_host_cmd,
            guest_cmd: saved.hint_guest_cmd,
        };
        self.ack_on_stop = saved.hint_ack_on_stop;
        self.next_run_id = saved.hint_next_run_id.max(FIRST_RUN_ID);
        Ok(())
    }

    fn timer_fds(&self) -> Vec<RawFd> {
        vec![self.stats_timer.as_raw_fd()]
    }

    fn timer_fired(&mut self, index: usize) -> Option<usize> {
        if index != 0 {
            return None;
        }
        // EAGAIN: nothing pending (a spurious wakeup).
        let _ = self.stats_timer.wait();
        let stats = self.active.as_ref()?.indexes.stats?;
        self.stats_due = true;
        Some(stats)
    }
}
