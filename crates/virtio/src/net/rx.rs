//! Receive: host frames into the guest's receive buffers, the metadata
//! service's answers (if the device has one) before the backend's frames.
//!
//! Without VIRTIO_NET_F_MRG_RXBUF every receive chain must hold a whole
//! frame plus its header, so a frame is first read into a host bounce
//! buffer of the largest possible size: its length is then known before a
//! chain is taken, a chain that is too small costs only that frame (counted
//! as a drop, the chain returned empty), and guest memory is only written
//! through vm-memory's checked accessors. A frame read while the guest has
//! no buffer posted, or while the rate limiter holds the receive side
//! back, is held in the bounce buffer until it can go.

use std::io;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::counters::NetCounters;
use super::{MAX_FRAME_LEN, NET_HDR_LEN};
use crate::chain::{segments, take_chain};
use crate::net_backend::{NetBackend, RxGate};
use crate::rate_limiter::RateLimiter;
use crate::{ChainError, DeviceFault, GuestMemory, Segment, VirtioCounters};
use sie_mmds::MmdsStack;

/// Most frames moved per wakeup, so a flooded tap cannot monopolise the
/// event thread; the level-triggered loop comes back for the rest.
const RX_BUDGET: usize = 256;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_AT: usize = 10;

/// The bounce buffer and the frame it may be holding.
pub(super) struct RxBuffer {
    buf: Box<[u8]>,
    /// Length of a frame read but not yet delivered (no buffer posted).
    pending: Option<usize>,
}

impl RxBuffer {
    pub fn new() -> Self {
        Self {
            buf: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            pending: None,
        }
    }

    /// Forgets a held frame (device reset); returns whether there was one.
    pub fn clear(&mut self) -> bool {
        self.pending.take().is_some()
    }
}

enum Step {
    More,
    Done,
}

/// The receive side's borrowed state for one pass.
pub(super) struct Receiver<'a, B> {
    pub backend: &'a mut B,
    /// The metadata service, whose answers go before the backend's frames.
    pub mmds: Option<&'a mut MmdsStack>,
    pub rx: &'a mut RxBuffer,
    pub gate: &'a mut RxGate,
    pub limiter: &'a mut RateLimiter,
    pub counters: &'a VirtioCounters,
    pub stats: &'a NetCounters,
}

impl<B: NetBackend> Receiver<'_, B> {
    /// Moves frames from the backend into posted buffers until either runs
    /// out (or the budget does); returns whether the driver wants an
    /// interrupt. Leaves the gate open exactly when another wakeup could
    /// make progress.
    pub fn run(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, DeviceFault> {
        let mut used_any = false;
        let mut exhausted = true;
        for _ in 0..RX_BUDGET {
            if let Step::Done = self.step(queue, mem, &mut used_any)? {
                exhausted = false;
                break;
            }
        }
        if exhausted {
            self.gate.open();
        }
        if !used_any {
            return Ok(false);
        }
        queue.needs_notification(mem).map_err(|_| self.ring_fault())
    }

    /// One frame: read (or take the held one), find it a chain, deliver.
    fn step(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        used_any: &mut bool,
    ) -> Result<Step, DeviceFault> {
        let pending = self.rx.pending.take();
        let from_mmds = match pending {
            Some(_) => None,
            None => self.mmds.as_deref_mut().and_then(MmdsStack::next_frame),
        };
        let len = match (pending, from_mmds) {
            (Some(len), _) => len,
            (None, Some(frame)) => {
                let len = NET_HDR_LEN + frame.len();
                let Some(slot) = self.rx.buf.get_mut(..len) else {
                    self.drop_frame(format_args!("{len}-byte frame from the MMDS"));
                    return Ok(Step::More);
                };
                // No offloads: a zeroed virtio-net header.
                slot[..NET_HDR_LEN].fill(0);
                slot[NET_HDR_LEN..].copy_from_slice(&frame);
                len
            }
            (None, None) => match self.backend.read_frame(&mut self.rx.buf) {
                Ok(len) if len >= NET_HDR_LEN => len,
                // End of file on a stream-like backend: it stays readable.
                Ok(0) => return Ok(self.read_failed(&io::ErrorKind::UnexpectedEof.into())),
                Ok(len) => {
                    self.drop_frame(format_args!("{len}-byte frame from the backend"));
                    return Ok(Step::More);
                }
                Err(error) => return Ok(self.read_failed(&error)),
            },
        };
        let Some(chain) = take_chain(queue, mem, self.counters)? else {
            self.rx.pending = Some(len);
            // Ask for a notification when buffers come, re-checking for
            // ones that raced in; meanwhile stop listening to the backend.
            if queue
                .enable_notification(mem)
                .map_err(|_| self.ring_fault())?
            {
                return Ok(Step::More);
            }
            self.gate.close();
            return Ok(Step::Done);
        };
        if !self.limiter.admit(1, len as u64, self.counters) {
            // Throttled: the chain goes back, the frame waits, and the tap
            // is not listened to until the limiter's timer fires.
            queue.go_to_previous_position();
            self.rx.pending = Some(len);
            self.gate.close();
            return Ok(Step::Done);
        }
        self.counters.request();
        let head = chain.head_index();
        let used = self.deliver(mem, len, segments(chain, mem));
        queue
            .add_used(mem, head, used)
            .map_err(|_| self.ring_fault())?;
        *used_any = true;
        Ok(Step::More)
    }

    fn read_failed(&mut self, error: &io::Error) -> Step {
        match error.kind() {
            io::ErrorKind::WouldBlock => {
                self.gate.open();
                Step::Done
            }
            io::ErrorKind::Interrupted => Step::More,
            _ => {
                self.counters.error();
                // Stop listening (a failed tap stays readable and would
                // spin the loop); the next receive notification retries.
                if self.gate.is_open() {
                    tracing::warn!(%error, "virtio-net backend read failed");
                }
                self.gate.close();
                Step::Done
            }
        }
    }

    /// Copies the held frame into `buffers`; returns the used length.
    fn deliver(
        &mut self,
        mem: &GuestMemory,
        len: usize,
        buffers: Result<Vec<Segment>, ChainError>,
    ) -> u32 {
        let buffers = match buffers {
            Ok(b) if b.iter().all(|s| s.writable) => b,
            Ok(_) => {
                self.drop_frame(format_args!("device-readable buffer in a receive chain"));
                return 0;
            }
            Err(error) => {
                self.drop_frame(format_args!("receive chain unusable: {error}"));
                return 0;
            }
        };
        let room: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
        let Some(frame) = self.rx.buf.get_mut(..len).filter(|_| room >= len as u64) else {
            self.drop_frame(format_args!(
                "net frame of {len} bytes larger than the buffer"
            ));
            return 0;
        };
        // Without MRG_RXBUF a frame always fits one chain; the tap leaves
        // these two bytes untouched, so they are always set here.
        if let Some(num_buffers) = frame.get_mut(NUM_BUFFERS_AT..NET_HDR_LEN) {
            num_buffers.copy_from_slice(&1u16.to_le_bytes());
        }
        let mut rest = &*frame;
        for segment in &buffers {
            let (chunk, tail) = rest.split_at(rest.len().min(segment.len as usize));
            if chunk.is_empty() {
                break;
            }
            if mem.write_slice(chunk, segment.addr).is_err() {
                drop_frame(
                    self.counters,
                    self.stats,
                    format_args!("guest memory write failed"),
                );
                return 0;
            }
            rest = tail;
        }
        self.counters.read_bytes(len as u64);
        self.stats.received((len - NET_HDR_LEN) as u64);
        u32::try_from(len).unwrap_or(0)
    }

    fn drop_frame(&self, why: std::fmt::Arguments<'_>) {
        drop_frame(self.counters, self.stats, why);
    }

    fn ring_fault(&self) -> DeviceFault {
        self.counters.error();
        DeviceFault::RingAccess
    }
}

fn drop_frame(counters: &VirtioCounters, stats: &NetCounters, why: std::fmt::Arguments<'_>) {
    counters.error();
    stats.rx_drop();
    // Guest- or peer-triggered: debug, so nobody can flood the log.
    tracing::debug!(%why, "virtio-net frame dropped");
}
