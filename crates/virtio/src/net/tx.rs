//! Transmit: every chain on the transmit queue is one frame, a
//! `virtio_net_hdr_v1` followed by the Ethernet frame, in device-readable
//! buffers. It is copied out of guest memory (checked accesses, no guest
//! pointer ever reaches a syscall) and written to the backend in one go,
//! header included: the tap interprets it (checksum and GSO requests).
//!
//! Frames for the metadata service (when the device has one) are handed
//! to it instead of the backend; its answers come back on the receive side.
//!
//! Whatever goes wrong, the chain is returned (used length 0, as the
//! device writes nothing) so the guest never stalls on a lost frame.

use std::io;

use virtio_queue::Queue;
use vm_memory::Bytes;

use super::counters::NetCounters;
use super::{ETH_HLEN, MAX_FRAME_LEN, NET_HDR_LEN};
use crate::chain::drain_queue_until;
use crate::net_backend::NetBackend;
use crate::rate_limiter::RateLimiter;
use crate::{DeviceFault, GuestMemory, Segment, VirtioCounters};
use sie_mmds::MmdsStack;

/// Why a guest frame was not sent.
#[derive(Debug, thiserror::Error)]
enum TxDrop {
    #[error("device-writable buffer in a transmit chain")]
    WrongDirection,
    #[error("frame of {0} bytes is shorter than a header and an Ethernet header")]
    TooShort(u64),
    #[error("frame of {0} bytes is longer than the largest GSO frame")]
    TooLong(u64),
    #[error("guest memory read failed")]
    Memory,
    #[error("backend refused the frame: {0}")]
    Backend(io::Error),
}

/// The transmit side's borrowed state for one pass over the queue.
pub(super) struct Transmitter<'a, B> {
    pub backend: &'a mut B,
    /// The metadata service, which takes the frames it claims.
    pub mmds: Option<&'a mut MmdsStack>,
    /// Bounce buffer of [`MAX_FRAME_LEN`] bytes.
    pub scratch: &'a mut [u8],
    pub limiter: &'a mut RateLimiter,
    pub counters: &'a VirtioCounters,
    pub stats: &'a NetCounters,
}

impl<B: NetBackend> Transmitter<'_, B> {
    /// Sends every frame the driver queued, or as many as the rate limiter
    /// lets through; returns whether the driver wants an interrupt for the
    /// returned chains.
    pub fn run(&mut self, queue: &mut Queue, mem: &GuestMemory) -> Result<bool, DeviceFault> {
        let counters = self.counters;
        drain_queue_until(queue, mem, counters, |buffers| {
            let len = buffers
                .as_ref()
                .map_or(0, |b| b.iter().map(|s| u64::from(s.len)).sum());
            if !self.limiter.admit(1, len, counters) {
                return None;
            }
            match buffers {
                Ok(buffers) => self.send(mem, &buffers),
                // Counted as an error by drain_queue_until.
                Err(_) => self.stats.tx_drop(),
            }
            Some(0)
        })
    }

    fn send(&mut self, mem: &GuestMemory, buffers: &[Segment]) {
        match self.try_send(mem, buffers) {
            Ok(len) => {
                self.counters.wrote_bytes(len as u64);
                self.stats.sent((len - NET_HDR_LEN) as u64);
            }
            Err(why) => {
                self.counters.error();
                self.stats.tx_drop();
                // Guest-triggered or host congestion: debug, never a flood.
                tracing::debug!(%why, "virtio-net frame dropped");
            }
        }
    }

    /// Gathers the chain into the bounce buffer and writes it; returns the
    /// length sent, header included.
    fn try_send(&mut self, mem: &GuestMemory, buffers: &[Segment]) -> Result<usize, TxDrop> {
        if buffers.iter().any(|s| s.writable) {
            return Err(TxDrop::WrongDirection);
        }
        let total: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
        if total < (NET_HDR_LEN + ETH_HLEN) as u64 {
            return Err(TxDrop::TooShort(total));
        }
        if total > MAX_FRAME_LEN as u64 {
            return Err(TxDrop::TooLong(total));
        }
        let mut at = 0usize;
        for segment in buffers {
            let end = at + segment.len as usize;
            let slot = self.scratch.get_mut(at..end).ok_or(TxDrop::Memory)?;
            mem.read_slice(slot, segment.addr)
                .map_err(|_| TxDrop::Memory)?;
            at = end;
        }
        let frame = self.scratch.get(..at).ok_or(TxDrop::Memory)?;
        if let (Some(mmds), Some(ethernet)) = (self.mmds.as_deref_mut(), frame.get(NET_HDR_LEN..))
            && mmds.claims(ethernet)
        {
            // Answered inside the VMM; the tap never sees it.
            mmds.receive(ethernet);
            return Ok(at);
        }
        match self.backend.write_frame(&[frame]) {
            Ok(_) => Ok(at),
            // EAGAIN (backend full) included: dropping is what a NIC does,
            // and waiting would stall the guest's transmit queue.
            Err(error) => Err(TxDrop::Backend(error)),
        }
    }
}
