//! A line sink for logs and metrics that never blocks.
//!
//! Orchestrators pass FIFOs that nobody may ever read (firecracker-containerd
//! does). A blocking write to a full FIFO would stall whoever writes, so the
//! sink is opened non-blocking and a line that does not fit is dropped and
//! counted. A FIFO is opened read-write: opening only its write end without
//! a reader fails (ENXIO) when non-blocking, and holding the read end too
//! keeps writes from failing with EPIPE once a reader comes and goes.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a sink could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {path}: {source}")]
pub struct SinkError {
    /// The path.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A non-blocking, line-oriented output file or FIFO.
#[derive(Debug)]
pub struct LineSink {
    file: Mutex<File>,
    path: PathBuf,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl LineSink {
    /// Opens `path`: a FIFO read-write, anything else for appending
    /// (created if missing), always non-blocking.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let error = |source| SinkError {
            path: path.to_path_buf(),
            source,
        };
        let is_fifo = std::fs::metadata(path)
            .map(|m| m.file_type().is_fifo())
            .unwrap_or(false);
        let mut options = OpenOptions::new();
        if is_fifo {
            options.read(true).write(true);
        } else {
            options.append(true).create(true);
        }
        let file = options
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(error)?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(error(std::io::Error::from(ErrorKind::IsADirectory)));
        }
        Ok(Self {
            file: Mutex::new(file),
            path: path.to_path_buf(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        })
    }

    /// Writes one line (a newline is added if missing). Returns false, and
    /// counts the line as dropped, if it could not be written whole now.
    pub fn write_line(&self, line: &str) -> bool {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            bytes.push(b'\n');
        }
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        // One write call: a FIFO write of up to PIPE_BUF (4 KiB) bytes is
        // atomic, so a reader never sees half a line from a full pipe. A
        // partial write of a longer line still counts as written.
        match file.write(&bytes) {
            Ok(n) if n > 0 => {
                self.written.fetch_add(1, Ordering::Relaxed);
                true
            }
            _ => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Lines dropped because the sink was full or failing.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Where the sink writes.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sie-sink-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn regular_files_are_appended_to_line_by_line() {
        let path = scratch("file").join("metrics.json");
        std::fs::write(&path, "old\n").unwrap();
        let sink = LineSink::open(&path).unwrap();
        assert!(sink.write_line("{\"a\":1}"));
        assert!(sink.write_line("{\"a\":2}\n"));
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "old\n{\"a\":1}\n{\"a\":2}\n"
        );
        assert_eq!((sink.written(), sink.dropped()), (2, 0));
    }

    #[test]
    fn a_fifo_nobody_reads_fills_up_and_then_drops_without_blocking() {
        let path = scratch("fifo").join("log.fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let sink = LineSink::open(&path).unwrap();
        let line = "x".repeat(1000);
        let started = std::time::Instant::now();
        for _ in 0..200 {
            sink.write_line(&line);
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(sink.written() >= 60, "a 64 KiB pipe holds ~65 lines");
        assert!(sink.dropped() > 0, "the rest is dropped and counted");
        assert_eq!(sink.written() + sink.dropped(), 200);
    }

    #[test]
    fn a_directory_or_missing_parent_is_a_clear_error() {
        let dir = scratch("dir");
        let error = LineSink::open(&dir).unwrap_err();
        assert!(error.to_string().contains("cannot open"));
        assert!(LineSink::open(&dir.join("no/such/file")).is_err());
    }
}
