//! The two ways a drive's I/O leaves the event thread (Firecracker's
//! `io_engine`): a worker thread making blocking calls ([`IoEngine::Sync`])
//! or io_uring ([`IoEngine::Async`]).
//!
//! The event thread validates each request, hands the engine an [`Op`]
//! tagged with a token, and later collects [`Completion`]s after the
//! engine's eventfd fires; only the event thread (under the transport's
//! lock) touches the queue, so the engines never see the rings.

use std::io;
use std::os::fd::RawFd;

pub use super::op::{Completion, Op, OpKind};
use super::uring::Uring;
use super::worker::{ThreadSetup, Worker};

/// Firecracker's `io_engine`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoEngine {
    /// A worker thread per drive (pread/pwrite/fsync).
    #[default]
    Sync,
    /// io_uring: many requests at once in the host kernel.
    Async,
}

/// A running engine.
pub enum Engine {
    Sync(Worker),
    Async(Box<Uring>),
}

impl Engine {
    /// An engine of `kind` for up to `depth` ops in flight. Async sets up
    /// io_uring now, so a host without it is refused when the drive is
    /// created; Sync's worker starts with [`Engine::start`].
    pub fn new(kind: IoEngine, depth: u16) -> io::Result<Self> {
        Ok(match kind {
            IoEngine::Sync => Self::Sync(Worker::new()?),
            IoEngine::Async => Self::Async(Box::new(Uring::new(depth)?)),
        })
    }

    /// Which engine this is.
    pub fn kind(&self) -> IoEngine {
        match self {
            Self::Sync(_) => IoEngine::Sync,
            Self::Async(_) => IoEngine::Async,
        }
    }

    /// Starts the worker thread, which runs `setup` (its seccomp filter)
    /// before any I/O; nothing to do for io_uring, whose I/O runs in the
    /// kernel and is submitted from the event thread.
    pub fn start(&mut self, name: String, setup: ThreadSetup) -> io::Result<()> {
        match self {
            Self::Sync(worker) => worker.start(name, setup),
            Self::Async(_) => Ok(()),
        }
    }

    /// Queues `op`; on an error the op never started.
    pub fn submit(&mut self, token: u16, op: Op) -> io::Result<()> {
        match self {
            Self::Sync(worker) => worker.submit(token, op),
            Self::Async(uring) => uring.submit(token, op),
        }
    }

    /// Lets the kernel see what [`Self::submit`] queued (one system call
    /// per batch with io_uring).
    pub fn kick(&mut self) -> io::Result<()> {
        match self {
            Self::Sync(_) => Ok(()),
            Self::Async(uring) => uring.kick(),
        }
    }

    /// Completions so far, without waiting.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        match self {
            Self::Sync(worker) => worker.reap(out),
            Self::Async(uring) => uring.reap(out),
        }
    }

    /// Waits for at least one completion (only while ops are in flight).
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        match self {
            Self::Sync(worker) => worker.wait(out),
            Self::Async(uring) => uring.wait(out),
        }
    }

    /// The eventfd that becomes readable when ops complete.
    pub fn completion_fd(&self) -> RawFd {
        match self {
            Self::Sync(worker) => worker.completion_fd(),
            Self::Async(uring) => uring.completion_fd(),
        }
    }

    /// Consumes the completion eventfd's count (the event thread woke).
    pub fn consume_event(&self) {
        match self {
            Self::Sync(worker) => worker.consume_event(),
            Self::Async(uring) => uring.consume_event(),
        }
    }
}
