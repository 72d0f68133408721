//! The API server: a Unix socket, and a thread running an epoll loop over
//! it and every client connection.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sie_seccomp::{Seccomp, ThreadKind};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::connection::Connection;
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::handle::{ApiHandle, ServerStopper};
use crate::stats::ApiStats;

/// Firecracker's default `--http-api-max-payload-size`.
pub const DEFAULT_MAX_PAYLOAD: usize = 51_200;
/// The Firecracker version `GET /version` reports: the API sie follows.
pub const DEFAULT_VERSION: &str = sie_config::FIRECRACKER_API_VERSION;
/// Clients connected at once; a new client beyond this takes the place of
/// the one idle longest, so an orchestrator always gets through.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// A connection that does nothing for this long is closed. Long, because
/// HTTP clients keep connections alive between requests and retry only
/// some requests on a connection the server closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// epoll tokens; connections count up from `FIRST_CONNECTION`.
const LISTENER: u64 = 0;
const STOP: u64 = 1;
const FIRST_CONNECTION: u64 = 2;
const EVENTS_PER_WAIT: usize = 32;

/// How the server behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Largest request body, in bytes.
    pub max_payload: usize,
    /// What `GET /version` answers as `firecracker_version`.
    pub version: String,
    /// Most clients connected at once.
    pub max_connections: usize,
    /// How long a connection may stay idle before it is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            version: DEFAULT_VERSION.to_string(),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
        }
    }
}

/// A bound API socket, not yet serving. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    /// Where the socket is bound until it is published at `path` (see
    /// publish.rs); `path` itself when its hidden name would not fit.
    bound_at: PathBuf,
    /// Device and inode of the socket file, so `Drop` removes only ours.
    identity: (u64, u64),
    options: ServerOptions,
    stats: Arc<ApiStats>,
    wake: EventFd,
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    seccomp: Seccomp,
}

impl ApiServer {
    /// Binds `path`. A stale socket (a file nobody answers on) is replaced;
    /// a live one or a non-socket file is an error.
    pub fn bind(path: &Path, options: ServerOptions) -> Result<ApiServer, ApiError> {
        let io_error = |source| ApiError::Io {
            path: path.to_path_buf(),
            source,
        };
        crate::publish::clear_stale_socket(path)?;
        // A hidden name left by a sie that had this pid before is stale.
        let hidden = crate::publish::hidden_name(path);
        if let Some(hidden) = &hidden {
            let _ = std::fs::remove_file(hidden);
        }
        let (listener, bound_at) =
            match hidden.and_then(|hidden| Some((UnixListener::bind(&hidden).ok()?, hidden))) {
                Some(bound) => bound,
                None => (
                    UnixListener::bind(path).map_err(io_error)?,
                    path.to_path_buf(),
                ),
            };
        let meta = std::fs::symlink_metadata(&bound_at).map_err(io_error)?;
        let server = ApiServer {
            listener,
            path: path.to_path_buf(),
            bound_at,
            identity: (meta.dev(), meta.ino()),
            options,
            stats: Arc::default(),
            wake: EventFd::new(EFD_NONBLOCK).map_err(io_error)?,
            stop: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(io_error)?),
            stopping: Arc::default(),
            seccomp: Seccomp::disabled(),
        };
        server.listener.set_nonblocking(true).map_err(io_error)?;
        Ok(server)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The per-route counters this server records into.
    pub fn stats(&self) -> Arc<ApiStats> {
        Arc::clone(&self.stats)
    }

    /// Has the server thread install the API seccomp filter before it
    /// serves anything (none by default).
    pub fn with_seccomp(mut self, seccomp: Seccomp) -> Self {
        self.seccomp = seccomp;
        self
    }

    /// Starts serving on a thread named `fc_api`, the socket file at its
    /// path once the thread is filtered. The VMM answers through the
    /// returned [`ApiHandle`]; after [`ApiHandle::stop_server`] the thread
    /// ends and the socket file is gone.
    pub fn spawn(self) -> Result<(ApiHandle, JoinHandle<()>), ApiError> {
        let (mut handle, thread) = self.spawn_unpublished()?;
        if let Err(error) = handle.publish() {
            handle.stop_server();
            let _ = thread.join();
            return Err(error);
        }
        Ok((handle, thread))
    }

    /// Like [`ApiServer::spawn`], but the socket file appears at its path
    /// only when [`ApiHandle::publish`] is called: when the VMM is ready to
    /// answer. The thread installs its filter meanwhile.
    pub fn spawn_unpublished(self) -> Result<(ApiHandle, JoinHandle<()>), ApiError> {
        let io_error = |source| ApiError::Io {
            path: self.path.clone(),
            source,
        };
        let (calls, receiver) = mpsc::channel();
        let (filtered_tx, filtered) = mpsc::sync_channel(1);
        let handle = ApiHandle {
            pending: Some(crate::publish::Pending {
                from: self.bound_at.clone(),
                to: self.path.clone(),
                filtered,
            }),
            receiver,
            wake: self.wake.try_clone().map_err(io_error)?,
            stopper: ServerStopper {
                stop: Arc::clone(&self.stop),
                stopping: Arc::clone(&self.stopping),
            },
            stats: Arc::clone(&self.stats),
        };
        let dispatcher = Dispatcher {
            calls,
            wake: self.wake.try_clone().map_err(io_error)?,
            stats: Arc::clone(&self.stats),
            version: self.options.version.clone(),
            stopping: Arc::clone(&self.stopping),
        };
        let path = self.path.clone();
        let thread = std::thread::Builder::new()
            .name("fc_api".into())
            .spawn(move || {
                let installed = self.seccomp.install(ThreadKind::Api);
                let ok = installed.is_ok();
                let _ = filtered_tx.send(installed);
                if ok && let Err(error) = self.run(&dispatcher) {
                    tracing::error!("api: server stopped: {error}");
                }
            })
            .map_err(|source| ApiError::Io { path, source })?;
        Ok((handle, thread))
    }

    /// The epoll loop; returns when stopped. Dropping `self` afterwards
    /// closes every connection and removes the socket file.
    fn run(&self, dispatcher: &Dispatcher) -> io::Result<()> {
        let epoll = Epoll::new()?;
        let listen_events = EpollEvent::new(EventSet::IN, LISTENER);
        epoll.ctl(
            ControlOperation::Add,
            self.listener.as_raw_fd(),
            listen_events,
        )?;
        let stop_events = EpollEvent::new(EventSet::IN, STOP);
        epoll.ctl(ControlOperation::Add, self.stop.as_raw_fd(), stop_events)?;
        let mut connections: HashMap<u64, Connection> = HashMap::new();
        let mut next_token = FIRST_CONNECTION;
        let mut events = vec![EpollEvent::default(); EVENTS_PER_WAIT];
        loop {
            let timeout = self.wait_timeout_ms(&connections);
            let ready = match epoll.wait(timeout, &mut events) {
                Ok(ready) => ready,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            self.close_idle(&mut connections);
            for event in &events[..ready] {
                match event.data() {
                    STOP => return Ok(()),
                    LISTENER => {
                        self.accept_all(&epoll, &mut connections, &mut next_token);
                    }
                    token => {
                        let Some(connection) = connections.get_mut(&token) else {
                            continue;
                        };
                        let keep = connection
                            .on_ready(event.event_set(), dispatcher)
                            .unwrap_or(false);
                        if !keep || update_interest(&epoll, token, connection).is_err() {
                            // Dropping the stream closes it and takes it out
                            // of the epoll set.
                            connections.remove(&token);
                        }
                    }
                }
            }
        }
    }

    /// Milliseconds until the connection idle longest times out (-1: no
    /// connection, wait for events only).
    fn wait_timeout_ms(&self, connections: &HashMap<u64, Connection>) -> i32 {
        let Some(oldest) = connections.values().map(|c| c.last_active).min() else {
            return -1;
        };
        let left = (oldest + self.options.idle_timeout).saturating_duration_since(Instant::now());
        // Round up so the wake-up finds the connection expired.
        i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
    }

    /// Closes every connection idle longer than the timeout.
    fn close_idle(&self, connections: &mut HashMap<u64, Connection>) {
        let now = Instant::now();
        let timeout = self.options.idle_timeout;
        connections.retain(|_, connection| {
            let keep = now.saturating_duration_since(connection.last_active) < timeout;
            if !keep {
                self.stats.record_idle_timeout();
            }
            keep
        });
    }

    /// Makes room for one more client by closing the one idle longest.
    /// Requests are answered while they are read, so between events no
    /// connection is in the middle of one: any may be closed. Returns false
    /// only when there is nothing to close (a limit of zero).
    fn evict_longest_idle(&self, connections: &mut HashMap<u64, Connection>) -> bool {
        let Some(token) = connections
            .iter()
            .min_by_key(|(_, c)| c.last_active)
            .map(|(token, _)| *token)
        else {
            return false;
        };
        connections.remove(&token);
        self.stats.record_eviction();
        true
    }

    fn accept_all(
        &self,
        epoll: &Epoll,
        connections: &mut HashMap<u64, Connection>,
        next_token: &mut u64,
    ) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    tracing::warn!("api: accept failed: {error}");
                    return;
                }
            };
            if connections.len() >= self.options.max_connections
                && !self.evict_longest_idle(connections)
            {
                tracing::warn!("api: no client may connect (limit 0); closing a new one");
                continue;
            }
            if let Err(error) = stream.set_nonblocking(true) {
                tracing::warn!("api: cannot make a client nonblocking: {error}");
                continue;
            }
            let connection = Connection::new(stream, self.options.max_payload);
            let token = *next_token;
            *next_token += 1;
            let registration = EpollEvent::new(connection.interest, token);
            match epoll.ctl(
                ControlOperation::Add,
                connection.stream().as_raw_fd(),
                registration,
            ) {
                Ok(()) => {
                    connections.insert(token, connection);
                }
                Err(error) => tracing::warn!("api: cannot watch a client: {error}"),
            }
        }
    }
}

/// Re-registers `connection` if what it waits for changed.
fn update_interest(epoll: &Epoll, token: u64, connection: &mut Connection) -> io::Result<()> {
    let wanted = connection.wanted();
    if wanted != connection.interest {
        let fd = connection.stream().as_raw_fd();
        epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(wanted, token))?;
        connection.interest = wanted;
    }
    Ok(())
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // At its path once published, else still at its hidden name.
        for path in [&self.path, &self.bound_at] {
            let ours = std::fs::symlink_metadata(path)
                .is_ok_and(|meta| (meta.dev(), meta.ino()) == self.identity);
            if ours && let Err(error) = std::fs::remove_file(path) {
                tracing::warn!("api: cannot remove {}: {error}", path.display());
            }
        }
    }
}
