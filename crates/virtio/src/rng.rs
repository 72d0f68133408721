//! virtio-rng (device type 4): entropy from the host's `getrandom(2)`.
//!
//! A [`RateLimiter`] (Firecracker's `entropy` `rate_limiter`) charges each
//! request one operation and the bytes it will get; a request it refuses
//! stays on the ring until the limiter's timer fires.

use std::io;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::Bytes;

use crate::chain::Segment;
use crate::counters::VirtioCounters;
use crate::device::{ActivateError, Activation, SingleQueue, VirtioDevice};
use crate::fault::DeviceFault;
use crate::memory::GuestMemory;
use crate::rate_limiter::RateLimiter;

/// Queue size offered to the driver.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// Most bytes served per request: a guest asking for gigabytes gets a short
/// (and legal) answer instead of tying up the event thread.
pub const RNG_MAX_REQUEST: usize = 64 * 1024;

type Active = SingleQueue;

/// The entropy device.
pub struct Rng {
    counters: Arc<VirtioCounters>,
    limiter: RateLimiter,
    active: Option<Active>,
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl Rng {
    /// A new, inactive entropy device without a rate limit.
    pub fn new() -> Self {
        Self::with_rate_limiter(RateLimiter::unlimited())
    }

    /// An entropy device whose requests pass through `limiter`.
    pub fn with_rate_limiter(limiter: RateLimiter) -> Self {
        Self {
            counters: Arc::default(),
            limiter,
            active: None,
        }
    }
}

/// Bytes a request will get: what its buffers hold, up to
/// [`RNG_MAX_REQUEST`]; nothing for a chain that is unusable anyway.
fn request_len(buffers: &Result<Vec<Segment>, crate::ChainError>) -> u64 {
    let Ok(buffers) = buffers else { return 0 };
    let wanted: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
    wanted.min(RNG_MAX_REQUEST as u64)
}

/// Fills `buf` from the kernel's CSPRNG (retrying short reads and EINTR).
fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|r| !r.is_empty()) {
        // SAFETY: `rest` is a live, exclusively borrowed buffer of exactly
        // `rest.len()` writable bytes; getrandom writes at most that many.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => filled += n,
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() != io::ErrorKind::Interrupted {
                    return Err(error);
                }
            }
        }
    }
    Ok(())
}

/// Serves one chain: every buffer must be device-writable. Returns the
/// number of bytes written (at most [`RNG_MAX_REQUEST`]).
fn fill(mem: &GuestMemory, buffers: &[Segment], counters: &VirtioCounters) -> u32 {
    if buffers.iter().any(|s| !s.writable) {
        counters.error();
        return 0;
    }
    let wanted: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
    let mut entropy = vec![0u8; wanted.min(RNG_MAX_REQUEST as u64) as usize];
    if let Err(error) = host_random(&mut entropy) {
        tracing::warn!(%error, "getrandom failed");
        counters.error();
        return 0;
    }
    let mut rest = entropy.as_slice();
    for segment in buffers {
        let (chunk, tail) = rest.split_at(rest.len().min(segment.len as usize));
        if chunk.is_empty() {
            break;
        }
        if mem.write_slice(chunk, segment.addr).is_err() {
            counters.error();
            break;
        }
        rest = tail;
    }
    let written = entropy.len() - rest.len();
    counters.read_bytes(written as u64);
    u32::try_from(written).unwrap_or(0)
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[RNG_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn config_len(&self) -> usize {
        0
    }

    fn read_config(&self, _offset: usize, _data: &mut [u8]) {}

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.single_queue()?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut().filter(|_| index == 0) else {
            return Ok(());
        };
        let (counters, limiter) = (&self.counters, &mut self.limiter);
        active.drain_until(counters, |mem, buffers| {
            if !limiter.admit(1, request_len(&buffers), counters) {
                return None;
            }
            Some(buffers.map_or(0, |b: Vec<Segment>| fill(mem, &b, counters)))
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

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
    use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::testing::{DATA, Driver, Ring, transport};

    #[test]
    fn fills_a_writable_buffer_with_random_bytes() {
        let (t, mem, irq) = transport(Rng::new());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        ring.set_chain(&mem, 0, &[(DATA, 64, true), (DATA + 0x100, 64, true)]);
        ring.publish(&mem, &[0]);
        d.notify(0);
        assert_eq!(ring.used_idx(&mem), 1);
        assert_eq!(ring.used(&mem, 0), (0, 128));
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(DATA)).expect("read");
        assert_ne!(got, [0u8; 64]);
        assert_eq!(d.take_interrupt(), VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.count(), 1);
        let c = t.counters();
        assert_eq!((c.requests, c.bytes_read, c.notifications), (1, 128, 1));
        assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn caps_each_request() {
        let (t, mem, _irq) = transport(Rng::new());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        ring.set_chain(&mem, 0, &[(DATA, 0x2_0000, true)]);
        ring.publish(&mem, &[0]);
        d.notify(0);
        assert_eq!(ring.used(&mem, 0), (0, RNG_MAX_REQUEST as u32));
    }

    #[test]
    fn refuses_a_device_readable_buffer() {
        let (t, mem, _irq) = transport(Rng::new());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        ring.set_chain(&mem, 0, &[(DATA, 64, false)]);
        ring.publish(&mem, &[0]);
        d.notify(0);
        assert_eq!(ring.used(&mem, 0), (0, 0));
        assert_eq!(t.counters().errors, 1);
    }
}
