//! The Async engine: io_uring reads and writes straight between the image
//! and guest memory, many at once, and signals completions on an eventfd.
//!
//! The ring is created disabled and restricted to the three operations a
//! drive needs (readv, writev, fsync) before it is enabled, so a VMM thread
//! that is subverted cannot use it to open files or sockets behind its
//! seccomp filter. Needs Linux 5.10 or later (as Firecracker's Async engine
//! does); where the kernel lacks io_uring, creating the drive fails with a
//! one-line error that says so.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::register::Restriction;
use io_uring::{IoUring, opcode, types};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::op::{Completion, Op, OpKind};

/// Most buffers one readv/writev takes (the kernel's UIO_MAXIOV).
const MAX_IOVECS: usize = 1024;

/// The buffers of a running op, as the kernel reads them.
struct IoVecs(Vec<libc::iovec>);

// SAFETY: the pointers are addresses in guest memory, which the op holds
// mapped (its `Arc<GuestMemory>`); nothing in them is tied to a thread.
unsafe impl Send for IoVecs {}

/// An op the kernel may still be working on: everything it points at
/// stays alive here until its completion is reaped.
struct Running {
    _iovecs: IoVecs,
    op: Op,
}

/// The ring and the ops in flight, by token.
pub struct Uring {
    ring: IoUring,
    event: EventFd,
    running: Vec<Option<Running>>,
    in_flight: usize,
}

fn unavailable(step: &str, error: io::Error) -> io::Error {
    io::Error::other(format!(
        "io_engine Async needs io_uring (Linux 5.10 or later), which this host does not offer ({step}: {error})"
    ))
}

impl Uring {
    /// A ring for `depth` ops in flight, tokens `0..depth`.
    pub fn new(depth: u16) -> io::Result<Self> {
        let ring = IoUring::builder()
            .setup_r_disabled()
            .build(u32::from(depth))
            .map_err(|e| unavailable("io_uring_setup", e))?;
        let submitter = ring.submitter();
        // Before the restrictions, which cover registrations too.
        let event = EventFd::new(EFD_NONBLOCK)?;
        submitter
            .register_eventfd(event.as_raw_fd())
            .map_err(|e| unavailable("registering its eventfd", e))?;
        let mut allowed = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
        ];
        submitter
            .register_restrictions(&mut allowed)
            .map_err(|e| unavailable("restricting the ring", e))?;
        submitter
            .register_enable_rings()
            .map_err(|e| unavailable("enabling the ring", e))?;
        Ok(Self {
            ring,
            event,
            running: (0..depth).map(|_| None).collect(),
            in_flight: 0,
        })
    }

    /// Queues `op` in the submission ring (see [`Self::kick`]).
    pub fn submit(&mut self, token: u16, op: Op) -> io::Result<()> {
        let slot = usize::from(token);
        if self.running.get(slot).is_none_or(Option::is_some) {
            return Err(io::Error::other("io_uring token out of range or in use"));
        }
        let iovecs = iovecs(&op)?;
        let fd = types::Fd(op.file.as_raw_fd());
        let count = u32::try_from(iovecs.0.len()).map_err(|_| io::ErrorKind::InvalidInput)?;
        let entry = match op.kind {
            OpKind::Read => opcode::Readv::new(fd, iovecs.0.as_ptr(), count)
                .offset(op.offset)
                .build(),
            OpKind::Write => opcode::Writev::new(fd, iovecs.0.as_ptr(), count)
                .offset(op.offset)
                .build(),
            OpKind::Flush => opcode::Fsync::new(fd).build(),
        }
        .user_data(u64::from(token));
        // SAFETY: the iovec array (a heap buffer that does not move when
        // `Running` does), the buffers it points at (guest memory, held
        // mapped by `op.mem`) and the file (`op.file`) all live in
        // `self.running[slot]` until this entry's completion is reaped.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            // The submission ring is full: hand it to the kernel, retry.
            self.kick()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| io::Error::other("io_uring submission ring full"))?;
        }
        self.running[slot] = Some(Running {
            _iovecs: iovecs,
            op,
        });
        self.in_flight += 1;
        Ok(())
    }

    /// Submits the queued entries.
    pub fn kick(&mut self) -> io::Result<()> {
        self.ring.submit().map(drop)
    }

    /// Completions so far.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        let finished: Vec<(u64, i32)> = self
            .ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (token, result) in finished {
            let Some(running) = usize::try_from(token)
                .ok()
                .and_then(|slot| self.running.get_mut(slot))
                .and_then(Option::take)
            else {
                tracing::warn!(token, "io_uring completion for no op");
                continue;
            };
            self.in_flight -= 1;
            out.push(Completion {
                token: token as u16,
                result: outcome(result, &running.op),
            });
        }
    }

    /// Waits for at least one completion; an error if nothing is in flight.
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if self.in_flight == 0 {
            return Err(io::Error::other("no io_uring op in flight"));
        }
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
        self.reap(out);
        Ok(())
    }

    /// Readable when completions are posted.
    pub fn completion_fd(&self) -> RawFd {
        self.event.as_raw_fd()
    }

    /// Resets the eventfd's count.
    pub fn consume_event(&self) {
        // EAGAIN: nothing to consume (a spurious wakeup).
        let _ = self.event.read();
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let mut done = Vec::new();
        while self.in_flight > 0 {
            if let Err(error) = self.wait(&mut done) {
                // The kernel may still use the buffers: keep them forever.
                tracing::error!(%error, "io_uring ops abandoned in flight");
                std::mem::forget(std::mem::take(&mut self.running));
                return;
            }
            done.clear();
        }
    }
}

/// A readv/writev that moved fewer bytes than asked is an error: the
/// range was checked against the disk's size, so only a host fault (a
/// file truncated underneath) shortens it.
fn outcome(result: i32, op: &Op) -> io::Result<()> {
    if result < 0 {
        return Err(io::Error::from_raw_os_error(-result));
    }
    if op.kind != OpKind::Flush && u64::try_from(result).ok() != Some(op.len) {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{result} of {} bytes transferred", op.len),
        ));
    }
    Ok(())
}

/// Host addresses of the op's buffers (a buffer that spans two memory
/// regions becomes two entries).
fn iovecs(op: &Op) -> io::Result<IoVecs> {
    let mut out = Vec::with_capacity(op.data.len());
    for segment in &op.data {
        for slice in op.mem.get_slices(segment.addr, segment.len as usize) {
            let slice = slice.map_err(io::Error::other)?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
    if out.len() > MAX_IOVECS {
        return Err(io::Error::other("request has too many buffers for readv"));
    }
    Ok(IoVecs(out))
}
