//! `sie ctl console`: this terminal attached to a guest's console socket.
//!
//! The terminal is put in raw mode (every key, Ctrl-C included, goes to the
//! guest) and restored on the way out. The escape is Ctrl-] followed by
//! `q` (or `.`): it leaves without touching the guest; Ctrl-] twice sends
//! one Ctrl-]. When stdin is not a terminal (a script), its bytes go to
//! the guest as they are and the escape still works; at its end the client
//! keeps showing output until sie closes the socket.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

type BoxError = Box<dyn std::error::Error>;

/// Ctrl-], the escape key (as telnet and many serial consoles use it).
const ESCAPE: u8 = 0x1d;

/// The escape sequence as a tiny state machine over typed bytes.
#[derive(Debug, Default)]
struct Escape {
    armed: bool,
}

impl Escape {
    /// Adds the bytes to send for `typed` to `out`; true when the user
    /// asked to leave (what came before is still in `out`).
    fn feed(&mut self, typed: &[u8], out: &mut Vec<u8>) -> bool {
        for &byte in typed {
            if self.armed {
                self.armed = false;
                match byte {
                    b'q' | b'.' => return true,
                    ESCAPE => out.push(ESCAPE),
                    other => out.extend_from_slice(&[ESCAPE, other]),
                }
            } else if byte == ESCAPE {
                self.armed = true;
            } else {
                out.push(byte);
            }
        }
        false
    }
}

/// Raw mode on stdin's terminal until dropped (no-op when stdin is not one).
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> Self {
        // SAFETY: isatty only inspects the descriptor number.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return Self(None);
        }
        // SAFETY: termios is plain data; all-zero is valid to fill.
        let mut original: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: stdin is a terminal and `original` is a termios to write.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut original) } != 0 {
            return Self(None);
        }
        let mut raw = original;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: stdin is a terminal and `raw` is fully initialised.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return Self(None);
        }
        Self(Some(original))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(original) = &self.0 {
            // SAFETY: `original` came from tcgetattr on the same descriptor.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, original) };
        }
    }
}

/// Attaches to the console socket at `path` until the user leaves or sie
/// closes it; returns the exit status (0).
pub fn attach(path: &Path) -> Result<u8, BoxError> {
    let mut socket = UnixStream::connect(path)
        .map_err(|e| format!("cannot attach to the console {}: {e}", path.display()))?;
    let raw = RawTerminal::enter();
    let eol = if raw.0.is_some() { "\r\n" } else { "\n" };
    eprint!(
        "[sie: attached to {}; Ctrl-] q leaves]{eol}",
        path.display()
    );
    let mut stdin_open = true;
    let mut escape = Escape::default();
    let mut stdout = io::stdout().lock();
    let mut buffer = [0u8; 4096];
    let why = loop {
        let mut fds = [
            libc::pollfd {
                fd: socket.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { libc::STDIN_FILENO } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error.into());
        }
        if fds[0].revents != 0 {
            match socket.read(&mut buffer) {
                Ok(0) => break "the console was closed (the VM ended, or another client took it)",
                Ok(n) => {
                    stdout.write_all(&buffer[..n])?;
                    stdout.flush()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if fds[1].revents != 0 {
            // SAFETY: `buffer` is valid for writes of its length.
            let n =
                unsafe { libc::read(libc::STDIN_FILENO, buffer.as_mut_ptr().cast(), buffer.len()) };
            if n <= 0 {
                stdin_open = false;
                continue;
            }
            let mut out = Vec::with_capacity(n as usize);
            let leave = escape.feed(&buffer[..n as usize], &mut out);
            socket.write_all(&out)?;
            if leave {
                break "detached";
            }
        }
    };
    drop(raw);
    eprintln!("\n[sie: {why}]");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(escape: &mut Escape, typed: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let leave = escape.feed(typed, &mut out);
        (out, leave)
    }

    #[test]
    fn ctrl_bracket_q_leaves_and_everything_else_passes() {
        let mut escape = Escape::default();
        assert_eq!(feed(&mut escape, b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(feed(&mut escape, b"a\x1dq"), (b"a".to_vec(), true));
    }

    #[test]
    fn the_escape_spans_reads_and_doubles_to_send_itself() {
        let mut escape = Escape::default();
        assert_eq!(feed(&mut escape, b"\x1d"), (Vec::new(), false));
        assert_eq!(feed(&mut escape, b"\x1d"), (vec![ESCAPE], false));
        assert_eq!(feed(&mut escape, b"\x1dx"), (vec![ESCAPE, b'x'], false));
        assert_eq!(feed(&mut escape, b"\x1d"), (Vec::new(), false));
        assert_eq!(feed(&mut escape, b"."), (Vec::new(), true));
    }
}
