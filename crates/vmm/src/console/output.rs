//! Guest serial output, buffered so that a line costs one `write(2)` rather
//! than one per byte: every byte the guest prints is already a VM exit.
//!
//! Flushed at each newline, when the buffer fills, at exit, and for a
//! partial line (a prompt) once its flush deadline passes: the first byte
//! left buffered writes the eventfd the event loop's `ConsoleFlush` waits
//! on, which arms a one-shot timer (`flush.rs`). Nothing is armed, and the
//! VMM thread sleeps, while no output waits.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

const FLUSH_THRESHOLD: usize = 4096;

struct Inner {
    buffer: Vec<u8>,
    sink: Box<dyn Write + Send>,
    /// Bytes lost because the sink failed (e.g. stdout closed).
    dropped: u64,
    /// The event loop's flush wake (once a `ConsoleFlush` watches).
    wake: Option<Arc<EventFd>>,
    /// The wake was written for the bytes now buffered: one write per
    /// partial line, not one per byte (each byte is already a VM exit).
    woken: bool,
}

impl Inner {
    fn flush(&mut self) {
        self.woken = false;
        if self.buffer.is_empty() {
            return;
        }
        if self.sink.write_all(&self.buffer).is_err() || self.sink.flush().is_err() {
            self.dropped += self.buffer.len() as u64;
        }
        self.buffer.clear();
    }

    /// Tells the event loop that a partial line waits, once per line.
    fn wake_if_buffered(&mut self) {
        if self.buffer.is_empty() || self.woken {
            return;
        }
        if let Some(wake) = &self.wake {
            self.woken = true;
            // A full counter still wakes the loop.
            let _ = wake.write(1);
        }
    }
}

/// A cloneable writer shared by the serial device (vCPU thread) and the
/// event loop (the partial-line flush).
#[derive(Clone)]
pub struct ConsoleOutput {
    inner: Arc<Mutex<Inner>>,
}

impl ConsoleOutput {
    /// Output to `sink`.
    pub fn new(sink: Box<dyn Write + Send>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                buffer: Vec::with_capacity(FLUSH_THRESHOLD),
                sink,
                dropped: 0,
                wake: None,
                woken: false,
            })),
        }
    }

    /// Output to the process's stdout.
    pub fn stdout() -> Self {
        Self::new(Box::new(io::stdout()))
    }

    /// Writes out whatever is buffered.
    pub fn flush_pending(&self) {
        self.lock().flush();
    }

    /// True while output waits in the buffer.
    pub fn has_pending(&self) -> bool {
        !self.lock().buffer.is_empty()
    }

    /// From now on `wake` is written when a partial line is left
    /// buffered, at once if one is already.
    pub(super) fn set_wake(&self, wake: Arc<EventFd>) {
        let mut inner = self.lock();
        inner.wake = Some(wake);
        inner.woken = false;
        inner.wake_if_buffered();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain bytes and a sink: still usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes lost because the sink failed.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut inner = self.lock();
        inner.buffer.extend_from_slice(bytes);
        if bytes.contains(&b'\n') || inner.buffer.len() >= FLUSH_THRESHOLD {
            inner.flush();
        }
        inner.wake_if_buffered();
        // The guest never sees host output errors: they are counted instead.
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_pending();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_written_at_newline_and_partial_lines_on_flush() {
        let sink = Shared::default();
        let mut out = ConsoleOutput::new(Box::new(sink.clone()));
        out.write_all(b"hel").unwrap();
        assert!(sink.0.lock().unwrap().is_empty());
        out.write_all(b"lo\n# ").unwrap();
        assert_eq!(*sink.0.lock().unwrap(), b"hello\n# ");
        out.write_all(b"x").unwrap();
        out.flush_pending();
        assert_eq!(*sink.0.lock().unwrap(), b"hello\n# x");
    }

    #[test]
    fn a_failing_sink_counts_lost_bytes_and_never_errors() {
        let mut out = ConsoleOutput::new(Box::new(Broken));
        assert_eq!(out.write(b"abc\n").unwrap(), 4);
        assert_eq!(out.dropped(), 4);
    }
}
