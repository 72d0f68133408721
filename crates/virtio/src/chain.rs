//! Taking descriptor chains off a queue without trusting the guest.
//!
//! virtio-queue already stops walking a chain at a loop (a TTL of one queue
//! length), at an out-of-range `next` index, at an unreadable descriptor and
//! at 4 GiB of total length, and refuses an available index that runs more
//! than a queue ahead. It stops *silently*, though, so [`segments`] notices a
//! chain that ended on a descriptor still flagged NEXT and calls it broken,
//! and it checks every buffer against guest memory up front so devices only
//! ever see buffers they can access in full.

use virtio_queue::{DescriptorChain, Error as QueueError, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, GuestAddress, Permissions};

use crate::counters::VirtioCounters;
use crate::fault::DeviceFault;
use crate::memory::GuestMemory;

/// One buffer of a validated chain: entirely inside guest memory, non-empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub addr: GuestAddress,
    /// Length in bytes (non-zero).
    pub len: u32,
    /// Device-writable (the guest reads it back) rather than device-readable.
    pub writable: bool,
}

/// Why a chain was dropped.
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A loop, a `next` out of range, more links than the queue holds, or
    /// more than 4 GiB in total.
    #[error("descriptor chain is broken")]
    Broken,
    /// A descriptor with length zero.
    #[error("zero-length descriptor")]
    ZeroLength,
    /// `addr + len` wraps around the address space.
    #[error("descriptor wraps the address space")]
    Overflow,
    /// A buffer not (entirely) backed by guest RAM.
    #[error("descriptor outside guest memory")]
    OutsideMemory,
}

/// The buffers of `chain`, or why it cannot be used.
pub fn segments(
    chain: DescriptorChain<&GuestMemory>,
    mem: &GuestMemory,
) -> Result<Vec<Segment>, ChainError> {
    let mut out = Vec::new();
    let mut ended = false;
    for desc in chain {
        let len = desc.len();
        if len == 0 {
            return Err(ChainError::ZeroLength);
        }
        desc.addr()
            .checked_add(u64::from(len))
            .ok_or(ChainError::Overflow)?;
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !vm_memory::GuestMemory::check_range(mem, desc.addr(), len as usize, access) {
            return Err(ChainError::OutsideMemory);
        }
        out.push(Segment {
            addr: desc.addr(),
            len,
            writable: desc.is_write_only(),
        });
        ended = !desc.has_next();
    }
    if ended {
        Ok(out)
    } else {
        Err(ChainError::Broken)
    }
}

/// Takes every available chain off `queue`, hands its buffers (or why they
/// are unusable, already counted as an error) to `serve`, and returns each
/// to the used ring with the length `serve` reports.
///
/// Driver notifications are suppressed while the ring is being drained and
/// re-enabled (with a re-check for chains that raced in) at the end; with
/// VIRTIO_RING_F_EVENT_IDX this also publishes `avail_event`. Returns
/// whether the driver wants an interrupt (`used_event`, or simply "some
/// chain was used" without EVENT_IDX).
pub fn drain_queue(
    queue: &mut Queue,
    mem: &GuestMemory,
    counters: &VirtioCounters,
    mut serve: impl FnMut(Result<Vec<Segment>, ChainError>) -> u32,
) -> Result<bool, DeviceFault> {
    drain_queue_until(queue, mem, counters, |buffers| Some(serve(buffers)))
}

/// [`drain_queue`] where `serve` may answer `None`: that chain goes back on
/// the ring (not counted as a request yet) and draining stops there, with
/// notifications left suppressed, since the device itself comes back to
/// the queue (a rate limiter's timer).
pub fn drain_queue_until(
    queue: &mut Queue,
    mem: &GuestMemory,
    counters: &VirtioCounters,
    mut serve: impl FnMut(Result<Vec<Segment>, ChainError>) -> Option<u32>,
) -> Result<bool, DeviceFault> {
    let used_any = drain_queue_with(queue, mem, counters, |_, buffers| {
        serve(buffers).map_or(Taken::Held, Taken::Used)
    })?;
    if !used_any {
        return Ok(false);
    }
    queue
        .needs_notification(mem)
        .map_err(|_| ring_fault(counters))
}

/// What a device did with a chain [`drain_queue_with`] handed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Served: return it to the used ring with this length.
    Used(u32),
    /// Kept in flight: the device returns it (by its head index) later.
    InFlight,
    /// Not taken: back on the ring, and draining stops until the device
    /// comes back to the queue.
    Held,
}

fn ring_fault(counters: &VirtioCounters) -> DeviceFault {
    counters.error();
    DeviceFault::RingAccess
}

/// The general drain: `serve` gets each chain's head index and buffers
/// and says what became of it (see [`Taken`]). Returns whether a chain was
/// put in the used ring; asking whether the driver wants an interrupt is
/// left to the caller, who may add more (completions) first.
pub fn drain_queue_with(
    queue: &mut Queue,
    mem: &GuestMemory,
    counters: &VirtioCounters,
    mut serve: impl FnMut(u16, Result<Vec<Segment>, ChainError>) -> Taken,
) -> Result<bool, DeviceFault> {
    let mut used_any = false;
    'drain: loop {
        queue
            .disable_notification(mem)
            .map_err(|_| ring_fault(counters))?;
        while let Some(chain) = take_chain(queue, mem, counters)? {
            let head = chain.head_index();
            let buffers = segments(chain, mem);
            let invalid = buffers.as_ref().err().cloned();
            let taken = serve(head, buffers);
            if taken == Taken::Held {
                queue.go_to_previous_position();
                break 'drain;
            }
            counters.request();
            if let Some(error) = invalid {
                counters.error();
                tracing::debug!(%error, head, "virtio chain dropped");
            }
            if let Taken::Used(len) = taken {
                queue
                    .add_used(mem, head, len)
                    .map_err(|_| ring_fault(counters))?;
                used_any = true;
            }
        }
        if !queue
            .enable_notification(mem)
            .map_err(|_| ring_fault(counters))?
        {
            break;
        }
    }
    Ok(used_any)
}

/// The next available chain, if any, with a head inside the table; shared
/// by every device that takes chains one at a time (net's receive side,
/// vsock's queues).
pub(crate) fn next_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    counters: &VirtioCounters,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, DeviceFault> {
    let chain = take_chain(queue, mem, counters)?;
    if chain.is_some() {
        counters.request();
    }
    Ok(chain)
}

/// [`next_chain`] without counting the request, for a device that may put
/// the chain back (`Queue::go_to_previous_position`) and count it later.
pub(crate) fn take_chain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    counters: &VirtioCounters,
) -> Result<Option<DescriptorChain<&'m GuestMemory>>, DeviceFault> {
    let chain = match queue.iter(mem) {
        Ok(mut available) => available.next(),
        Err(QueueError::QueueNotReady) => None,
        Err(QueueError::InvalidAvailRingIndex) => {
            counters.error();
            return Err(DeviceFault::AvailIndex);
        }
        Err(_) => {
            counters.error();
            return Err(DeviceFault::RingAccess);
        }
    };
    let Some(chain) = chain else {
        return Ok(None);
    };
    let head = chain.head_index();
    if head >= queue.size() {
        // Counted as a request, as before the device could put chains back.
        counters.request();
        counters.error();
        return Err(DeviceFault::HeadOutOfRange(head));
    }
    Ok(Some(chain))
}
