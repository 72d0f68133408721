//! The socket file appears only once the VMM answers on it.
//!
//! Clients take the file's existence to mean "ready" (firecracker-go-sdk
//! stats it, then sends at once), so a request sent while the VMM still
//! starts up would wait, inside its own latency, for that start. The server
//! binds a hidden name beside the path; the VMM renames it into place when
//! it is ready to serve ([`crate::ApiHandle::publish`]). A rename keeps the
//! socket's inode, so nothing that is connected notices.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::Receiver;

use crate::error::ApiError;

/// The longest path a Unix socket can be bound at (`sun_path` less its NUL).
const SUN_PATH_MAX: usize = 107;

/// Where to bind before the socket is published: `.NAME.PID.N` beside
/// `path` (N counts this process's servers), or `None` when that name
/// would not fit a socket address (the server then binds `path` itself,
/// published at once).
pub(crate) fn hidden_name(path: &Path) -> Option<PathBuf> {
    static SERVERS: AtomicU32 = AtomicU32::new(0);
    let name = path.file_name()?;
    let mut hidden = std::ffi::OsString::from(".");
    hidden.push(name);
    let n = SERVERS.fetch_add(1, Ordering::Relaxed);
    hidden.push(format!(".{}.{n}", std::process::id()));
    let hidden = path.with_file_name(hidden);
    (hidden.as_os_str().as_bytes().len() <= SUN_PATH_MAX).then_some(hidden)
}

/// A bound server not yet at its path: what publishing it needs.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Where the socket is bound now.
    pub(crate) from: PathBuf,
    /// The path clients were told.
    pub(crate) to: PathBuf,
    /// The server thread's word on its seccomp filter.
    pub(crate) filtered: Receiver<Result<(), sie_seccomp::SeccompError>>,
}

impl Pending {
    /// Waits for the server thread to be filtered, then moves the socket to
    /// its path. A live server that took the path meanwhile is not
    /// replaced; a stale socket there is.
    pub(crate) fn publish(self) -> Result<(), ApiError> {
        match self.filtered.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(ApiError::Seccomp(error)),
            Err(_) => {
                return Err(ApiError::Io {
                    path: self.to,
                    source: io::Error::other("the server thread ended at its start"),
                });
            }
        }
        if self.from == self.to {
            return Ok(());
        }
        let io_error = |source| ApiError::Io {
            path: self.to.clone(),
            source,
        };
        match rename_no_replace(&self.from, &self.to) {
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                // Checked when bound; whatever is there came since.
                clear_stale_socket(&self.to)?;
                rename_no_replace(&self.from, &self.to).map_err(io_error)
            }
            other => other.map_err(io_error),
        }
    }
}

/// Makes `path` free for a server: a stale socket there (a file nobody
/// answers on) is removed; a live one is [`ApiError::InUse`] and any other
/// file [`ApiError::NotASocket`]. Nothing there is fine.
pub(crate) fn clear_stale_socket(path: &Path) -> Result<(), ApiError> {
    let io_error = |source| ApiError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => Err(ApiError::InUse(path.to_path_buf())),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("api: removing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(io_error)
            }
            Err(error) => Err(io_error(error)),
        },
        Ok(_) => Err(ApiError::NotASocket(path.to_path_buf())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error(error)),
    }
}

/// `rename(from, to)` that fails with `AlreadyExists` instead of replacing
/// `to`; where the file system cannot promise that, a check then a rename.
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    let c_path = |path: &Path| {
        std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the path"))
    };
    let (from_c, to_c) = (c_path(from)?, c_path(to)?);
    // SAFETY: renameat2 reads two NUL-terminated paths that outlive the
    // call; AT_FDCWD makes them relative to the working directory as
    // rename's are. The raw syscall, as glibc and musl do not all wrap it.
    let result = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if result == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() != Some(libc::EINVAL) {
        return Err(error);
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    std::fs::rename(from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hidden_name_sits_beside_the_path_and_fits_a_socket_address() {
        let hidden = hidden_name(Path::new("/run/fc/api.sock")).unwrap();
        assert_eq!(hidden.parent(), Some(Path::new("/run/fc")));
        let name = hidden.file_name().unwrap().to_string_lossy().into_owned();
        let prefix = format!(".api.sock.{}.", std::process::id());
        assert!(name.starts_with(&prefix), "{name}");
        let again = hidden_name(Path::new("/run/fc/api.sock")).unwrap();
        assert_ne!(again, hidden, "each server of a process has its own");
        let long = format!("/{}", "d".repeat(SUN_PATH_MAX - 4));
        assert!(long.len() <= SUN_PATH_MAX);
        assert_eq!(hidden_name(Path::new(&long)), None, "too long to bind");
    }

    #[test]
    fn a_rename_never_replaces_a_file_that_came_meanwhile() {
        let dir = std::env::temp_dir().join(format!("sie-publish-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (from, to) = (dir.join("from"), dir.join("to"));
        std::fs::write(&from, b"ours").unwrap();
        std::fs::write(&to, b"theirs").unwrap();
        let error = rename_no_replace(&from, &to).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&to).unwrap(), b"theirs");
        std::fs::remove_file(&to).unwrap();
        rename_no_replace(&from, &to).unwrap();
        assert_eq!(std::fs::read(&to).unwrap(), b"ours");
        assert!(!from.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
