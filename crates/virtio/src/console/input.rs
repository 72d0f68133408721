//! Host input waiting for the guest's receive buffers.
//!
//! The console's input producer (stdin or the console socket, on the VMM's
//! event thread) offers bytes through [`ConsoleInput::enqueue`]; what fits
//! in [`INPUT_BUFFER_BYTES`] is taken and the device's wake eventfd is
//! written, so the device's worker delivers it into receiveq buffers. What
//! does not fit is left to the producer, which stops reading its source
//! until the "room" notifier fires (the same contract COM1 offers, with a
//! larger buffer), so nothing is dropped and memory stays bounded however
//! long the guest posts no buffers.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sie_devices::Interrupt;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Most host input kept while the guest has no receive buffer (64 KiB).
pub const INPUT_BUFFER_BYTES: usize = 64 << 10;

/// The input side shared by the producer and the device (cheap to clone).
#[derive(Clone)]
pub struct ConsoleInput {
    shared: Arc<Shared>,
}

struct Shared {
    bytes: Mutex<VecDeque<u8>>,
    /// Written when bytes arrive: the device's backend descriptor.
    wake: EventFd,
    /// Told when the device took bytes, so a producer holding some back
    /// offers them again.
    room: Option<Arc<dyn Interrupt>>,
}

impl ConsoleInput {
    pub(super) fn new(room: Option<Arc<dyn Interrupt>>) -> io::Result<Self> {
        Ok(Self {
            shared: Arc::new(Shared {
                bytes: Mutex::new(VecDeque::new()),
                wake: EventFd::new(EFD_NONBLOCK)?,
                room,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<u8>> {
        // Plain bytes: still usable after a panic elsewhere.
        self.shared
            .bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers `bytes` to the guest; returns how many were taken (the rest
    /// waits with the caller until the room notifier fires).
    pub fn enqueue(&self, bytes: &[u8]) -> usize {
        let taken = {
            let mut buffer = self.lock();
            let taken = bytes.len().min(INPUT_BUFFER_BYTES - buffer.len());
            buffer.extend(&bytes[..taken]);
            taken
        };
        if taken > 0 {
            // A full counter still wakes the worker.
            let _ = self.shared.wake.write(1);
        }
        taken
    }

    /// Bytes waiting for the guest.
    pub fn buffered(&self) -> usize {
        self.lock().len()
    }

    pub(super) fn wake_fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    /// Consumes the wake-up (the worker's descriptor is level-triggered).
    pub(super) fn clear_wake(&self) {
        let _ = self.shared.wake.read();
    }

    /// Moves up to `max` waiting bytes out, oldest first.
    pub(super) fn take(&self, max: usize) -> Vec<u8> {
        let mut buffer = self.lock();
        let n = max.min(buffer.len());
        buffer.drain(..n).collect()
    }

    /// Puts bytes the guest could not take back at the front.
    pub(super) fn unget(&self, bytes: &[u8]) {
        let mut buffer = self.lock();
        for &byte in bytes.iter().rev() {
            buffer.push_front(byte);
        }
    }

    /// The device took bytes: a producer holding some back may offer them.
    pub(super) fn made_room(&self) {
        if let Some(room) = &self.shared.room
            && room.trigger().is_err()
        {
            tracing::debug!("virtio-console: cannot signal input room");
        }
    }
}
