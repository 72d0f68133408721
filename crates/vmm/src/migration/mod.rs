//! Live migration: a running VM moves to another sie process over a Unix
//! socket or TCP, its memory copied while it runs (pre-copy) or after it
//! runs on the receiver (post-copy), or on the same host handed over
//! without a copy ([`local`]).
//!
//! [`wire`] is the framed, checksummed protocol both sides speak;
//! [`send`] and [`receive`] are the two ends' conversations ([`converge`]
//! and [`pace`] the sender's throttle decision and bandwidth cap,
//! [`postcopy`] the receiver's page faults), each run on
//! its own thread so the VMM's event loop keeps serving the VM. Neither
//! thread touches vCPUs or devices: what needs the VM (dirty pages, the
//! pause, the state, building the VM on arrival) is asked of the VMM
//! thread as a [`ToVmm`] message, answered on a channel.
//!
//! The threads run the `migration` seccomp filter (sockets and memory, no
//! KVM), stacked on the `build` filter they inherit.

pub mod converge;
pub mod local;
pub mod pace;
pub mod postcopy;
pub mod progress;
pub mod receive;
pub mod send;
pub mod wire;

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use sie_hv::GuestMemory;
use vmm_sys_util::eventfd::EventFd;

use crate::snapshot::{Snapshot, dirty::RegionPages};

pub use progress::{MigrationState, Progress, SharedProgress};

/// Where the other sie is: `unix:PATH` or `tcp:HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A TCP address.
    Tcp(String),
}

impl Endpoint {
    /// Parses a URL (`sie_config::check_migration_url` has vetted it).
    pub fn parse(url: &str) -> Result<Self, String> {
        sie_config::check_migration_url(url)?;
        if let Some(path) = url.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(path.into()));
        }
        let address = url.strip_prefix("tcp:").unwrap_or(url);
        Ok(Endpoint::Tcp(address.to_string()))
    }

    /// Connects to a listening receiver.
    pub fn connect(&self) -> io::Result<Box<dyn Conn>> {
        match self {
            Endpoint::Unix(path) => unix_conn(UnixStream::connect(path)?),
            Endpoint::Tcp(address) => tcp_conn(TcpStream::connect(address.as_str())?),
        }
    }

    /// Starts listening (a stale Unix socket file is replaced).
    pub fn listen(&self) -> io::Result<Listener> {
        match self {
            Endpoint::Unix(path) => {
                if std::fs::symlink_metadata(path)
                    .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                {
                    std::fs::remove_file(path)?;
                }
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
            Endpoint::Tcp(address) => Ok(Listener::Tcp(TcpListener::bind(address.as_str())?)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::Tcp(address) => write!(f, "tcp:{address}"),
        }
    }
}

/// How long a read or write may wait: a peer that stops reading or
/// sending (a dead host, a cut link) fails the migration after this, so a
/// cancel or a timeout is seen and the source runs on.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

fn unix_conn(stream: UnixStream) -> io::Result<Box<dyn Conn>> {
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    Ok(Box::new(stream))
}

fn tcp_conn(stream: TcpStream) -> io::Result<Box<dyn Conn>> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(STALL_TIMEOUT))?;
    stream.set_write_timeout(Some(STALL_TIMEOUT))?;
    Ok(Box::new(stream))
}

/// A byte stream to the other sie (a socket: post-copy polls it, and
/// hands the receiver's fault thread a duplicate).
pub trait Conn: Read + Write + Send + std::os::fd::AsRawFd {
    /// The Unix socket under it, which can pass descriptors (local mode).
    fn unix(&self) -> Option<&UnixStream> {
        None
    }
}

impl Conn for UnixStream {
    fn unix(&self) -> Option<&UnixStream> {
        Some(self)
    }
}

impl Conn for TcpStream {}

/// A bound, listening endpoint.
pub enum Listener {
    /// A Unix socket and its path (removed when done).
    Unix(UnixListener, PathBuf),
    /// A TCP socket.
    Tcp(TcpListener),
}

impl Listener {
    /// Waits for one sender.
    pub fn accept(&self) -> io::Result<Box<dyn Conn>> {
        match self {
            Listener::Unix(listener, _) => unix_conn(listener.accept()?.0),
            Listener::Tcp(listener) => tcp_conn(listener.accept()?.0),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the final pause produced: the pages dirtied since the last round
/// and the VM's state as a snapshot file's bytes.
pub struct Switchover {
    /// Pages to send before the state.
    pub pages: Vec<RegionPages>,
    /// The snapshot file's bytes.
    pub state: Vec<u8>,
}

/// A migration thread's request to the VMM thread.
pub enum ToVmm {
    /// Turn dirty logging on (if it is off) and start a new period.
    StartDirtyLog(Sender<Result<(), String>>),
    /// The pages written since the last take.
    TakeDirty(Sender<Result<Vec<RegionPages>, String>>),
    /// Pause the vCPUs and hand over the last pages and the state, then
    /// serve nothing until `release` is dropped: the sender reads the last
    /// pages meanwhile, and a device writing guest RAM then (a frame from
    /// a tap) would tear them: a used ring read after the write, naming a
    /// buffer whose page was taken before it and never sent again.
    Switchover {
        /// The last pages and the state.
        reply: Sender<Result<Switchover, String>>,
        /// Dropped once guest RAM may change here again.
        release: Receiver<()>,
    },
    /// Local mode: pause the vCPUs and hand over the state, then serve
    /// nothing (no device here may write guest RAM the receiver shares)
    /// until the send's end arrives on `end` instead of as
    /// [`ToVmm::SendFinished`].
    LocalSwitchover {
        /// The snapshot file's bytes.
        reply: Sender<Result<Vec<u8>, String>>,
        /// How the send ended.
        end: Receiver<SendEnd>,
    },
    /// Throttle every vCPU by this percent of each period (auto-converge;
    /// lifted when the send ends).
    Throttle(u8),
    /// The send ended (see [`SendEnd`]).
    SendFinished(SendEnd),
    /// Create the VM the state will be built in and map `memory`, its
    /// RAM, into it now, while pages still come (or, local mode, before
    /// the source pauses): the switch-over does not wait for it. A failure
    /// is logged, and the build makes the VM itself.
    Premake {
        /// The arriving VM's RAM, as [`ToVmm::Arrived`] will hand it over.
        memory: GuestMemory,
        /// Answered when it is done (or failed).
        reply: Sender<Result<(), String>>,
    },
    /// Build the received VM on `memory`, its vCPUs paused until [`ToVmm::Go`].
    Arrived {
        /// Its state.
        snapshot: Box<Snapshot>,
        /// Its RAM: every page received, or (post-copy) some.
        memory: GuestMemory,
        /// Whether it is built.
        reply: Sender<Result<(), String>>,
    },
    /// Post-copy: register `memory` with a userfaultfd and start the
    /// thread that asks for its missing pages on a duplicate of `stream`
    /// (before the build: restoring devices may read guest memory).
    StartFaults {
        /// The received VM's RAM.
        memory: GuestMemory,
        /// The migration's socket.
        stream: std::os::fd::RawFd,
        /// The link the receiving thread installs pages through.
        reply: Sender<Result<postcopy::FaultLink, String>>,
    },
    /// The sender committed: run the arrived VM.
    Go(Sender<Result<(), String>>),
    /// The receive failed: the destination exits with this line.
    ReceiveFailed(String),
}

/// How a send ended, as the VMM thread must act on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendEnd {
    /// The destination said the VM runs there (its endpoint): the source
    /// stops.
    Moved(String),
    /// It failed before `Go` left: the destination never runs the VM, so
    /// it runs on here.
    Failed(String),
    /// `Go` left but the destination's `Done` never came: the VM may run
    /// there, so it stays paused here, never to resume.
    Unconfirmed(String),
}

/// The migration thread's side of the link to the VMM thread.
pub struct VmmLink {
    /// Requests.
    pub tx: Sender<ToVmm>,
    /// Written after each request so the event loop wakes.
    pub wake: std::sync::Arc<EventFd>,
}

impl VmmLink {
    /// Sends `message` and wakes the event loop.
    pub fn send(&self, message: ToVmm) {
        // A closed channel means the VMM is winding down: nothing to tell.
        let _ = self.tx.send(message);
        let _ = self.wake.write(1);
    }

    /// Asks for something and waits for the answer.
    pub fn ask<T>(
        &self,
        make: impl FnOnce(Sender<Result<T, String>>) -> ToVmm,
    ) -> Result<T, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.send(make(reply));
        wait(&answer)
    }
}

/// Whether a message (or the end of the stream) waits to be read on
/// `conn`, without blocking.
pub(crate) fn readable(conn: &dyn Conn) -> bool {
    let mut byte = 0u8;
    // SAFETY: peeks at most one byte into `byte`, without blocking, on a
    // socket `conn` keeps open.
    let got = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    got >= 0
}

fn wait<T>(answer: &Receiver<Result<T, String>>) -> Result<T, String> {
    answer
        .recv()
        .unwrap_or_else(|_| Err("the VMM stopped".to_string()))
}
