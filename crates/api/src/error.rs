//! Why the API server could not start or be published.

use std::io;
use std::path::PathBuf;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A live server answers on the path.
    #[error("API socket {0}: another process is already listening there")]
    InUse(PathBuf),
    /// The path is taken by something other than a socket.
    #[error("API socket {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// The server thread's seccomp filter could not be installed.
    #[error("API server")]
    Seccomp(#[source] sie_seccomp::SeccompError),
    /// A system call failed.
    #[error("API socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
}
