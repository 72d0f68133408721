//! COM1 on a Unix socket that a person attaches to and detaches from while
//! the guest runs (`--console-socket`, `sie ctl console`).
//!
//! Output the guest writes while nobody is attached (or faster than the
//! client reads) waits in a [`RingBuffer`] and is sent, oldest first, as
//! soon as a client can take it: a client that attaches late sees the boot
//! from the start (up to the ring's size). Every write to the client is
//! non-blocking, so a client that never reads costs the guest nothing but
//! the ring's oldest bytes. What the client sends is COM1's input, offered
//! to the UART as its receive FIFO has room (as stdin is, `input.rs`).
//!
//! One client at a time: a client that connects while another is attached
//! takes the console over; the old one is told so in one line and
//! disconnected (a console left attached in a lost session is never stuck).
//!
//! Threads: vCPUs write output through [`ConsoleSocketOutput`] (behind the
//! console's line buffer); the VMM thread accepts, reads input and drains
//! the ring through [`ConsoleSocket`]. Both hold the one lock only for
//! non-blocking calls. When the client's socket is full, whoever found it
//! so writes the backlog eventfd once, and the VMM thread watches the
//! client for room (EPOLLOUT) until the ring is empty: nothing polls.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;

use super::input::SerialInput;
use super::ring::RingBuffer;

/// What the client's socket is watched for while its input is wanted.
const READ: EventSet = EventSet::IN.union(EventSet::READ_HANG_UP);

/// What the old client reads when another takes the console over.
const TAKEN_OVER: &[u8] = b"\r\n[sie: another client attached to this console]\r\n";

/// Output waiting for the client, and the client.
struct Shared {
    ring: RingBuffer,
    /// Shared with the reading side rather than duplicated: the VMM
    /// thread's seccomp filter allows no `dup`.
    client: Option<Arc<UnixStream>>,
    /// Written when the client's socket is full and output waits.
    backlog: Arc<EventFd>,
    /// Output waits for room in the client's socket (the VMM thread
    /// watches it for EPOLLOUT); cleared once the ring is empty.
    waiting_for_room: bool,
}

impl Shared {
    /// Sends what the ring holds, as far as the client takes it without
    /// blocking; a client that failed is let go. What is left over wakes
    /// the VMM thread once, to wait for room.
    fn drain(&mut self) {
        while let Some(client) = &mut self.client {
            if self.ring.is_empty() {
                break;
            }
            match send(client, self.ring.front()) {
                Ok(0) => break,
                Ok(sent) => self.ring.consume(sent),
                Err(error) if error.kind() == ErrorKind::Interrupted => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(_) => self.client = None,
            }
        }
        let waiting = self.client.is_some() && !self.ring.is_empty();
        if waiting && !self.waiting_for_room {
            // A full counter still wakes the loop.
            let _ = self.backlog.write(1);
        }
        self.waiting_for_room = waiting;
    }
}

/// `send(2)` that never blocks and never raises SIGPIPE: a client that went
/// away is an error here (EPIPE), not the end of sie.
fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a live slice of `data.len()` readable bytes, and
    // `stream` owns the descriptor for the whole call.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Plain bytes and a socket: still usable after a panic elsewhere.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's output side: give it to [`super::ConsoleOutput`].
#[derive(Clone)]
pub struct ConsoleSocketOutput(Arc<Mutex<Shared>>);

impl ConsoleSocketOutput {
    /// Bytes dropped because the ring was full.
    pub fn dropped(&self) -> u64 {
        lock(&self.0).ring.dropped()
    }
}

impl Write for ConsoleSocketOutput {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut shared = lock(&self.0);
        // Through the ring, so bytes leave in order whatever the client took
        // before; with a client keeping up the ring is empty again at once.
        shared.ring.push(bytes);
        shared.drain();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        lock(&self.0).drain();
        Ok(())
    }
}

/// Why the console socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleSocketError {
    /// Another process answers on the path.
    #[error("console socket {0} is in use by another process")]
    InUse(PathBuf),
    /// A file that is not a socket is in the way.
    #[error("console socket {0}: a file that is not a socket is in the way")]
    NotASocket(PathBuf),
    /// Binding (or making its eventfd) failed.
    #[error("console socket {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The listening socket and the attached client's input: served on the
/// VMM's event loop.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's device and inode, so only our own file is removed.
    identity: Option<(u64, u64)>,
    shared: Arc<Mutex<Shared>>,
    /// The attached client, for reading (the same socket as `shared`'s).
    reader: Option<Arc<UnixStream>>,
    input: Option<(Arc<dyn SerialInput>, EventFd)>,
    pending: Vec<u8>,
    /// What the client's socket is watched for (empty: not watched).
    watched: EventSet,
    /// The same eventfd as `shared`'s.
    backlog: Arc<EventFd>,
}

impl ConsoleSocket {
    /// Binds `path` (a stale socket there is replaced; a live one or
    /// another file is an error) with a ring of `ring_bytes`.
    pub fn bind(path: &Path, ring_bytes: usize) -> Result<Self, ConsoleSocketError> {
        let io_error = |source| ConsoleSocketError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => return Err(ConsoleSocketError::InUse(path.to_path_buf())),
                Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io_error)?;
                }
                Err(error) => return Err(io_error(error)),
            },
            Ok(_) => return Err(ConsoleSocketError::NotASocket(path.to_path_buf())),
            Err(error) if error.kind() == ErrorKind::NotFound => {}
            Err(error) => return Err(io_error(error)),
        }
        let listener = UnixListener::bind(path).map_err(io_error)?;
        listener.set_nonblocking(true).map_err(io_error)?;
        let identity = std::fs::symlink_metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        let backlog =
            Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(io_error)?);
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            identity,
            shared: Arc::new(Mutex::new(Shared {
                ring: RingBuffer::new(ring_bytes),
                client: None,
                backlog: backlog.clone(),
                waiting_for_room: false,
            })),
            reader: None,
            input: None,
            pending: Vec::new(),
            watched: EventSet::empty(),
            backlog,
        })
    }

    /// The writer the guest's output goes to.
    pub fn output(&self) -> ConsoleSocketOutput {
        ConsoleSocketOutput(self.shared.clone())
    }

    /// Sends what the client sends to `sink` (COM1); `room` is signalled
    /// when the guest drained its receive FIFO.
    pub fn set_input(&mut self, sink: Arc<dyn SerialInput>, room: EventFd) {
        self.input = Some((sink, room));
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            self.detach(ops, Some(TAKEN_OVER));
            let stream = Arc::new(stream);
            if ops.add(Events::new(stream.as_ref(), READ)).is_err() {
                continue;
            }
            self.reader = Some(stream.clone());
            self.watched = READ;
            let mut shared = lock(&self.shared);
            shared.client = Some(stream);
            // The replay: everything kept while nobody was attached.
            shared.drain();
            tracing::info!("console: a client attached to {}", self.path.display());
        }
    }

    /// Lets the attached client go, telling it `why` if given.
    fn detach(&mut self, ops: &mut EventOps, why: Option<&[u8]>) {
        let Some(reader) = self.reader.take() else {
            return;
        };
        if !self.watched.is_empty() {
            let _ = ops.remove(Events::new(reader.as_ref(), self.watched));
        }
        self.watched = EventSet::empty();
        let mut shared = lock(&self.shared);
        if let (Some(client), Some(why)) = (&shared.client, why) {
            let _ = send(client, why);
        }
        shared.client = None;
        shared.waiting_for_room = false;
        let _ = reader.shutdown(std::net::Shutdown::Both);
        // Input that did not reach the guest belonged to that client.
        self.pending.clear();
    }

    /// Reads what the client sent; false when it left.
    fn read_client(&mut self) -> bool {
        let Some(reader) = &self.reader else {
            return false;
        };
        let mut buffer = [0u8; 64];
        match reader.as_ref().read(&mut buffer) {
            Ok(0) => false,
            Ok(n) => {
                // No input sink (not wired yet): the bytes are dropped.
                if self.input.is_some() {
                    self.pending.extend_from_slice(&buffer[..n]);
                }
                true
            }
            Err(error) => matches!(error.kind(), ErrorKind::Interrupted | ErrorKind::WouldBlock),
        }
    }

    fn push_input(&mut self) {
        if let Some((sink, _)) = &self.input
            && !self.pending.is_empty()
        {
            let taken = sink.enqueue(&self.pending).min(self.pending.len());
            self.pending.drain(..taken);
        }
    }

    /// Reads from the client only while the guest has taken everything
    /// read so far (the UART's FIFO holds 64 bytes); waits for room in its
    /// socket only while output waits for it.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let Some(reader) = &self.reader else {
            return;
        };
        let mut want = EventSet::empty();
        if self.pending.is_empty() {
            want |= READ;
        }
        if lock(&self.shared).waiting_for_room {
            want |= EventSet::OUT;
        }
        if want == self.watched {
            return;
        }
        let events = Events::new(reader.as_ref(), want);
        let done = if self.watched.is_empty() {
            ops.add(events)
        } else if want.is_empty() {
            ops.remove(Events::new(reader.as_ref(), self.watched))
        } else {
            ops.modify(events)
        };
        if done.is_ok() {
            self.watched = want;
        }
    }
}

impl MutEventSubscriber for ConsoleSocket {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.listener, EventSet::IN));
        let _ = ops.add(Events::new(self.backlog.as_ref(), EventSet::IN));
        if let Some((_, room)) = &self.input {
            let _ = ops.add(Events::new(room, EventSet::IN));
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
        } else if fd == self.backlog.as_raw_fd() {
            // `update_interest` below starts watching for room.
            let _ = self.backlog.read();
        } else if let Some((_, room)) = &self.input
            && fd == room.as_raw_fd()
        {
            let _ = room.read();
        } else if self.reader.as_ref().is_some_and(|r| r.as_raw_fd() == fd) {
            let set = events.event_set();
            if set.contains(EventSet::OUT) {
                lock(&self.shared).drain();
            }
            let gone = if set.contains(EventSet::IN) {
                !self.read_client()
            } else {
                set.intersects(EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP)
            };
            if gone {
                self.detach(ops, None);
                tracing::info!("console: the client detached");
            }
        }
        self.push_input();
        self.update_interest(ops);
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        // Only our own socket: a path another process bound since is left.
        let ours = std::fs::symlink_metadata(&self.path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        if ours.is_some() && ours == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("sie-console-{}-{name}", std::process::id()))
    }

    #[test]
    fn output_waits_in_the_ring_until_a_client_and_a_slow_client_drops_the_oldest() {
        let path = scratch("ring");
        let socket = ConsoleSocket::bind(&path, 16).unwrap();
        let mut out = socket.output();
        out.write_all(b"boot line 1\n").unwrap();
        out.write_all(b"boot line 2\n").unwrap();
        assert_eq!(out.dropped(), 8, "16 of 24 bytes kept");
        let (mut client, server_side) = UnixStream::pair().unwrap();
        server_side.set_nonblocking(true).unwrap();
        {
            let mut shared = lock(&socket.shared);
            shared.client = Some(Arc::new(server_side));
            shared.drain();
        }
        out.write_all(b"live\n").unwrap();
        drop(socket);
        drop(out);
        let mut seen = Vec::new();
        client.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, b"e 1\nboot line 2\nlive\n");
        assert!(!path.exists(), "the socket file is removed");
    }

    #[test]
    fn output_a_full_client_could_not_take_reaches_it_as_it_reads_and_then_nothing_polls() {
        use event_manager::{EventManager, SubscriberOps};
        const SIZE: usize = 1 << 20;
        let path = scratch("room");
        let socket = ConsoleSocket::bind(&path, 2 * SIZE).unwrap();
        let shared = socket.shared.clone();
        let mut out = socket.output();
        let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
            EventManager::new().unwrap();
        manager.add_subscriber(Box::new(socket));
        let mut client = UnixStream::connect(&path).unwrap();
        while lock(&shared).client.is_none() {
            manager.run_with_timeout(10_000).unwrap();
        }

        // More than the socket holds: the rest waits in the ring.
        out.write_all(&vec![b'x'; SIZE]).unwrap();
        assert!(lock(&shared).waiting_for_room);
        let reader = std::thread::spawn(move || {
            let mut total = 0;
            let mut chunk = vec![0u8; 64 << 10];
            while total < SIZE {
                match client.read(&mut chunk).unwrap() {
                    0 => break,
                    n => total += n,
                }
            }
            total
        });
        // No more guest output: only the client's room drains the ring.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !lock(&shared).ring.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the ring never drained"
            );
            manager.run_with_timeout(10_000).unwrap();
        }
        assert_eq!(reader.join().unwrap(), SIZE);
        assert!(!lock(&shared).waiting_for_room);
        // Delivered: the loop no longer watches for room (it would spin).
        manager.run_with_timeout(0).unwrap();
        assert_eq!(manager.run_with_timeout(0).unwrap(), 0);
        drop(manager);
        assert!(!path.exists());
    }

    #[test]
    fn a_live_socket_is_not_taken_and_a_stale_one_is_replaced() {
        let path = scratch("live");
        let first = ConsoleSocket::bind(&path, 64).unwrap();
        assert!(matches!(
            ConsoleSocket::bind(&path, 64),
            Err(ConsoleSocketError::InUse(_))
        ));
        drop(first);
        assert!(!path.exists());
        // A stale socket file: bound, then its listener gone.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let second = ConsoleSocket::bind(&path, 64).unwrap();
        // Another process's socket now at the path is not ours to remove.
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        drop(second);
        assert!(path.exists(), "another's socket file is left alone");
        drop(other);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            ConsoleSocket::bind(&path, 64),
            Err(ConsoleSocketError::NotASocket(_))
        ));
        std::fs::remove_file(&path).unwrap();
    }
}
