//! A writer for the guest console that batches output into lines.
//!
//! The UART sees one byte per VM exit; writing each byte straight to stdout
//! costs a syscall per byte. This writer keeps bytes in a fixed buffer and
//! writes them out at each newline, when the buffer fills, or when
//! [`flush`](std::io::Write::flush) is called (which the VMM does through
//! [`SerialDevice::flush_output`](super::SerialDevice::flush_output) when the
//! guest stops writing, so a prompt without a newline still appears).

use std::io::{self, Write};

/// Default buffer size: long enough for any console line.
const DEFAULT_CAPACITY: usize = 4096;

/// Buffers output until a newline, a full buffer or an explicit flush.
#[derive(Debug)]
pub struct LineBufferedOutput<W: Write> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> LineBufferedOutput<W> {
    /// Wraps `inner` with a 4 KiB buffer.
    pub fn new(inner: W) -> Self {
        Self::with_capacity(inner, DEFAULT_CAPACITY)
    }

    /// Wraps `inner` with a buffer of `capacity` bytes (at least 1).
    pub fn with_capacity(inner: W, capacity: usize) -> Self {
        Self {
            inner,
            buf: Vec::with_capacity(capacity.max(1)),
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn write_out(&mut self) -> io::Result<()> {
        let result = self
            .inner
            .write_all(&self.buf)
            .and_then(|()| self.inner.flush());
        // On error the bytes are dropped rather than kept: a dead stdout must
        // neither grow this buffer nor make every later byte fail twice.
        self.buf.clear();
        result
    }
}

impl<W: Write> Write for LineBufferedOutput<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let capacity = self.buf.capacity();
        if self.buf.len() + bytes.len() > capacity {
            self.write_out()?;
        }
        if bytes.len() >= capacity {
            // Too big to buffer: pass straight through.
            self.inner.write_all(bytes)?;
            self.inner.flush()?;
            return Ok(bytes.len());
        }
        self.buf.extend_from_slice(bytes);
        if bytes.contains(&b'\n') || self.buf.len() == capacity {
            self.write_out()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return self.inner.flush();
        }
        self.write_out()
    }
}

impl<W: Write> Drop for LineBufferedOutput<W> {
    fn drop(&mut self) {
        // Best effort: nothing useful can be done with an error while dropping.
        let _ = self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_fakes::{BrokenPipe, SharedBuffer};

    #[test]
    fn holds_bytes_until_newline() {
        let sink = SharedBuffer::default();
        let mut out = LineBufferedOutput::new(sink.clone());
        for &b in b"login: " {
            out.write_all(&[b]).unwrap();
        }
        assert!(sink.contents().is_empty());
        out.write_all(b"\n").unwrap();
        assert_eq!(sink.contents(), b"login: \n");
        assert_eq!(out.pending(), 0);
    }

    #[test]
    fn explicit_flush_writes_a_partial_line() {
        let sink = SharedBuffer::default();
        let mut out = LineBufferedOutput::new(sink.clone());
        out.write_all(b"# ").unwrap();
        out.flush().unwrap();
        assert_eq!(sink.contents(), b"# ");
    }

    #[test]
    fn full_buffer_is_written_without_growing() {
        let sink = SharedBuffer::default();
        let mut out = LineBufferedOutput::with_capacity(sink.clone(), 4);
        for &b in b"abcdef" {
            out.write_all(&[b]).unwrap();
        }
        assert_eq!(sink.contents(), b"abcd");
        assert_eq!(out.pending(), 2);
        out.write_all(b"0123456789").unwrap();
        assert_eq!(sink.contents(), b"abcdef0123456789");
    }

    #[test]
    fn dropping_flushes() {
        let sink = SharedBuffer::default();
        LineBufferedOutput::new(sink.clone())
            .write_all(b"bye")
            .unwrap();
        assert_eq!(sink.contents(), b"bye");
    }

    #[test]
    fn errors_drop_the_buffer() {
        let mut out = LineBufferedOutput::new(BrokenPipe);
        out.write_all(b"partial").unwrap();
        assert!(out.write_all(b"\n").is_err());
        assert_eq!(out.pending(), 0);
    }
}
