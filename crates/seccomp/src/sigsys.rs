//! The SIGSYS reporter: a system call a filter refuses traps, and instead of
//! a silent hang or an unexplained kill, sie writes one line naming the
//! system call number and the thread kind to stderr, counts it, and exits
//! with [`EXIT_SECCOMP`].
//!
//! The handler runs inside a trapped system call, on a thread whose filter
//! may allow little, so it only uses what every filter sie ships allows and
//! what is async-signal-safe: a thread-local read, an atomic add,
//! `tcsetattr(3)` to give back a terminal sie put in raw mode (every filter
//! allows setting stdin's terminal), one `write(2)` of a line formatted on
//! the stack, and `_exit(2)`.

use std::cell::Cell;
use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ThreadKind;

/// sie's exit status after a forbidden system call (Firecracker's too). sie
/// reports signals as 128+N only for SIGHUP, SIGINT and SIGTERM (129, 130,
/// 143), so 148 is never taken for one.
pub const EXIT_SECCOMP: u8 = 148;

/// Forbidden system calls seen by this process.
static DENIED: AtomicU64 = AtomicU64::new(0);

/// Forbidden system calls seen so far (the process exits at the first, so
/// this is what a metrics line written before it can show).
pub fn denied_count() -> u64 {
    DENIED.load(Ordering::Relaxed)
}

thread_local! {
    // A const-initialised Cell without Drop: reading it from a signal handler
    // is a plain thread-local load, with no lazy initialisation.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// The terminal settings to put back on stdin before exiting (set once,
/// before any filter, by whoever puts the terminal in raw mode).
static TERMINAL: OnceLock<libc::termios> = OnceLock::new();

/// Asks the handler to restore stdin's terminal to `original` before it
/// exits, so a trapped call does not leave the user's shell raw.
pub fn restore_terminal_on_exit(original: libc::termios) {
    // A second raw mode in one process is the same terminal: the first
    // settings are the ones to give back.
    let _ = TERMINAL.set(original);
}

/// Records the calling thread's kind for the report.
pub(crate) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|cell| cell.set(Some(kind)));
}

/// Installs the handler once per process.
pub(crate) fn install_handler() -> io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let outcome = INSTALLED.get_or_init(|| {
        let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            on_sigsys;
        // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised, the handler only does
        // async-signal-safe work, and a null old-action pointer is allowed.
        let rc = unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) };
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

/// Where the kernel puts the trapped call's number in a SIGSYS siginfo
/// (`_sigsys._syscall`, after `si_signo`, `si_errno`, `si_code`, padding and
/// the 8-byte `_call_addr`, on 64-bit Linux).
const SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    DENIED.fetch_add(1, Ordering::Relaxed);
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a full siginfo for SA_SIGINFO handlers;
        // for SIGSYS from seccomp the int at this offset is the call number.
        unsafe {
            info.cast::<u8>()
                .add(SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let kind = KIND.try_with(Cell::get).ok().flatten();
    let mut line = Line::default();
    line.push(b"sie: seccomp: the ");
    line.push(kind.map_or("unfiltered", ThreadKind::name).as_bytes());
    line.push(b" thread made system call ");
    line.push_number(i64::from(syscall));
    line.push(b", which its filter forbids; exiting with status ");
    line.push_number(i64::from(EXIT_SECCOMP));
    line.push(b"\n");
    if let Some(original) = TERMINAL.get() {
        // SAFETY: tcsetattr is async-signal-safe (POSIX); `original` came
        // from tcgetattr on stdin and lives for the whole process.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is
    // valid for `len` bytes. A failed write has nobody to tell.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        libc::_exit(i32::from(EXIT_SECCOMP));
    }
}

/// A line built on the stack (no allocation in a signal handler).
struct Line {
    bytes: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Self {
        Self {
            bytes: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, text: &[u8]) {
        for &byte in text {
            if let Some(slot) = self.bytes.get_mut(self.len) {
                *slot = byte;
                self.len += 1;
            }
        }
    }

    fn push_number(&mut self, value: i64) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut rest = value.unsigned_abs();
        let mut count = 0;
        loop {
            digits[count] = b'0' + (rest % 10) as u8;
            count += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for index in (0..count).rev() {
            self.push(&digits[index..=index]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_formats_numbers_without_allocating() {
        let mut line = Line::default();
        line.push(b"n=");
        line.push_number(0);
        line.push(b" ");
        line.push_number(110);
        line.push(b" ");
        line.push_number(-1);
        assert_eq!(&line.bytes[..line.len], b"n=0 110 -1");
    }

    #[test]
    fn line_drops_what_does_not_fit() {
        let mut line = Line::default();
        line.push(&[b'x'; 200]);
        assert_eq!(line.len, 160);
    }
}
