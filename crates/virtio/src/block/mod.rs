//! virtio-blk (device type 2) over a raw image file.
//!
//! Requests run synchronously on the event thread (one queue, pread/pwrite
//! on the image); enough for a boot disk, and the request code is kept apart
//! in `request.rs` so an asynchronous engine can replace the loop later.
//!
//! A [`RateLimiter`] charges each request one operation and its data
//! length in bytes (what the data buffers hold, header and status byte
//! apart) before it runs; a request it refuses stays on the ring until the
//! limiter's timer fires.

#[cfg(test)]
mod fault_tests;
mod request;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use request::Disk;
pub use request::SECTOR_SIZE;

use super::rate_limiter::{LimiterConfig, RateLimiter, RateLimiterError};
use super::read_config_bytes;
use super::{
    ActivateError, Activation, ChainError, DeviceFault, Segment, SingleQueue, VirtioCounters,
    VirtioDevice, VirtioMmioTransport,
};

/// Queue size offered to the driver.
pub const BLOCK_QUEUE_SIZE: u16 = 256;
/// Data buffers per request we advertise (the header and status take two
/// descriptors of the queue).
pub const BLOCK_SEG_MAX: u32 = BLOCK_QUEUE_SIZE as u32 - 2;
/// Length of the configuration space we expose: capacity, size_max,
/// seg_max, geometry, blk_size (struct virtio_blk_config up to blk_size).
const CONFIG_LEN: usize = 24;

type Active = SingleQueue;

/// The block device.
pub struct Block {
    disk: Disk,
    counters: Arc<VirtioCounters>,
    limiter: RateLimiter,
    active: Option<Active>,
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

/// Usable size of `file`: whole sectors only. Measured by seeking to the
/// end, which a block device (a partition, an LVM or device-mapper volume,
/// a loop device) answers too, where its metadata says 0 bytes; requests
/// use positioned I/O, so the offset left behind does not matter.
fn disk_size(file: &File) -> io::Result<u64> {
    let mut file = file;
    let len = io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
    Ok(len - len % SECTOR_SIZE)
}

impl Block {
    /// A disk backed by `file` (opened read-write unless `read_only`),
    /// identified to the guest as `id`, with no rate limit (one can be set
    /// later, see [`Self::update_rate_limiter`]).
    pub fn new(file: File, read_only: bool, id: &str) -> io::Result<Self> {
        let size = disk_size(&file)?;
        Ok(Self {
            disk: Disk {
                file,
                size,
                read_only,
                serial: serial(id),
            },
            counters: Arc::default(),
            limiter: RateLimiter::new(&LimiterConfig::default())?,
            active: None,
        })
    }

    /// Replaces the rate limiter; only before the device's worker is
    /// registered (it watches the limiter's timer).
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
    }

    /// New limits (see [`crate::rate_limiter::Buckets::update`]); use
    /// [`VirtioMmioTransport::update_rate_limiter`] on a running device.
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

    /// Replaces the image; use [`VirtioMmioTransport::swap_backing_file`]
    /// on a running device so the driver hears about the new capacity.
    pub fn set_backing_file(&mut self, file: File) -> io::Result<()> {
        self.disk.size = disk_size(&file)?;
        self.disk.file = file;
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
}

impl VirtioMmioTransport<Block> {
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
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
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
        self.active = Some(activation.single_queue()?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut().filter(|_| index == 0) else {
            return Ok(());
        };
        let (disk, counters, limiter) = (&self.disk, &self.counters, &mut self.limiter);
        active.drain_until(counters, |mem, buffers| {
            if !limiter.admit(1, data_len(&buffers), counters) {
                return None;
            }
            Some(buffers.map_or(0, |b| request::serve(disk, mem, &b, counters)))
        })
    }

    fn timer_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.limiter.timer_fd().into_iter().collect()
    }

    fn timer_fired(&mut self, index: usize) -> Option<usize> {
        (index == 0).then(|| self.limiter.timer_fired()).map(|()| 0)
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }
}
