//! The VMM's event thread: console input, periodic console flush, signals,
//! and the wake-up that says the VM is over.
//!
//! SIGINT, SIGTERM and SIGHUP are blocked in every thread (the mask is set
//! before the vCPU threads start, and they inherit it) and read here through
//! a signalfd, so a signal ends the VM through the same path as a guest
//! reset: terminal restored, statistics printed, a clear exit status.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};

use crate::control::VmControl;
use crate::outcome::VmOutcome;

/// How often buffered console output is flushed when the guest writes a
/// partial line (a shell prompt).
const FLUSH_TICK_MS: i32 = 20;

/// The signals that stop sie cleanly.
pub const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in STOP_SIGNALS {
        // SAFETY: `set` is initialised and `signal` is a valid signal number.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Blocks the stop signals in the calling thread (and threads it starts
/// afterwards) and returns a signalfd that reads them.
pub fn block_stop_signals() -> std::io::Result<OwnedFd> {
    let set = stop_signal_set();
    // SAFETY: `set` is initialised; a null old-mask pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    // SAFETY: -1 asks for a new descriptor; `set` is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

struct SignalSubscriber {
    fd: OwnedFd,
    control: Arc<VmControl>,
}

impl MutEventSubscriber for SignalSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.fd, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is valid for writes of `size` bytes.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n == size as isize {
            self.control
                .finish(VmOutcome::Signal(info.ssi_signo as i32));
        }
    }
}

struct WakeSubscriber {
    control: Arc<VmControl>,
}

impl MutEventSubscriber for WakeSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.control.wake_fd(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.control.wake_fd().read();
    }
}

/// The VMM thread's event manager.
pub type Manager = EventManager<Box<dyn MutEventSubscriber + Send>>;

/// A manager that already watches the VM's stop wake-up and, if given, the
/// stop signals.
pub fn new_manager(control: &Arc<VmControl>, signals: Option<OwnedFd>) -> std::io::Result<Manager> {
    let mut manager: Manager =
        EventManager::new().map_err(|e| std::io::Error::other(e.to_string()))?;
    manager.add_subscriber(Box::new(WakeSubscriber {
        control: control.clone(),
    }));
    if let Some(fd) = signals {
        manager.add_subscriber(Box::new(SignalSubscriber {
            fd,
            control: control.clone(),
        }));
    }
    Ok(manager)
}

/// One round of events: waits at most one console flush tick, or less
/// when something is due sooner (`at_most`, rounded up to a millisecond).
pub fn run_once(
    manager: &mut Manager,
    at_most: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let wait_ms = at_most.map_or(FLUSH_TICK_MS, |due| {
        i32::try_from(due.as_micros().div_ceil(1000))
            .map_or(FLUSH_TICK_MS, |ms| ms.min(FLUSH_TICK_MS))
    });
    manager
        .run_with_timeout(wait_ms)
        .map(|_| ())
        .map_err(|e| std::io::Error::other(e.to_string()))
}
