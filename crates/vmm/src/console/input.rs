//! Host stdin to the guest's COM1.
//!
//! The 16550's receive FIFO holds 64 bytes, so input is read only while the
//! guest has room: bytes the FIFO refused wait here, stdin is taken out of
//! the epoll set, and the serial device's "input room" event puts it back.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

/// Where console input goes: the guest's serial port.
pub trait SerialInput: Send + Sync {
    /// Offers bytes to the guest; returns how many it took.
    fn enqueue(&self, bytes: &[u8]) -> usize;
}

/// Forwards stdin to the guest's serial port.
pub struct ConsoleInput {
    stdin: RawFd,
    sink: Arc<dyn SerialInput>,
    room: EventFd,
    pending: Vec<u8>,
    reading: bool,
    closed: bool,
}

impl ConsoleInput {
    /// Forwards `stdin` to `sink`; `room` is signalled when the guest has
    /// drained its receive buffer.
    pub fn new(stdin: RawFd, sink: Arc<dyn SerialInput>, room: EventFd) -> Self {
        Self {
            stdin,
            sink,
            room,
            pending: Vec::new(),
            reading: false,
            closed: false,
        }
    }

    fn read_stdin(&mut self) -> bool {
        let mut buffer = [0u8; 64];
        // SAFETY: `buffer` is valid for writes of its length; `stdin` is a
        // descriptor this process owns for its whole life.
        let n = unsafe { libc::read(self.stdin, buffer.as_mut_ptr().cast(), buffer.len()) };
        match n {
            n if n > 0 => {
                self.pending.extend_from_slice(&buffer[..n as usize]);
                true
            }
            0 => false,
            _ => {
                let error = std::io::Error::last_os_error();
                matches!(
                    error.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                )
            }
        }
    }

    fn push(&mut self) {
        if !self.pending.is_empty() {
            let taken = self.sink.enqueue(&self.pending).min(self.pending.len());
            self.pending.drain(..taken);
        }
    }

    fn update_interest(&mut self, ops: &mut EventOps) {
        let want = !self.closed && self.pending.is_empty();
        if want && !self.reading {
            self.reading = ops.add(Events::new_raw(self.stdin, EventSet::IN)).is_ok();
            if !self.reading {
                // Regular files and /dev/null cannot be polled: no input then.
                self.closed = true;
            }
        } else if !want && self.reading {
            let _ = ops.remove(Events::new_raw(self.stdin, EventSet::IN));
            self.reading = false;
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.room, EventSet::IN));
        self.update_interest(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.room.as_raw_fd() {
            let _ = self.room.read();
        } else if events.fd() == self.stdin {
            let readable = events.event_set().contains(EventSet::IN);
            if !readable || !self.read_stdin() {
                self.closed = true;
            }
        }
        self.push();
        self.update_interest(ops);
    }
}
