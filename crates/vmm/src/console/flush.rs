//! The deadline for a partial console line: a prompt without a newline
//! appears within [`FLUSH_DELAY`] of its first byte.
//!
//! The vCPU that leaves bytes buffered writes the wake eventfd (once per
//! partial line, [`super::ConsoleOutput`]); here, on the VMM thread, that
//! arms a one-shot timerfd, and the timer's expiry flushes. The timer is
//! armed only while output waits, so an idle or paused VM's event loop
//! sleeps in epoll without a timeout. (The vCPU threads cannot arm the
//! timer themselves: their seccomp filter has no `timerfd_settime`.)

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::ConsoleOutput;

/// How long a partial line may wait in the buffer.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);

/// Flushes partial lines on the event loop: see the module docs.
pub struct ConsoleFlush {
    output: ConsoleOutput,
    wake: Arc<EventFd>,
    timer: TimerFd,
    /// The timer runs (set here, cleared when it fired).
    armed: bool,
}

impl ConsoleFlush {
    /// Flushes `output`'s partial lines. Made before the VMM thread's
    /// seccomp filter goes on (it creates an eventfd and a timerfd); output
    /// already buffered is flushed by its deadline.
    pub fn new(output: &ConsoleOutput) -> io::Result<Self> {
        let wake = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)?);
        let timer = nonblocking_timer()?;
        output.set_wake(wake.clone());
        Ok(Self {
            output: output.clone(),
            wake,
            timer,
            armed: false,
        })
    }

    /// A vCPU left bytes buffered: the deadline starts, unless it runs
    /// already (then the earlier deadline flushes these bytes too).
    fn woken(&mut self) {
        let _ = self.wake.read();
        if self.armed || !self.output.has_pending() {
            return;
        }
        self.armed = self.timer.reset(FLUSH_DELAY, None).is_ok();
        if !self.armed {
            // No timer: better now than never.
            self.output.flush_pending();
        }
    }

    /// The deadline passed.
    fn expired(&mut self) {
        // Non-blocking: a wake-up without an expiry reads nothing.
        let _ = self.timer.wait();
        self.armed = false;
        self.output.flush_pending();
    }

    /// True while the flush timer runs.
    pub fn timer_armed(&self) -> bool {
        self.timer.is_armed().unwrap_or(false)
    }
}

impl MutEventSubscriber for ConsoleFlush {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.wake.as_ref(), EventSet::IN));
        let _ = ops.add(Events::new(&self.timer, EventSet::IN));
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.fd() == self.wake.as_raw_fd() {
            self.woken();
        } else if events.fd() == self.timer.as_raw_fd() {
            self.expired();
        }
    }
}

/// A timerfd whose read never blocks: re-arming clears an expiry not yet
/// read, and the event loop may then read it after all.
fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is the timerfd just created and owned by `timer`;
    // F_GETFL/F_SETFL only read and set its status flags.
    let set = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !set {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Waits (at most 10 s, a hang guard) until `fd` is readable.
    fn wait_readable(fd: &impl AsRawFd) -> bool {
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, 10_000) == 1 }
    }

    /// True when `fd` is readable now.
    fn readable(fd: &impl AsRawFd) -> bool {
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, 0) == 1 }
    }

    #[test]
    fn the_flush_timer_is_armed_only_while_output_is_buffered() {
        let sink = Shared::default();
        let mut out = ConsoleOutput::new(Box::new(sink.clone()));
        let mut flush = ConsoleFlush::new(&out).unwrap();
        assert!(!flush.timer_armed(), "nothing written, nothing armed");

        // Whole lines leave nothing buffered: no wake, no timer.
        out.write_all(b"boot\n").unwrap();
        assert!(!readable(flush.wake.as_ref()));
        assert!(!flush.timer_armed());

        // A prompt wakes the loop once, which arms the deadline.
        out.write_all(b"# ").unwrap();
        out.write_all(b"x").unwrap();
        assert!(readable(flush.wake.as_ref()));
        flush.woken();
        assert!(flush.timer_armed());
        assert!(!readable(flush.wake.as_ref()), "one wake per partial line");
        assert_eq!(*sink.0.lock().unwrap(), b"boot\n");

        // The deadline flushes it, and the timer stays off until the next.
        assert!(wait_readable(&flush.timer));
        flush.expired();
        assert_eq!(*sink.0.lock().unwrap(), b"boot\n# x");
        assert!(!flush.timer_armed());
        assert!(!readable(flush.wake.as_ref()));

        // The next partial line wakes the loop again.
        out.write_all(b"y").unwrap();
        assert!(readable(flush.wake.as_ref()));
        flush.woken();
        assert!(flush.timer_armed());
    }

    #[test]
    fn output_buffered_before_the_flusher_exists_is_flushed_by_its_deadline() {
        let sink = Shared::default();
        let mut out = ConsoleOutput::new(Box::new(sink.clone()));
        out.write_all(b"early").unwrap();
        let mut flush = ConsoleFlush::new(&out).unwrap();
        assert!(readable(flush.wake.as_ref()));
        flush.woken();
        assert!(wait_readable(&flush.timer));
        flush.expired();
        assert_eq!(*sink.0.lock().unwrap(), b"early");
    }

    #[test]
    fn a_line_finished_before_the_deadline_leaves_nothing_for_it() {
        let sink = Shared::default();
        let mut out = ConsoleOutput::new(Box::new(sink.clone()));
        let mut flush = ConsoleFlush::new(&out).unwrap();
        out.write_all(b"# ").unwrap();
        flush.woken();
        out.write_all(b"ls\n").unwrap();
        assert_eq!(*sink.0.lock().unwrap(), b"# ls\n");
        // The wake for that line is gone with it: a wake now finds nothing.
        assert!(!out.has_pending());
        assert!(wait_readable(&flush.timer));
        flush.expired();
        assert!(!flush.timer_armed());
        assert_eq!(*sink.0.lock().unwrap(), b"# ls\n");
    }
}
