//! `connect(2)` to a Unix socket path without blocking the event thread.
//!
//! A blocking connect to a listener whose accept backlog is full sleeps
//! until the listener catches up; a guest could use that (a REQUEST per
//! queue slot) to stall every device on the event thread. A non-blocking
//! AF_UNIX connect never returns EINPROGRESS: it either completes at once
//! or fails (EAGAIN for a full backlog), which the caller turns into RST.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

/// A non-blocking stream connected to the socket at `path`.
pub fn connect(path: &OsStr) -> io::Result<UnixStream> {
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    let bytes = path.as_bytes();
    // Room for the terminating NUL; an embedded NUL would name another path.
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (slot, &byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = byte as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes that
    // outlives the call, and `socket` owns the descriptor throughout.
    let rc = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;
    use crate::vsock::test_rig::TempDir;

    #[test]
    fn connects_refuses_and_never_blocks() {
        let dir = TempDir::new();
        let path = dir.0.join("s");
        assert!(connect(path.as_os_str()).is_err());
        let listener = UnixListener::bind(&path).expect("bind");
        // SAFETY: listen(2) on a descriptor `listener` owns; backlog 0
        // (one pending connection) makes the full-backlog case cheap.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        let mut held = Vec::new();
        let error = loop {
            match connect(path.as_os_str()) {
                Ok(stream) => held.push(stream),
                Err(error) => break error,
            }
            assert!(held.len() < 64, "backlog never filled");
        };
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        assert!(!held.is_empty());
        assert!(connect(OsStr::new(&"x".repeat(200))).is_err());
    }
}
