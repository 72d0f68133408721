//! The contract between a virtio transport (MMIO or PCI) and a device model.
//!
//! The transport owns everything the specification puts in the transport
//! (registers, status, feature negotiation, queue configuration); a device
//! only describes itself and, once activated, owns its queues so it can also
//! serve work that does not start with a notification (a frame arriving on
//! net's tap, a connection on vsock's sockets).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use crate::chain::{ChainError, Segment, drain_queue_until};
use crate::counters::VirtioCounters;
use crate::fault::DeviceFault;
use crate::interrupt::VirtioInterrupt;
use crate::memory::GuestMemory;

/// A virtio device model behind a transport ([`crate::VirtioMmioTransport`]
/// or [`crate::pci::VirtioPciDevice`]).
pub trait VirtioDevice: Send {
    /// The virtio device ID (`virtio_bindings::virtio_ids`).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue (powers of two); its length is the
    /// number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits offered; must include `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;
    /// Length in bytes of the device-specific configuration space.
    fn config_len(&self) -> usize;
    /// Fills `data` from configuration space at `offset`; the transport has
    /// already checked that the access lies inside [`Self::config_len`].
    fn read_config(&self, offset: usize, data: &mut [u8]);
    /// A driver write to configuration space (bounds already checked);
    /// returns `false` to refuse it (the default: no device here has a
    /// writable field), which the transport counts.
    fn write_config(&mut self, _offset: usize, _data: &[u8]) -> bool {
        false
    }
    /// The driver set DRIVER_OK: the device takes its queues. An error marks
    /// the device NEEDS_RESET.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Serves queue `index` after a notification. An error means the rings
    /// can no longer be trusted; the transport marks the device NEEDS_RESET.
    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault>;
    /// The driver reset the device: drop the queues and any in-flight state.
    fn reset(&mut self);
    /// Finishes the work in flight (a block device's requests on its
    /// engine) and puts it in the used rings, so the rings describe all of
    /// the device's state (before a snapshot). Called only while the
    /// device is live; an error marks it NEEDS_RESET.
    fn quiesce(&mut self) -> Result<(), DeviceFault> {
        Ok(())
    }
    /// The device's counters, shared with the transport.
    fn counters(&self) -> &Arc<VirtioCounters>;
    /// One descriptor the event thread watches for the device's host side
    /// (a tap, sockets). A device with several host descriptors, or ones
    /// that come and go (vsock connections), keeps its own epoll set and
    /// returns that set's descriptor, so the worker never changes. Asked
    /// once, when the worker is registered.
    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// The backend descriptor is readable: serve the host side (also
    /// called while the driver is not live, so the device can drain or
    /// refuse host input). An error marks the device NEEDS_RESET.
    fn process_backend(&mut self) -> Result<(), DeviceFault> {
        Ok(())
    }
    /// Called once after a snapshot restore activated the device, before
    /// the guest runs again: a device whose host side did not survive the
    /// move (vsock's connections) tells the driver here. An error marks the
    /// device NEEDS_RESET.
    fn restored(&mut self) -> Result<(), DeviceFault> {
        Ok(())
    }
    /// What the device keeps outside its rings and configuration, for a
    /// snapshot (the VM paused, after [`Self::quiesce`]); most keep nothing.
    fn save_state(&self) -> Option<crate::device_state::DeviceState> {
        None
    }
    /// Puts saved state back before the device is activated again; a
    /// state of another kind is refused with why.
    fn load_state(&mut self, saved: &crate::device_state::DeviceState) -> Result<(), String> {
        Err(format!("this device keeps no saved state, got {saved:?}"))
    }
    /// The timers of the device's rate limiters (see
    /// [`crate::rate_limiter`]) and any other descriptor that says "serve
    /// the queue again" (a block engine's completion eventfd), which the
    /// event thread watches. Asked once, when the worker is registered, so
    /// they must exist from the start even while nothing is limited.
    fn timer_fds(&self) -> Vec<std::os::fd::RawFd> {
        Vec::new()
    }
    /// Descriptor `index` of [`Self::timer_fds`] fired: consume it (even
    /// while the driver is not live, or the event loop would spin) and name
    /// the queue it held back, which the transport serves if the device is
    /// live.
    fn timer_fired(&mut self, _index: usize) -> Option<usize> {
        None
    }
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory holding the rings and buffers.
    pub mem: GuestMemory,
    /// The queues as the driver configured them, each checked valid if ready.
    pub queues: Vec<Queue>,
    /// Raises used-buffer and configuration interrupts.
    pub interrupt: VirtioInterrupt,
    /// The feature bits the driver accepted.
    pub acked_features: u64,
}

/// What a one-queue device (blk, rng) keeps while the driver is live.
pub struct SingleQueue {
    /// Guest memory holding the ring and buffers.
    pub mem: GuestMemory,
    /// The queue.
    pub queue: Queue,
    /// Raises used-buffer and configuration interrupts.
    pub interrupt: VirtioInterrupt,
}

impl Activation {
    /// Takes the first `N` queues, each of which must be ready (for devices
    /// that need all their queues, in order: net's and the console's rx and
    /// tx). The queues past `N` are dropped.
    pub fn ready_queues<const N: usize>(&mut self) -> Result<[Queue; N], ActivateError> {
        let mut queues = std::mem::take(&mut self.queues).into_iter();
        let mut taken = Vec::with_capacity(N);
        for index in 0..N {
            let queue = queues.next().filter(|q| q.ready());
            taken.push(queue.ok_or(ActivateError::QueueNotReady(index))?);
        }
        // Exactly N were pushed.
        taken
            .try_into()
            .map_err(|_: Vec<Queue>| ActivateError::QueueNotReady(0))
    }

    /// For a one-queue device: its queue, which must be ready.
    pub fn single_queue(self) -> Result<SingleQueue, ActivateError> {
        let Some(queue) = self.queues.into_iter().next().filter(|q| q.ready()) else {
            return Err(ActivateError::QueueNotReady(0));
        };
        Ok(SingleQueue {
            mem: self.mem,
            queue,
            interrupt: self.interrupt,
        })
    }
}

impl SingleQueue {
    /// Serves every available chain with `serve` (given the chain's buffers
    /// and returning the used length) and raises the used-buffer interrupt
    /// if the driver wants one.
    pub fn drain(
        &mut self,
        counters: &VirtioCounters,
        mut serve: impl FnMut(&GuestMemory, Result<Vec<Segment>, ChainError>) -> u32,
    ) -> Result<(), DeviceFault> {
        self.drain_until(counters, |mem, buffers| Some(serve(mem, buffers)))
    }

    /// [`Self::drain`] for a device that may hold requests back (a rate
    /// limiter): `serve` returns `None` to leave the chain on the ring and
    /// stop until the device serves the queue again.
    pub fn drain_until(
        &mut self,
        counters: &VirtioCounters,
        mut serve: impl FnMut(&GuestMemory, Result<Vec<Segment>, ChainError>) -> Option<u32>,
    ) -> Result<(), DeviceFault> {
        let mem = &self.mem;
        if drain_queue_until(&mut self.queue, mem, counters, |buffers| {
            serve(mem, buffers)
        })? {
            // A single-queue device's queue is queue 0.
            self.interrupt.signal_used(0);
        }
        Ok(())
    }
}

/// Copies `data.len()` bytes of a device's configuration space `config`
/// from `offset` (the transport has checked the bounds; an access that
/// does not fit leaves `data` as it is).
pub fn read_config_bytes(config: &[u8], offset: usize, data: &mut [u8]) {
    let end = offset.saturating_add(data.len());
    if let Some(bytes) = config.get(offset..end) {
        data.copy_from_slice(bytes);
    }
}

/// Why a device refused activation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    /// A queue the device needs was not made ready by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// A ready queue's rings lie outside guest memory.
    #[error("queue {0} rings are not in guest memory")]
    QueueInvalid(usize),
}
