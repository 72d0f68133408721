//! The Sync engine: one worker thread per drive runs its ops one after
//! another with blocking pread/pwrite/fsync, while the event thread goes
//! on taking requests, so many are in flight at once.
//!
//! The worker reaches guest memory only through vm-memory's checked
//! accessors and a bounded bounce buffer (a 4 GiB request never makes it
//! allocate 4 GiB). It reports each op on a channel and wakes the event
//! thread through an eventfd; it never touches the rings.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::op::{Completion, Op, OpKind};
use crate::Segment;

/// Bounce-buffer size for data transfers.
const CHUNK: usize = 64 * 1024;

/// What the worker thread runs first, before any I/O: in sie, installing
/// its seccomp filter. An error ends the thread and is the start's error.
pub type ThreadSetup = Box<dyn FnOnce() -> Result<(), String> + Send>;

struct Job {
    token: u16,
    op: Op,
}

/// The worker, started or not.
pub struct Worker {
    jobs: Option<Sender<Job>>,
    /// The job queue's far end, until the thread takes it: ops submitted
    /// before the start wait there.
    queued: Option<Receiver<Job>>,
    done_tx: Option<Sender<Completion>>,
    done: Receiver<Completion>,
    event: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// A worker not yet running (see [`Self::start`]).
    pub fn new() -> io::Result<Self> {
        let (jobs, queued) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        Ok(Self {
            jobs: Some(jobs),
            queued: Some(queued),
            done_tx: Some(done_tx),
            done,
            event: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            thread: None,
        })
    }

    /// Spawns the thread `name`, which runs `setup` and then its ops.
    /// Returns once `setup` succeeded (or with its error).
    pub fn start(&mut self, name: String, setup: ThreadSetup) -> io::Result<()> {
        let (Some(jobs), Some(done)) = (self.queued.take(), self.done_tx.take()) else {
            return Err(io::Error::other("the block worker has already started"));
        };
        let event = Arc::clone(&self.event);
        let (ready_tx, ready) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            let setup = setup();
            let ok = setup.is_ok();
            let _ = ready_tx.send(setup);
            if ok {
                serve(&jobs, &done, &event);
            }
        })?;
        self.thread = Some(thread);
        match ready.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(io::Error::other(error)),
            Err(_) => Err(io::Error::other("the block worker ended at its start")),
        }
    }

    /// Queues `op` behind the ones already given.
    pub fn submit(&mut self, token: u16, op: Op) -> io::Result<()> {
        let jobs = self.jobs.as_ref().ok_or(io::ErrorKind::BrokenPipe)?;
        jobs.send(Job { token, op })
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    /// Completions so far.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        out.extend(self.done.try_iter());
    }

    /// Waits for the next completion, then takes any others.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.thread.is_none() {
            return Err(io::Error::other("the block worker has not started"));
        }
        let first = self
            .done
            .recv()
            .map_err(|_| io::Error::other("the block worker has ended"))?;
        out.push(first);
        self.reap(out);
        Ok(())
    }

    /// Readable when the worker finished something.
    pub fn completion_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Resets the eventfd's count.
    pub fn consume_event(&self) {
        // EAGAIN: nothing to consume (a spurious wakeup).
        let _ = self.event.read();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has run what it holds.
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The thread's loop: every op in order until the queue closes.
fn serve(jobs: &Receiver<Job>, done: &Sender<Completion>, event: &EventFd) {
    let mut scratch = vec![0u8; CHUNK];
    for Job { token, op } in jobs.iter() {
        let result = run(&op, &mut scratch);
        if done.send(Completion { token, result }).is_err() {
            return;
        }
        if let Err(error) = event.write(1) {
            tracing::warn!(%error, "block worker cannot wake the event thread");
        }
    }
}

fn run(op: &Op, scratch: &mut [u8]) -> io::Result<()> {
    let to_guest = match op.kind {
        OpKind::Flush => return op.file.sync_all(),
        OpKind::Read => true,
        OpKind::Write => false,
    };
    let mut offset = op.offset;
    for segment in &op.data {
        copy_segment(op, segment, offset, to_guest, scratch)?;
        offset += u64::from(segment.len);
    }
    Ok(())
}

/// One data buffer through the bounce buffer.
fn copy_segment(
    op: &Op,
    segment: &Segment,
    disk_offset: u64,
    to_guest: bool,
    scratch: &mut [u8],
) -> io::Result<()> {
    let mut done = 0u64;
    let len = u64::from(segment.len);
    while done < len {
        let step = (len - done).min(scratch.len() as u64) as usize;
        let buf = scratch.get_mut(..step).ok_or(io::ErrorKind::InvalidInput)?;
        let guest = GuestAddress(segment.addr.0 + done);
        if to_guest {
            op.file.read_exact_at(buf, disk_offset + done)?;
            op.mem.write_slice(buf, guest).map_err(io::Error::other)?;
        } else {
            op.mem.read_slice(buf, guest).map_err(io::Error::other)?;
            op.file.write_all_at(buf, disk_offset + done)?;
        }
        done += step as u64;
    }
    Ok(())
}
