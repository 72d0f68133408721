//! virtio-blk (device type 2) over a raw image file.
//!
//! The event thread takes requests off the queue and checks them
//! (`request.rs`); the reads, writes and flushes run elsewhere, on the
//! drive's engine (`engine.rs`): a worker thread ([`IoEngine::Sync`]) or
//! io_uring ([`IoEngine::Async`]). Up to a queue's worth are in flight at
//! once; when the engine's eventfd fires, the event thread writes each
//! finished request's status and puts it in the used ring, so only the
//! event thread (under the transport's lock) ever touches the ring.
//!
//! [`CacheType`] is Firecracker's `cache_type`: with `Unsafe` the FLUSH
//! feature is not offered (a flush request anyway is UNSUPP); with
//! `Writeback` it is, and a flush is an fsync of the image.
//!
//! A [`RateLimiter`] charges each request one operation and its data
//! length in bytes (what the data buffers hold, header and status byte
//! apart) before it runs; a request it refuses stays on the ring until the
//! limiter's timer fires.

mod engine;
#[cfg(test)]
mod fault_tests;
mod in_flight;
mod op;
mod request;
#[cfg(test)]
mod tests;
mod uring;
mod worker;

use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};

pub use engine::IoEngine;
use engine::{Completion, Engine, Op, OpKind};
use in_flight::{InFlight, Pending};
pub use request::SECTOR_SIZE;
use request::{Disk, Done, Parsed};
pub use worker::ThreadSetup;

use super::chain::{Taken, drain_queue_with};
use super::rate_limiter::{LimiterConfig, RateLimiter, RateLimiterError};
use super::read_config_bytes;
use super::{
    ActivateError, Activation, ChainError, DeviceFault, GuestMemory, Segment, VirtioCore,
    VirtioCounters, VirtioDevice, VirtioInterrupt,
};

/// Queue size offered to the driver; also the most requests in flight.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data buffers per request we advertise (the header and status take two
/// descriptors of the queue).
pub const BLOCK_SEG_MAX: u32 = BLOCK_QUEUE_SIZE as u32 - 2;
/// Length of the configuration space we expose: capacity, size_max,
/// seg_max, geometry, blk_size (struct virtio_blk_config up to blk_size).
const CONFIG_LEN: usize = 24;

/// Firecracker's `cache_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// No FLUSH feature: the guest never waits for the host's disk.
    #[default]
    Unsafe,
    /// FLUSH offered; a flush is an fsync of the image.
    Writeback,
}

/// How a drive is set up besides its file and id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockOptions {
    /// Writes are refused (VIRTIO_BLK_F_RO).
    pub read_only: bool,
    /// Whether flushes are offered.
    pub cache: CacheType,
    /// What runs the I/O.
    pub engine: IoEngine,
}

/// What the device keeps while the driver is live.
struct Active {
    mem: Arc<GuestMemory>,
    queue: Queue,
    interrupt: VirtioInterrupt,
}

/// The block device.
pub struct Block {
    disk: Disk,
    counters: Arc<VirtioCounters>,
    limiter: RateLimiter,
    engine: Engine,
    in_flight: InFlight,
    active: Option<Active>,
}

/// Whether this host can run an [`IoEngine::Async`] drive (io_uring set
/// up and restricted as a drive's would be); the error says why not, in
/// one line. For refusing such a drive early (Firecracker's `PUT /drives`
/// does), before [`Block::new`] would.
pub fn async_engine_available() -> io::Result<()> {
    uring::Uring::new(1).map(drop)
}

/// The first 20 bytes of `id`, zero padded: what GET_ID returns (and what
/// shows up as /sys/block/vdX/serial).
fn serial(id: &str) -> [u8; VIRTIO_BLK_ID_BYTES as usize] {
    let mut out = [0u8; VIRTIO_BLK_ID_BYTES as usize];
    for (slot, byte) in out.iter_mut().zip(id.bytes()) {
        *slot = byte;
    }
    out
}

/// Usable size of `file`: whole sectors only. A block device (a partition,
/// an LVM or device-mapper volume, a loop device) is measured by seeking to
/// its end, since its metadata says 0 bytes (requests use positioned I/O,
/// so the offset left behind does not matter); anything else by its
/// metadata.
fn disk_size(file: &File) -> io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let metadata = file.metadata()?;
    // A block device's metadata says 0 bytes: its end says how large it is.
    let len = if metadata.file_type().is_block_device() {
        let mut file = file;
        io::Seek::seek(&mut file, io::SeekFrom::End(0))?
    } else {
        metadata.len()
    };
    Ok(len - len % SECTOR_SIZE)
}

impl Block {
    /// A disk backed by `file` (opened read-write unless
    /// `options.read_only`), identified to the guest as `id`, with no rate
    /// limit (see [`Self::update_rate_limiter`]). An Async engine sets up
    /// io_uring here and fails, saying so, where the host lacks it; a Sync
    /// engine's worker starts with [`Self::start_worker`].
    pub fn new(file: File, id: &str, options: BlockOptions) -> io::Result<Self> {
        let size = disk_size(&file)?;
        Ok(Self {
            disk: Disk {
                file: Arc::new(file),
                size,
                read_only: options.read_only,
                serial: serial(id),
                flush: options.cache == CacheType::Writeback,
            },
            counters: Arc::default(),
            limiter: RateLimiter::new(&LimiterConfig::default())?,
            engine: Engine::new(options.engine, BLOCK_QUEUE_SIZE)?,
            in_flight: InFlight::new(BLOCK_QUEUE_SIZE),
            active: None,
        })
    }

    /// Starts the Sync engine's worker thread `name`, which runs `setup`
    /// (its seccomp filter) before any I/O; requests wait until then.
    /// Nothing to start for io_uring.
    pub fn start_worker(&mut self, name: String, setup: ThreadSetup) -> io::Result<()> {
        self.engine.start(name, setup)
    }

    /// Requests handed to the engine and not yet finished (including ones
    /// a reset orphaned).
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The engine in use.
    pub fn io_engine(&self) -> IoEngine {
        self.engine.kind()
    }

    /// The cache type in use.
    pub fn cache_type(&self) -> CacheType {
        if self.disk.flush {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        }
    }

    /// Replaces the rate limiter; only before the device's worker is
    /// registered (it watches the limiter's timer).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    /// New limits (see [`crate::rate_limiter::Buckets::update`]); use
    /// [`VirtioCore::update_rate_limiter`] on a running device.
    pub fn update_rate_limiter(&mut self, update: &LimiterConfig) -> Result<(), RateLimiterError> {
        self.limiter.update(update)
    }

    /// The rate limiter.
    pub fn rate_limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.size / SECTOR_SIZE
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// Replaces the image; use [`VirtioCore::swap_backing_file`]
    /// on a running device so the driver hears about the new capacity.
    /// Requests in flight finish on the old image.
    pub fn set_backing_file(&mut self, file: File) -> io::Result<()> {
        self.disk.size = disk_size(&file)?;
        self.disk.file = Arc::new(file);
        Ok(())
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        let fields: [(usize, &[u8]); 3] = [
            (0, &self.capacity().to_le_bytes()),
            (12, &BLOCK_SEG_MAX.to_le_bytes()),
            (20, &(SECTOR_SIZE as u32).to_le_bytes()),
        ];
        for (at, bytes) in fields {
            if let Some(slot) = config.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        }
        config
    }

    /// How many of [`VirtioDevice::timer_fds`] are the limiter's (the
    /// engine's eventfd comes after them).
    fn limiter_timers(&self) -> usize {
        usize::from(self.limiter.timer_fd().is_some())
    }

    /// Waits until no request is in flight; returns their completions.
    fn wait_idle(&mut self) -> Vec<Completion> {
        let mut done = Vec::new();
        let outstanding = self.in_flight.len();
        while done.len() < outstanding {
            if let Err(error) = self.engine.wait(&mut done) {
                tracing::warn!(%error, "virtio-blk: requests left in flight");
                break;
            }
        }
        done
    }
}

impl VirtioCore<Block> {
    /// Swaps the disk image under a running guest (Firecracker's
    /// `PATCH /drives`): new capacity, ConfigGeneration bumped, and a
    /// configuration interrupt so the driver re-reads it.
    pub fn swap_backing_file(&self, file: File) -> io::Result<()> {
        self.with_device(|block| block.set_backing_file(file))?;
        self.config_changed();
        Ok(())
    }

    /// New rate limits under a running guest (Firecracker's `PATCH
    /// /drives` `rate_limiter`); requests held back are served again,
    /// under the new limits.
    pub fn update_rate_limiter(&self, update: &LimiterConfig) -> Result<(), RateLimiterError> {
        self.with_device(|block| block.update_rate_limiter(update))?;
        self.process_queue(0);
        Ok(())
    }
}

/// Bytes a request moves: its data buffers (all but the header and the
/// status); nothing for a chain that is unusable anyway.
fn data_len(buffers: &Result<Vec<Segment>, ChainError>) -> u64 {
    let Ok(buffers) = buffers else { return 0 };
    let data = buffers.get(1..buffers.len().saturating_sub(1));
    data.unwrap_or_default()
        .iter()
        .map(|s| u64::from(s.len))
        .sum()
}

/// The used length for a finished engine request, after writing its status.
fn complete_one(
    mem: &GuestMemory,
    pending: &Pending,
    result: io::Result<()>,
    counters: &VirtioCounters,
) -> u32 {
    let done = match result {
        Ok(()) => {
            match pending.kind {
                OpKind::Read => counters.read_bytes(u64::from(pending.len)),
                OpKind::Write => counters.wrote_bytes(u64::from(pending.len)),
                OpKind::Flush => {}
            }
            Done {
                status: VIRTIO_BLK_S_OK,
                written: if pending.kind == OpKind::Read {
                    pending.len
                } else {
                    0
                },
            }
        }
        Err(error) => {
            tracing::warn!(%error, kind = ?pending.kind, "virtio-blk I/O failed");
            Done {
                status: VIRTIO_BLK_S_IOERR,
                written: 0,
            }
        }
    };
    request::finish(mem, pending.status_at, &done, counters)
}

impl Block {
    /// Puts finished requests in the used ring; whether any went there.
    fn complete(&mut self, completions: Vec<Completion>) -> Result<bool, DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let mut used_any = false;
        for Completion { token, result } in completions {
            let Some(pending) = self.in_flight.take(token).filter(|p| !p.orphaned) else {
                continue;
            };
            let len = complete_one(&active.mem, &pending, result, &self.counters);
            active
                .queue
                .add_used(&*active.mem, pending.head, len)
                .map_err(|_| {
                    self.counters.error();
                    DeviceFault::RingAccess
                })?;
            used_any = true;
        }
        Ok(used_any)
    }

    /// Takes available requests: answers the ones that need no disk,
    /// hands the others to the engine, until the ring is empty, the
    /// limiter says wait or a queue's worth is in flight.
    fn take_requests(&mut self) -> Result<bool, DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(false);
        };
        let (disk, counters, limiter) = (&self.disk, &self.counters, &mut self.limiter);
        let (engine, in_flight) = (&mut self.engine, &mut self.in_flight);
        let mem = &active.mem;
        let used = drain_queue_with(&mut active.queue, mem, counters, |head, buffers| {
            if in_flight.is_full() || !limiter.admit(1, data_len(&buffers), counters) {
                return Taken::Held;
            }
            let Ok(buffers) = buffers else {
                return Taken::Used(0);
            };
            let (status_at, io) = match request::parse(disk, mem, &buffers) {
                Parsed::Dropped => {
                    counters.error();
                    return Taken::Used(0);
                }
                Parsed::Done(at, done) => {
                    return Taken::Used(request::finish(mem, at, &done, counters));
                }
                Parsed::Io(at, io) => (at, io),
            };
            let pending = Pending {
                head,
                status_at,
                kind: io.kind,
                len: io.len,
                orphaned: false,
            };
            let Some(token) = in_flight.insert(pending) else {
                return Taken::Held;
            };
            let op = Op {
                kind: io.kind,
                file: Arc::clone(&disk.file),
                offset: io.offset,
                data: io.data,
                len: u64::from(io.len),
                mem: Arc::clone(mem),
            };
            match engine.submit(token, op) {
                Ok(()) => Taken::InFlight,
                Err(error) => {
                    tracing::warn!(%error, "virtio-blk request not started");
                    let failed = Done {
                        status: VIRTIO_BLK_S_IOERR,
                        written: 0,
                    };
                    in_flight.take(token);
                    Taken::Used(request::finish(mem, status_at, &failed, counters))
                }
            }
        })?;
        if let Err(error) = self.engine.kick() {
            // The entries stay queued; the next kick submits them.
            tracing::warn!(%error, "virtio-blk: submitting to io_uring failed");
        }
        Ok(used)
    }

    /// Raises the used-buffer interrupt if the driver wants one.
    fn notify(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let wanted = active.queue.needs_notification(&*active.mem).map_err(|_| {
            self.counters.error();
            DeviceFault::RingAccess
        })?;
        if wanted {
            active.interrupt.signal_used(0);
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[BLOCK_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.disk.flush {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        if self.disk.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        features
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let single = activation.single_queue()?;
        self.active = Some(Active {
            mem: Arc::new(single.mem),
            queue: single.queue,
            interrupt: single.interrupt,
        });
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        if index != 0 || self.active.is_none() {
            return Ok(());
        }
        let mut completions = Vec::new();
        self.engine.reap(&mut completions);
        let completed = self.complete(completions)?;
        let answered = self.take_requests()?;
        if completed || answered {
            self.notify()?;
        }
        Ok(())
    }

    fn quiesce(&mut self) -> Result<(), DeviceFault> {
        if self.active.is_none() {
            return Ok(());
        }
        let completions = self.wait_idle();
        if self.complete(completions)? {
            self.notify()?;
        }
        Ok(())
    }

    fn timer_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.limiter.timer_fd().into_iter().collect();
        fds.push(self.engine.completion_fd());
        fds
    }

    fn timer_fired(&mut self, index: usize) -> Option<usize> {
        let limiter = self.limiter_timers();
        if index < limiter {
            self.limiter.timer_fired();
        } else if index == limiter {
            self.engine.consume_event();
        } else {
            return None;
        }
        Some(0)
    }

    fn reset(&mut self) {
        // Called on the vCPU thread whose register write asked for it, so
        // no waiting for the engine here (nor io_uring calls, which that
        // thread's filter refuses): requests in flight finish on their
        // own, and their answers are dropped when next reaped. A driver
        // that resets with requests in flight may see their data land
        // later, in its own memory only.
        self.in_flight.orphan_all();
        self.active = None;
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }
}
