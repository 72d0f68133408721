//! Tiny guests built into the sie binary (for `doctor` and `bench`), handed
//! to the VM builder as a path without touching the filesystem: an anonymous
//! memory file, reached through /proc/self/fd.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;

/// A guest image in an anonymous file; the file lives as long as this value.
pub struct EmbeddedGuest {
    file: File,
}

impl EmbeddedGuest {
    /// Puts `bytes` in a new anonymous file.
    pub fn new(name: &str, bytes: &[u8]) -> std::io::Result<Self> {
        let name = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
        // SAFETY: `name` is a valid NUL-terminated string; flags are valid.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(bytes)?;
        Ok(Self { file })
    }

    /// A path the builder can open.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}
