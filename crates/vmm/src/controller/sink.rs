//! A line sink for logs and metrics that never blocks and never fails.
//!
//! Orchestrators pass FIFOs that nobody may ever read (firecracker-containerd
//! does). A blocking write to a full FIFO would stall whoever writes, so the
//! sink is opened non-blocking and a line that does not fit is dropped and
//! counted. A FIFO is opened read-write: opening only its write end without
//! a reader fails (ENXIO) when non-blocking, and holding the read end too
//! keeps writes from failing with EPIPE once a reader comes and goes.
//!
//! A file whose disk fills up or fails (ENOSPC, EIO, EFBIG past
//! `RLIMIT_FSIZE`) is no reason to stop a VM: the line is dropped and
//! counted apart ([`LineSink::failed`]), the caller learns of the loss
//! ([`LineSink::pending_loss`]) to report it once lines get through again,
//! and a line cut short by a full disk is ended by a newline before the
//! next one, so every line after it reads whole. A file deleted under sie
//! keeps being written (the descriptor holds it): sie never reopens a
//! path, which would need `open` in every thread's seccomp filter and
//! could follow a path swapped by someone else.

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

/// Lines lost since the last one written, and why the last of them was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Lines dropped in a row.
    pub lines: u64,
    /// The error of the last failed write (errno), or `None` when the
    /// sink was only full (a FIFO nobody reads fast enough).
    pub errno: Option<i32>,
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Some(errno) => write!(
                f,
                "{} lines lost ({})",
                self.lines,
                std::io::Error::from_raw_os_error(errno)
            ),
            None => write!(f, "{} lines lost (full)", self.lines),
        }
    }
}

/// The open file and what the last writes left behind.
#[derive(Debug)]
struct Output {
    file: File,
    /// The last write stopped inside a line: start the next on a new one.
    torn: bool,
    /// Lines dropped since the last line written.
    loss: Option<Loss>,
}

/// A non-blocking, line-oriented output file or FIFO.
#[derive(Debug)]
pub struct LineSink {
    output: Mutex<Output>,
    path: PathBuf,
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
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
            output: Mutex::new(Output {
                file,
                torn: false,
                loss: None,
            }),
            path: path.to_path_buf(),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// Writes one line (a newline is added if missing). Returns false, and
    /// counts the line as dropped, if it could not be written now: the
    /// sink is full, or the write failed (counted in [`Self::failed`] too).
    pub fn write_line(&self, line: &str) -> bool {
        let mut output = self.output.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = Vec::with_capacity(line.len() + 2);
        if output.torn {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(line.as_bytes());
        if !line.ends_with('\n') {
            bytes.push(b'\n');
        }
        // One write call: a FIFO write of up to PIPE_BUF (4 KiB) bytes is
        // atomic, so a reader never sees half a line from a full pipe. A
        // partial write (a disk filling up, a long line into a pipe) still
        // counts as written, and the next line starts on a new one.
        let errno = match output.file.write(&bytes) {
            Ok(n) if n > 0 => {
                output.torn = n < bytes.len();
                output.loss = None;
                self.written.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Ok(_) => Some(libc::EIO),
            Err(error) if error.kind() == ErrorKind::WouldBlock => None,
            Err(error) => Some(error.raw_os_error().unwrap_or(libc::EIO)),
        };
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if errno.is_some() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let lines = output.loss.map_or(0, |loss| loss.lines) + 1;
        output.loss = Some(Loss { lines, errno });
        false
    }

    /// The lines dropped since the last one written, if any: a caller that
    /// can say so in its own output does, before its next line.
    pub fn pending_loss(&self) -> Option<Loss> {
        self.output.lock().unwrap_or_else(|e| e.into_inner()).loss
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Lines dropped because the sink was full or failing.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Of [`Self::dropped`], the lines whose write failed (disk full, I/O
    /// error, file size limit) rather than finding the sink full.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
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

    #[test]
    fn a_failing_device_drops_and_counts_every_line_apart_from_full() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let sink = LineSink::open(Path::new("/dev/full")).unwrap();
        assert!(!sink.write_line("one"));
        assert!(!sink.write_line("two"));
        assert_eq!((sink.written(), sink.dropped(), sink.failed()), (0, 2, 2));
        let loss = sink.pending_loss().unwrap();
        assert_eq!(
            loss,
            Loss {
                lines: 2,
                errno: Some(libc::ENOSPC)
            }
        );
        assert!(loss.to_string().starts_with("2 lines lost (No space left"));
    }

    #[test]
    fn a_file_deleted_under_the_sink_keeps_being_written() {
        let path = scratch("deleted").join("log");
        let sink = LineSink::open(&path).unwrap();
        assert!(sink.write_line("before"));
        std::fs::remove_file(&path).unwrap();
        // The descriptor still holds the file: no error, nothing reopened.
        assert!(sink.write_line("after"));
        assert_eq!((sink.written(), sink.dropped()), (2, 0));
        assert!(!path.exists());
    }

    /// A tmpfs of `size_kib` KiB on `dir` (tests run as root), unmounted
    /// when dropped.
    struct SmallFs(PathBuf);

    impl SmallFs {
        fn mount(dir: &Path, size_kib: u32) -> Self {
            let c = |s: &str| std::ffi::CString::new(s).unwrap();
            let target = c(dir.to_str().unwrap());
            let (tmpfs, data) = (c("tmpfs"), c(&format!("size={size_kib}k")));
            // SAFETY: every pointer is a live NUL-terminated string.
            let rc = unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    target.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )
            };
            assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
            Self(dir.to_path_buf())
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let target = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
            // SAFETY: a live NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }

    #[test]
    fn a_disk_that_fills_up_loses_lines_and_recovers_with_whole_lines() {
        let dir = scratch("tmpfs");
        let fs = SmallFs::mount(&dir, 64);
        let filler = dir.join("filler");
        let sink = LineSink::open(&dir.join("metrics.json")).unwrap();
        // Fill the filesystem to the brim with another file.
        let mut file = File::create(&filler).unwrap();
        while file.write(&[0u8; 4096]).is_ok_and(|n| n > 0) {}
        drop(file);
        // Lines of 1000 bytes: on a disk that is full they fail, counted.
        let line = format!("{{\"pad\":\"{}\"}}", "x".repeat(990));
        for _ in 0..5 {
            sink.write_line(&line);
        }
        assert!(sink.failed() >= 4, "{} failed", sink.failed());
        assert_eq!(sink.failed(), sink.dropped());
        let loss = sink.pending_loss().unwrap();
        assert_eq!(loss.errno, Some(libc::ENOSPC));
        // Room comes back: writing resumes and every line after the
        // fault is whole JSON, even if the fault cut one short.
        std::fs::remove_file(&filler).unwrap();
        assert!(sink.write_line(&line));
        assert!(sink.write_line("{\"after\":1}"));
        assert_eq!(sink.pending_loss(), None);
        let text = std::fs::read_to_string(dir.join("metrics.json")).unwrap();
        let last: Vec<&str> = text.lines().rev().take(2).collect();
        assert_eq!(last[0], "{\"after\":1}");
        assert_eq!(last[1], line);
        drop(fs);
    }

    #[test]
    fn a_line_cut_short_is_ended_before_the_next() {
        // A pipe with room for less than the line: the write is partial.
        let path = scratch("torn").join("log.fifo");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        let sink = LineSink::open(&path).unwrap();
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
        // SAFETY: F_SETPIPE_SZ on a pipe we own; 4096 is one page.
        assert!(unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, 4096) } >= 4096);
        let drain = |reader: &mut File| {
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(reader, &mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            got
        };
        assert!(sink.write_line(&"a".repeat(3000)));
        // Longer than PIPE_BUF, so not atomic: only part fits.
        assert!(sink.write_line(&"b".repeat(5000)), "partly written");
        let first = drain(&mut reader);
        assert!(first.len() < 3001 + 5001, "{} bytes", first.len());
        assert!(sink.write_line("next"));
        let rest = drain(&mut reader);
        assert_eq!(rest, b"\nnext\n", "the cut line is ended first");
    }
}
