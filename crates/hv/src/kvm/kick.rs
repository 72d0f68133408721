//! Making a vCPU leave `KVM_RUN` from another thread, without races.
//!
//! The design: one real-time signal ([`kick_signal`]) with an empty handler
//! (installed once, without `SA_RESTART`). A vCPU thread keeps that signal
//! blocked in its own mask and gives KVM (`KVM_SET_SIGNAL_MASK`) the same
//! mask with the signal unblocked, so the signal can only be taken inside
//! `KVM_RUN`. A kick sent while the thread is anywhere else stays pending and
//! makes the next `KVM_RUN` return `EINTR` at once: there is no window where
//! a kick is lost.
//!
//! Before the vCPU has run on a thread there is nobody to signal, so a kick
//! also raises a flag that `run` checks; both sides use sequentially
//! consistent operations so that either the kicker sees the thread or the
//! vCPU sees the flag.
//!
//! The thread is addressed by its kernel thread id through `tgkill`, not by
//! `pthread_t`: signalling a thread that has exited then fails with `ESRCH`
//! instead of touching freed memory.
//!
//! ```no_run
//! # fn demo(vcpu: &dyn sie_hv::Vcpu) {
//! let kicker = vcpu.kicker();
//! std::thread::spawn(move || kicker.kick());
//! # }
//! ```

use std::io;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use crate::VcpuKicker;

/// The signal sie uses to kick vCPU threads. Nothing else in the process
/// should install a handler for it.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

/// The signal handler: it only exists so that the signal interrupts
/// `KVM_RUN` instead of killing the process (the default for RT signals).
extern "C" fn on_kick_signal(_signal: libc::c_int) {}

/// Installs the kick signal's handler once per process.
pub(crate) fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let outcome = INSTALLED.get_or_init(|| {
        let handler: extern "C" fn(libc::c_int) = on_kick_signal;
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as libc::sighandler_t;
        // No SA_RESTART: the point of the signal is to interrupt KVM_RUN.
        action.sa_flags = 0;
        // SAFETY: `action` is fully initialised, the handler is async-signal
        // safe (it does nothing) and a null old-action pointer is allowed.
        let rc = unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL))
        }
    });
    outcome.map_err(io::Error::from_raw_os_error)
}

/// A signal set holding only the kick signal.
fn kick_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set it is given; sigaddset then
    // adds a valid signal number to that initialised set.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), kick_signal());
        set.assume_init()
    }
}

/// Blocks the kick signal in the calling thread and returns the kernel
/// signal set (64 bits, one per signal) KVM should use while the guest runs:
/// the thread's mask with the kick signal unblocked.
pub(crate) fn block_in_thread() -> io::Result<u64> {
    let set = kick_set();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is initialised and `old` is written by the call.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: pthread_sigmask succeeded, so it filled `old`.
    let old = unsafe { old.assume_init() };
    let kick = kick_signal();
    let mut mask = 0u64;
    for signal in 1..=64 {
        // SAFETY: `old` is an initialised set and 1..=64 are valid signal numbers.
        let member = unsafe { libc::sigismember(&old, signal) } == 1;
        if member && signal != kick {
            mask |= 1 << (signal - 1);
        }
    }
    Ok(mask)
}

/// Consumes a pending kick signal of the calling thread, if any, so the next
/// `KVM_RUN` does not return at once for a kick already answered.
pub(crate) fn drain_pending() {
    let set = kick_set();
    let zero = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `zero` are initialised; a null siginfo is allowed.
    // EAGAIN (nothing pending) is the common answer and needs no handling.
    unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) };
}

/// The kernel thread id of the calling thread.
pub(crate) fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Shared between a vCPU and its kickers.
#[derive(Debug, Default)]
pub struct KickState {
    /// A kick not yet answered by a return from `run`.
    pending: AtomicBool,
    /// Kernel thread id of the thread the vCPU runs on; 0 when unknown.
    tid: AtomicI32,
}

impl KickState {
    /// Records the thread the vCPU runs on (0 when it has none).
    pub(crate) fn set_thread(&self, tid: i32) {
        self.tid.store(tid, Ordering::SeqCst);
    }

    /// Consumes a pending kick. A plain load first keeps the common case
    /// (no kick) free of locked instructions.
    #[inline]
    pub(crate) fn take_pending(&self) -> bool {
        self.pending.load(Ordering::SeqCst) && self.pending.swap(false, Ordering::SeqCst)
    }
}

impl VcpuKicker for KickState {
    fn kick(&self) {
        self.pending.store(true, Ordering::SeqCst);
        let tid = self.tid.load(Ordering::SeqCst);
        if tid != 0 {
            // SAFETY: getpid has no preconditions.
            let pid = unsafe { libc::getpid() };
            // SAFETY: tgkill only sends a signal; a stale tid fails with
            // ESRCH, and the handler for the kick signal is installed before
            // any vCPU (and so any kicker) exists. The result is ignored:
            // the pending flag still ends the next run.
            unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, kick_signal()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kick_sets_pending_once() {
        let state = KickState::default();
        assert!(!state.take_pending());
        state.kick();
        assert!(state.take_pending());
        assert!(!state.take_pending());
    }

    #[test]
    fn kick_signal_is_a_realtime_signal() {
        assert!(kick_signal() > libc::SIGRTMIN() && kick_signal() <= libc::SIGRTMAX());
    }

    #[test]
    fn blocked_kick_to_own_thread_is_pending_then_drained() {
        install_handler().unwrap();
        let handle = std::thread::spawn(|| {
            let kvm_mask = block_in_thread().unwrap();
            assert_eq!(kvm_mask & (1 << (kick_signal() - 1)), 0);
            let state = KickState::default();
            state.set_thread(current_tid());
            state.kick();
            let mut pending = MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: sigpending fills the set.
            unsafe { libc::sigpending(pending.as_mut_ptr()) };
            // SAFETY: filled above.
            let pending = unsafe { pending.assume_init() };
            // SAFETY: initialised set, valid signal.
            assert_eq!(unsafe { libc::sigismember(&pending, kick_signal()) }, 1);
            drain_pending();
            let mut after = MaybeUninit::<libc::sigset_t>::uninit();
            // SAFETY: sigpending fills the set.
            unsafe { libc::sigpending(after.as_mut_ptr()) };
            // SAFETY: filled above.
            let after = unsafe { after.assume_init() };
            // SAFETY: initialised set, valid signal.
            assert_eq!(unsafe { libc::sigismember(&after, kick_signal()) }, 0);
        });
        handle.join().unwrap();
    }
}
