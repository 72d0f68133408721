//! Routes packets between the guest and host Unix sockets: the listening
//! socket, clients still sending their CONNECT line, and established
//! connections, all in one level-triggered epoll set whose descriptor the
//! worker watches (so connections can come and go without the worker
//! knowing).
//!
//! Everything a guest can make sie hold is capped: connections and
//! handshakes together ([`MAX_CONNECTIONS`]), resets waiting for rx
//! buffers ([`MAX_RESETS`]), and per connection the buffers in `conn`.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{BUF_ALLOC, Conn, Pumped, State};
use super::handshake::{Handshake, Progress};
use super::packet::{HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::VirtioCounters;

/// Most live connections plus unfinished handshakes.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most RSTs waiting for rx buffers; beyond that they are dropped (the
/// guest's socket then times out, which only hurts a guest that posts no
/// buffers).
pub const MAX_RESETS: usize = 1024;
/// First host port handed to host-initiated connections.
pub const EPHEMERAL_BASE: u32 = 1 << 30;
/// Epoll data of the listening socket; connections count up from 1.
const LISTENER: u64 = 0;
/// Events (and accepts) served per wakeup; level triggering brings the
/// rest back on the next one.
const BATCH: usize = 64;
const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The connection multiplexer.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    epoll: Epoll,
    listener: UnixListener,
    handshakes: HashMap<u64, Handshake>,
    conns: HashMap<u64, Conn>,
    /// (host port, guest port) → token.
    by_ports: HashMap<(u32, u32), u64>,
    /// RSTs for packets that belong to no (or a dropped) connection.
    resets: VecDeque<Header>,
    /// Connections with packets for the guest, served round-robin.
    ready: VecDeque<u64>,
    next_token: u64,
    next_port: u32,
    counters: Arc<VirtioCounters>,
}

impl Muxer {
    /// Serves `listener` (bound at `uds_path`) for the guest `guest_cid`.
    pub fn new(
        guest_cid: u64,
        uds_path: PathBuf,
        listener: UnixListener,
        counters: Arc<VirtioCounters>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Self {
            guest_cid,
            uds_path,
            epoll,
            listener,
            handshakes: HashMap::new(),
            conns: HashMap::new(),
            by_ports: HashMap::new(),
            resets: VecDeque::new(),
            ready: VecDeque::new(),
            next_token: LISTENER + 1,
            next_port: EPHEMERAL_BASE,
            counters,
        })
    }

    /// The epoll set's descriptor, for the worker.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Live connections and unfinished handshakes.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// The driver reset the device: every connection dies with it.
    pub fn reset(&mut self) {
        for conn in self.conns.values().filter(|c| !c.hung_up) {
            self.unwatch(conn.stream.as_raw_fd());
        }
        for handshake in self.handshakes.values() {
            self.unwatch(handshake.stream.as_raw_fd());
        }
        self.conns.clear();
        self.handshakes.clear();
        self.by_ports.clear();
        self.resets.clear();
        self.ready.clear();
    }

    /// Serves whatever the epoll set reports ready, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); BATCH];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(error) => {
                self.counters.error();
                tracing::warn!(%error, "vsock epoll wait failed");
                return;
            }
        };
        for event in events.get(..n).unwrap_or_default() {
            let token = event.data();
            if token == LISTENER {
                self.accept_clients();
            } else if self.handshakes.contains_key(&token) {
                self.handshake_event(token);
            } else {
                self.conn_event(token, event.event_set());
            }
        }
    }

    /// Whether a packet waits for an rx buffer.
    pub fn has_pending(&self) -> bool {
        !self.resets.is_empty() || !self.ready.is_empty()
    }

    /// The next packet for the guest with at most `max_payload` data bytes.
    pub fn pop(&mut self, max_payload: usize) -> Option<(Header, Vec<u8>)> {
        if let Some(header) = self.resets.pop_front() {
            return Some((header, Vec::new()));
        }
        while let Some(token) = self.ready.pop_front() {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.scheduled = false;
            let Some((out, fwd_cnt)) = conn.pop(max_payload) else {
                continue;
            };
            let header = Header {
                src_cid: HOST_CID,
                dst_cid: self.guest_cid,
                src_port: conn.local_port,
                dst_port: conn.peer_port,
                len: u32::try_from(out.data.len()).unwrap_or(0),
                kind: TYPE_STREAM,
                op: out.op as u16,
                flags: out.flags,
                buf_alloc: BUF_ALLOC,
                fwd_cnt,
            };
            // Room freed: read more, or finish a closing connection.
            self.service(token);
            return Some((header, out.data));
        }
        None
    }

    /// One packet from the guest, checked field by field.
    pub fn handle_guest(&mut self, header: &Header, payload: &[u8]) {
        if header.src_cid != self.guest_cid {
            // Spoofed source: no answer, it would go to someone else.
            self.counters.error();
            return;
        }
        let op = Op::from_raw(header.op);
        let key = (header.dst_port, header.src_port);
        let token = self.by_ports.get(&key).copied();
        let Some(op) = op.filter(|_| header.dst_cid == HOST_CID && header.kind == TYPE_STREAM)
        else {
            self.counters.error();
            if op != Some(Op::Rst) {
                match token.filter(|_| header.dst_cid == HOST_CID) {
                    Some(token) => self.abort(token),
                    None => self.queue_reset(header.dst_port, header.src_port),
                }
            }
            return;
        };
        match (op, token) {
            (Op::Request, None) => self.guest_connect(header),
            (Op::Rst, None) => {}
            // Late packets of a closed connection: legal races, not errors.
            (_, None) => self.queue_reset(header.dst_port, header.src_port),
            (Op::Rst, Some(token)) => {
                self.remove(token);
            }
            (op, Some(token)) => self.conn_packet(token, op, header, payload),
        }
    }

    fn conn_packet(&mut self, token: u64, op: Op, header: &Header, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        conn.peer_credit(header.buf_alloc, header.fwd_cnt);
        match (conn.state, op) {
            (State::Closing | State::Draining, _) => return,
            (State::Connecting, Op::Response) => {
                if conn.greet().is_err() {
                    return self.abort(token);
                }
                conn.state = State::Established;
                let early = std::mem::take(&mut conn.early);
                if !early.is_empty() {
                    conn.push(Op::Rw, 0, early);
                }
            }
            (State::Established, Op::Rw) => {
                if !conn.accept(payload) {
                    // More than the credit we gave: a broken or hostile driver.
                    self.counters.error();
                    return self.abort(token);
                }
                self.counters.wrote_bytes(payload.len() as u64);
            }
            (State::Established, Op::Shutdown) if header.flags & SHUTDOWN_BOTH == SHUTDOWN_BOTH => {
                // The guest closed its socket and waits for our RST, which
                // goes once its last bytes reached the host.
                conn.shut_write();
                conn.state = State::Draining;
            }
            (State::Established, Op::Shutdown) => {
                if header.flags & SHUTDOWN_SEND != 0 {
                    conn.shut_write();
                    if conn.host_eof {
                        // Both sides are done sending: flush, then RST.
                        conn.state = State::Draining;
                    }
                }
            }
            (State::Established, Op::CreditUpdate) => {}
            (State::Established, Op::CreditRequest) => conn.push_credit_update(),
            _ => {
                // REQUEST or RESPONSE on a live connection, data before
                // RESPONSE: the connection cannot continue.
                self.counters.error();
                return self.abort(token);
            }
        }
        self.service(token);
    }

    /// REQUEST from the guest to host port P: connect to `<uds_path>_P`.
    fn guest_connect(&mut self, header: &Header) {
        let refuse = |muxer: &mut Self| muxer.queue_reset(header.dst_port, header.src_port);
        if self.connection_count() >= MAX_CONNECTIONS {
            self.counters.error();
            return refuse(self);
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", header.dst_port));
        let stream = match super::connect::connect(&path) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, port = header.dst_port, "vsock guest connect refused");
                return refuse(self);
            }
        };
        let mut conn = Conn::new(stream, header.dst_port, header.src_port, State::Established);
        conn.peer_credit(header.buf_alloc, header.fwd_cnt);
        conn.push(Op::Response, 0, Vec::new());
        if self.insert(conn).is_none() {
            refuse(self);
        }
    }

    /// A client finished `CONNECT <port>`: ask the guest.
    fn host_connect(&mut self, stream: UnixStream, port: u32, early: Vec<u8>) {
        let Some(local_port) = self.free_port(port) else {
            self.counters.error();
            return;
        };
        let mut conn = Conn::new(stream, local_port, port, State::Connecting);
        conn.early = early;
        conn.push(Op::Request, 0, Vec::new());
        self.insert(conn);
    }

    /// Registers (with no interest yet: hang-ups are always reported) and
    /// serves a new connection.
    fn insert(&mut self, conn: Conn) -> Option<u64> {
        let token = self.next_token;
        self.next_token += 1;
        let watch = EpollEvent::new(EventSet::empty(), token);
        let fd = conn.stream.as_raw_fd();
        if let Err(error) = conn
            .stream
            .set_nonblocking(true)
            .and_then(|()| self.epoll.ctl(ControlOperation::Add, fd, watch))
        {
            self.counters.error();
            tracing::warn!(%error, "cannot watch a vsock connection");
            return None;
        }
        self.by_ports
            .insert((conn.local_port, conn.peer_port), token);
        self.conns.insert(token, conn);
        self.service(token);
        Some(token)
    }

    /// A host port not in use with guest port `peer`.
    fn free_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_port;
            self.next_port = port.checked_add(1).unwrap_or(EPHEMERAL_BASE);
            if !self.by_ports.contains_key(&(port, peer)) {
                return Some(port);
            }
        }
        None
    }

    fn accept_clients(&mut self) {
        for _ in 0..BATCH {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    self.counters.error();
                    tracing::warn!(%error, "vsock accept failed");
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                self.counters.error();
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let watch = EpollEvent::new(EventSet::IN, token);
            let fd = stream.as_raw_fd();
            match stream
                .set_nonblocking(true)
                .and_then(|()| self.epoll.ctl(ControlOperation::Add, fd, watch))
            {
                Ok(()) => {
                    self.handshakes.insert(token, Handshake::new(stream));
                }
                Err(error) => {
                    self.counters.error();
                    tracing::warn!(%error, "cannot watch a vsock client");
                }
            }
        }
    }

    fn handshake_event(&mut self, token: u64) {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return;
        };
        let progress = handshake.read();
        if matches!(progress, Ok(Progress::Pending)) {
            return;
        }
        let Some(handshake) = self.handshakes.remove(&token) else {
            return;
        };
        self.unwatch(handshake.stream.as_raw_fd());
        match progress {
            Ok(Progress::Connect { port, early }) => {
                self.host_connect(handshake.stream, port, early)
            }
            Ok(Progress::Closed | Progress::Pending) => {}
            Ok(Progress::Malformed) | Err(_) => {
                tracing::debug!("vsock client sent a bad CONNECT line");
                self.counters.error();
            }
        }
    }

    fn conn_event(&mut self, token: u64, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let hang_up = events.contains(EventSet::HANG_UP);
        if events.contains(EventSet::ERROR) || (hang_up && conn.state == State::Connecting) {
            return self.abort(token);
        }
        if hang_up && !conn.hung_up {
            // Level-triggered HUP cannot be masked: leave the set and read
            // the rest on demand (when credit or rx buffers free up).
            conn.hung_up = true;
            let fd = conn.stream.as_raw_fd();
            self.unwatch(fd);
        }
        self.service(token);
    }

    /// Moves a connection along after anything changed: flush to the host,
    /// read for the guest, notice EOF, re-arm epoll, schedule delivery.
    fn service(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let mut result = conn.flush();
        if result.is_ok() && conn.state == State::Established && !conn.host_eof {
            match conn.pump() {
                Ok(Pumped::Open) => {}
                Ok(Pumped::Eof) if conn.hung_up || conn.guest_done_sending() => {
                    conn.push(Op::Shutdown, SHUTDOWN_BOTH, Vec::new());
                    conn.push(Op::Rst, 0, Vec::new());
                    conn.state = State::Closing;
                }
                Ok(Pumped::Eof) => {
                    // A half-close (the socket did not hang up): the host
                    // sends no more but may still read the guest's answer
                    // (a request/response client that shut its write side).
                    conn.push(Op::Shutdown, SHUTDOWN_SEND, Vec::new());
                    conn.host_eof = true;
                }
                Err(error) => result = Err(error),
            }
        }
        if let Err(error) = result {
            tracing::debug!(%error, "vsock host socket failed");
            return self.abort(token);
        }
        if conn.state == State::Draining && conn.flushed() {
            return self.abort(token);
        }
        if conn.state == State::Closing && !conn.has_pending() {
            self.remove(token);
            return;
        }
        let wanted = conn.wanted_interest();
        if !conn.hung_up && wanted != conn.interest {
            let watch = EpollEvent::new(wanted, token);
            let fd = conn.stream.as_raw_fd();
            if let Err(error) = self.epoll.ctl(ControlOperation::Modify, fd, watch) {
                self.counters.error();
                tracing::warn!(%error, "cannot re-arm a vsock connection");
                return self.abort(token);
            }
            conn.interest = wanted;
        }
        if conn.has_pending() && !conn.scheduled {
            conn.scheduled = true;
            self.ready.push_back(token);
        }
    }

    /// Drops a connection and tells the guest with an RST.
    fn abort(&mut self, token: u64) {
        if let Some(conn) = self.remove(token) {
            self.queue_reset(conn.local_port, conn.peer_port);
        }
    }

    fn remove(&mut self, token: u64) -> Option<Conn> {
        let conn = self.conns.remove(&token)?;
        self.by_ports.remove(&(conn.local_port, conn.peer_port));
        self.ready.retain(|&t| t != token);
        if !conn.hung_up {
            self.unwatch(conn.stream.as_raw_fd());
        }
        Some(conn)
    }

    fn queue_reset(&mut self, local_port: u32, peer_port: u32) {
        if self.resets.len() >= MAX_RESETS {
            self.counters.error();
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            kind: TYPE_STREAM,
            op: Op::Rst as u16,
            ..Header::default()
        });
    }

    fn unwatch(&self, fd: RawFd) {
        // Closing the descriptor would drop it from the set too; failing
        // here only means it was not in the set.
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.uds_path) {
            tracing::debug!(%error, path = %self.uds_path.display(), "vsock socket not removed");
        }
    }
}
