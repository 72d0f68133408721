//! Raw mode for the terminal on stdin while a guest runs, restored on every
//! exit path: normal return (guard drop), signals (the event loop returns and
//! drops the guard), panics (the binary's panic hook calls
//! [`restore_terminal`]) and a forbidden system call (the SIGSYS handler).

use std::sync::Mutex;

/// The settings to restore, shared with the panic hook.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);

/// Puts stdin's terminal in raw mode until dropped.
pub struct TerminalGuard(());

impl TerminalGuard {
    /// Enters raw mode if stdin is a terminal; `None` otherwise (pipes, files, CI).
    pub fn raw_stdin() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; all-zero is a valid bit pattern to fill.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal and `original` is a valid termios to write.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return None;
        }
        let mut raw = original;
        // Raw input (no line editing, no echo, bytes as typed) but keep ISIG,
        // so Ctrl-C still stops sie, and keep output processing so the host
        // terminal renders the guest's newlines as usual.
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::IEXTEN);
        raw.c_cflag &= !(libc::CSIZE | libc::PARENB);
        raw.c_cflag |= libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(original);
        // A forbidden system call ends sie from a signal handler, where no
        // guard drops: the handler puts these settings back itself.
        sie_seccomp::sigsys::restore_terminal_on_exit(original);
        // SAFETY: stdin is a terminal and `raw` is a fully initialised termios.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(TerminalGuard(()))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Restores stdin's terminal settings if sie changed them. Safe to call more
/// than once and from a panic hook.
pub fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(original) = saved {
        // SAFETY: `original` came from tcgetattr on the same descriptor.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &original) };
    }
}
