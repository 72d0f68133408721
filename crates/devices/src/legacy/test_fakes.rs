//! Test doubles for the traits devices signal through.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::{Interrupt, VmRequests};

/// Counts triggers; can be told to fail.
#[derive(Default)]
pub struct CountingInterrupt {
    count: AtomicU64,
    pub fail: AtomicBool,
}

impl CountingInterrupt {
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }
}

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(io::Error::other("irqfd gone"));
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Counts reset and panic requests.
#[derive(Default)]
pub struct RecordingVm {
    pub resets: AtomicU64,
    pub panics: AtomicU64,
}

impl VmRequests for RecordingVm {
    fn request_reset(&self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
    }
    fn report_panic(&self) {
        self.panics.fetch_add(1, Ordering::SeqCst);
    }
}

/// A writer whose bytes the test can inspect after handing it away.
#[derive(Clone, Default)]
pub struct SharedBuffer(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuffer {
    pub fn contents(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

impl io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that always fails, like stdout after the reader went away.
pub struct BrokenPipe;

impl io::Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
    fn flush(&mut self) -> io::Result<()> {
        Err(io::ErrorKind::BrokenPipe.into())
    }
}
