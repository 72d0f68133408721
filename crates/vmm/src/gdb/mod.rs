//! The gdb stub: the GDB remote protocol (through the `gdbstub` crate) on
//! a Unix socket, served on the VMM thread between two rounds of events.
//!
//! `sie run --gdb-socket PATH` (or machine-config `gdb_socket_path`) binds
//! the socket, starts the VM with every vCPU paused and waits for gdb before
//! the first guest instruction. Then, after each round of the VMM's event
//! loop, [`GdbServer::serve`] feeds gdb's bytes to the protocol state
//! machine and reports debug stops ([`crate::debug_stop`]). When gdb
//! detaches the breakpoints go and the VM runs on, and another gdb may
//! attach to the running VM later on the same socket; `kill` ends the VM.
//!
//! The guest's own `int3`s (Linux's `text_poke_bp` while it patches its
//! code, kprobes, a debugger inside the guest) stay the guest's: while gdb
//! has `int3` bytes in memory every `#BP` leaves the guest, and one at an
//! address where gdb has none is handed back to the guest (injected, RIP
//! past the `int3`) and its vCPU runs on; gdb hears nothing of it. A `#BP`
//! at one of gdb's addresses is gdb's stop, even if the guest had its own
//! `int3` there (it is under gdb's byte).
//!
//! The event loop sleeps until there is something for the stub: gdb's
//! socket readable, a gdb connecting (the listener is watched only while
//! none is attached: one session at a time), or a vCPU's debug stop (its
//! eventfd). The stub keeps those in an epoll set of its own, which the
//! loop watches as one descriptor ([`GdbServer::waker`]): a session's
//! socket leaves that set by itself when it closes.
//!
//! ```text
//! gdb vmlinux -ex 'target remote /tmp/sie.gdb'
//! ```

mod arch;
mod debugregs;
mod monitor;
mod paging;
mod target;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use gdbstub::conn::Connection;
use gdbstub::stub::state_machine::GdbStubStateMachine;
use gdbstub::stub::{DisconnectReason, GdbStub};

use crate::outcome::VmOutcome;
use crate::vm::StartedVm;
pub use paging::PagingMode;
use target::VmTarget;

/// Why the stub could not start.
#[derive(Debug, thiserror::Error)]
pub enum GdbError {
    /// The socket could not be bound.
    #[error("cannot listen for gdb on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// gdb's connection failed before it began.
    #[error("accepting gdb's connection")]
    Accept(#[source] std::io::Error),
    /// A stop signal came while sie waited for gdb.
    #[error("stopped by a signal while waiting for gdb")]
    Stopped,
    /// The protocol state machine could not be built.
    #[error("starting the GDB protocol: {0}")]
    Protocol(String),
    /// The stub's epoll set or eventfd could not be made.
    #[error("watching gdb's socket")]
    Watch(#[source] std::io::Error),
}

/// The socket gdb talks on: bytes to gdb are gathered and written at each
/// flush; reads never block (the VMM thread must not wait for gdb).
pub struct GdbConnection {
    stream: UnixStream,
    out: Vec<u8>,
    /// Bytes read from gdb and not yet handled.
    read: std::collections::VecDeque<u8>,
}

impl Connection for GdbConnection {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let mut at = 0;
        while at < self.out.len() {
            match Write::write(&mut self.stream, &self.out[at..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => at += n,
                // A full socket buffer: gdb reads slowly; wait for it.
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::yield_now();
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.out.clear();
        Ok(())
    }
}

type Stub = GdbStubStateMachine<'static, VmTarget, GdbConnection>;

/// A gdb session over one VM, and the socket a later gdb attaches on.
pub struct GdbServer {
    stub: Option<Stub>,
    target: VmTarget,
    listener: UnixListener,
    path: PathBuf,
    /// What the stub waits for (see the module docs).
    watch: Arc<Epoll>,
    /// The listener is in `watch` (while no gdb is attached).
    listening: bool,
    /// Written by a vCPU that left a debug stop.
    stops: Arc<EventFd>,
}

/// Wakes the event loop when the stub has something to do; the work is
/// [`GdbServer::serve`]'s, after the round of events.
pub struct GdbWake(Arc<Epoll>);

impl MutEventSubscriber for GdbWake {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(self.0.as_ref(), EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

/// Adds (`add`) or removes `fd` in `watch`, for reading.
fn watch_fd(watch: &Epoll, fd: RawFd, add: bool) -> std::io::Result<()> {
    let operation = if add {
        ControlOperation::Add
    } else {
        ControlOperation::Delete
    };
    let data = u64::try_from(fd).unwrap_or_default();
    watch.ctl(operation, fd, EpollEvent::new(EventSet::IN, data))
}

impl GdbServer {
    /// Binds `path` (replacing a stale socket file) and waits for gdb to
    /// connect. The VM must then start with its vCPUs paused.
    pub fn wait_for_gdb(path: &Path) -> Result<Self, GdbError> {
        let bind = |source| GdbError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(bind(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind)?;
        tracing::info!("waiting for gdb on {}", path.display());
        // Later sessions are accepted between two rounds of events.
        listener.set_nonblocking(true).map_err(GdbError::Accept)?;
        let watched = || -> std::io::Result<_> {
            let watch = Epoll::new()?;
            let stops = EventFd::new(EFD_NONBLOCK)?;
            watch_fd(&watch, stops.as_raw_fd(), true)?;
            Ok((watch, stops))
        };
        let (watch, stops) = watched().map_err(GdbError::Watch).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
        let stream = accept_or_stop(&listener).inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })?;
        let stub = start_session(stream, &watch)?;
        tracing::info!("gdb attached on {}", path.display());
        Ok(Self {
            stub: Some(stub),
            target: VmTarget::default(),
            listener,
            path: path.to_path_buf(),
            watch: Arc::new(watch),
            listening: false,
            stops: Arc::new(stops),
        })
    }

    /// The event-loop subscriber that wakes the loop for this stub.
    pub fn waker(&self) -> GdbWake {
        GdbWake(self.watch.clone())
    }

    /// Watches the listener exactly while no gdb is attached: a second
    /// gdb waits in the backlog until the first leaves.
    fn watch_listener(&mut self) {
        let want = self.stub.is_none();
        if want != self.listening && watch_fd(&self.watch, self.listener.as_raw_fd(), want).is_ok()
        {
            self.listening = want;
        }
    }

    /// A gdb connecting to a running VM: every vCPU is paused first, then
    /// gdb finds them stopped as it would at boot.
    fn accept_later(&mut self) -> Result<(), String> {
        let stream = match self.listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(format!("accepting gdb: {e}")),
        };
        self.target.pause_all()?;
        self.stub = Some(start_session(stream, &self.watch).map_err(|e| e.to_string())?);
        tracing::info!("gdb attached on {}", self.path.display());
        Ok(())
    }

    /// True while gdb is attached.
    pub fn attached(&self) -> bool {
        self.stub.is_some()
    }

    /// True while gdb holds the VM stopped (at a breakpoint, a step, or
    /// before the first instruction): only gdb may let it run.
    pub fn holds_stopped(&self) -> bool {
        matches!(self.stub, Some(GdbStubStateMachine::Idle(_)))
    }

    /// Handles what gdb sent and what the vCPUs reported since the last
    /// call; returns the VM it was lent.
    pub fn serve(&mut self, vm: Box<StartedVm>) -> Box<StartedVm> {
        // Read before the stops are looked at: a stop left after this
        // wakes the loop again.
        let _ = self.stops.read();
        vm.debug_stops.set_wake(self.stops.clone());
        self.target.vm = Some(vm);
        if self.stub.is_none()
            && let Err(error) = self.accept_later()
        {
            tracing::warn!("gdb on {}: {error}", self.path.display());
        }
        if let Some(stub) = self.stub.take() {
            match self.pump(stub) {
                Ok(stub) => self.stub = stub,
                Err(error) => {
                    tracing::warn!("gdb on {}: {error}; detaching", self.path.display());
                    self.leave();
                }
            }
        }
        self.watch_listener();
        match self.target.vm.take() {
            Some(vm) => vm,
            // `target` only lends the VM back; it never drops it.
            None => unreachable!("the gdb target lost the VM"),
        }
    }

    fn leave(&mut self) {
        if let Err(error) = self.target.detach() {
            tracing::warn!("gdb detach: {error}");
        }
    }

    /// Runs the protocol until it waits: for gdb's next bytes, or for the
    /// guest to stop. `None` once gdb is gone.
    fn pump(&mut self, mut stub: Stub) -> Result<Option<Stub>, String> {
        let target = &mut self.target;
        loop {
            stub = match stub {
                GdbStubStateMachine::Idle(mut idle) => match read_byte(idle.borrow_conn())? {
                    Some(byte) => idle
                        .incoming_data(target, byte)
                        .map_err(|e| e.to_string())?,
                    None => return Ok(Some(idle.into())),
                },
                GdbStubStateMachine::Running(mut running) => {
                    if let Some(reason) = target.take_stop()? {
                        running
                            .report_stop(target, reason)
                            .map_err(|e| e.to_string())?
                    } else {
                        match read_byte(running.borrow_conn())? {
                            Some(byte) => running
                                .incoming_data(target, byte)
                                .map_err(|e| e.to_string())?,
                            None => return Ok(Some(running.into())),
                        }
                    }
                }
                GdbStubStateMachine::CtrlCInterrupt(interrupt) => {
                    let reason = target.interrupted()?;
                    interrupt
                        .interrupt_handled(target, Some(reason))
                        .map_err(|e| e.to_string())?
                }
                GdbStubStateMachine::Disconnected(gone) => {
                    let reason = gone.get_reason();
                    tracing::info!("gdb left ({reason:?})");
                    let stopping = target
                        .vm
                        .as_ref()
                        .is_some_and(|vm| vm.control.is_stopping());
                    if reason == DisconnectReason::Kill {
                        if let Some(vm) = &target.vm {
                            vm.control.finish(VmOutcome::Shutdown);
                        }
                    } else if !stopping {
                        target.detach()?;
                    }
                    return Ok(None);
                }
            };
        }
    }
}

impl Drop for GdbServer {
    fn drop(&mut self) {
        // The socket file would outlive sie otherwise.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits for gdb's connection; a stop signal (blocked in every sie
/// thread, so it stays pending) ends the wait, so Ctrl-C still stops sie.
fn accept_or_stop(listener: &UnixListener) -> Result<UnixStream, GdbError> {
    loop {
        match listener.accept() {
            Ok((stream, _)) => return Ok(stream),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(GdbError::Accept(e)),
        }
        if stop_signal_pending() {
            return Err(GdbError::Stopped);
        }
        let mut fd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `fd` is one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, 100) };
    }
}

fn stop_signal_pending() -> bool {
    // SAFETY: sigset_t is plain data; sigpending fills it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid for writes.
    if unsafe { libc::sigpending(&mut set) } != 0 {
        return false;
    }
    crate::event_loop::STOP_SIGNALS
        .iter()
        // SAFETY: `set` was filled by sigpending; each signal number is valid.
        .any(|&signal| unsafe { libc::sigismember(&set, signal) } == 1)
}

/// A protocol session on a new connection, watched in `watch` (until the
/// connection closes).
fn start_session(stream: UnixStream, watch: &Epoll) -> Result<Stub, GdbError> {
    stream.set_nonblocking(true).map_err(GdbError::Accept)?;
    watch_fd(watch, stream.as_raw_fd(), true).map_err(GdbError::Watch)?;
    let connection = GdbConnection {
        stream,
        out: Vec::with_capacity(4096),
        read: Default::default(),
    };
    GdbStub::new(connection)
        .run_state_machine(&mut VmTarget::default())
        .map_err(|e| GdbError::Protocol(e.to_string()))
}

/// One byte from gdb if one is waiting; a closed socket is an error.
fn read_byte(connection: &mut GdbConnection) -> Result<Option<u8>, String> {
    if let Some(byte) = connection.read.pop_front() {
        return Ok(Some(byte));
    }
    let mut buf = [0u8; 4096];
    loop {
        return match connection.stream.read(&mut buf) {
            Ok(0) => Err("gdb closed the connection".to_string()),
            Ok(n) => {
                connection.read.extend(&buf[1..n]);
                Ok(Some(buf[0]))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => Err(format!("reading from gdb: {e}")),
        };
    }
}
