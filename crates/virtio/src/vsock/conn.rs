//! One stream between a guest port and a host Unix socket: the credit
//! accounting of virtio 1.x §5.10.6.3 and the bounded buffers on each side.
//!
//! Host → guest: bytes are read from the socket only while the guest has
//! credit for them and the packets waiting for rx buffers stay under
//! [`HOST_BUF_CAP`]; otherwise the connection stops asking for EPOLLIN, so
//! a slow guest never makes the event thread spin or sie buffer without
//! bound. Guest → host: we advertise [`BUF_ALLOC`]; bytes the socket does
//! not take at once wait in `to_host`, and a guest sending beyond its
//! credit is a protocol violation (the caller resets the connection).

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{MAX_PAYLOAD, Op};

/// Receive buffer sie advertises to the guest for each connection.
pub const BUF_ALLOC: u32 = 256 * 1024;
/// Most host → guest payload bytes held per connection while the guest
/// posts no rx buffers.
pub const HOST_BUF_CAP: usize = 256 * 1024;
/// Consumed bytes after which an explicit CREDIT_UPDATE is sent (every
/// packet to the guest carries `fwd_cnt` anyway).
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Socket reads per wakeup, so one busy connection cannot starve others.
const READS_PER_PUMP: usize = 4;

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    /// Data flows both ways.
    Established,
    /// The host socket reached EOF: SHUTDOWN and RST are queued; the
    /// connection goes once they are delivered.
    Closing,
    /// The guest closed both directions with data still on its way to the
    /// host socket: flush it, then RST.
    Draining,
}

/// A packet waiting for an rx buffer; the header is completed at delivery
/// so it carries the credit counters of that moment.
#[derive(Debug)]
pub struct Outgoing {
    pub op: Op,
    pub flags: u32,
    pub data: Vec<u8>,
}

/// What a pump of the host socket ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Read what could be read.
    Open,
    /// The socket reached EOF.
    Eof,
}

/// One connection.
pub struct Conn {
    pub stream: UnixStream,
    /// Host-side port (ours).
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
    pub state: State,
    /// The guest's receive buffer and its count of bytes consumed.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent (or queued) to the guest.
    tx_cnt: u32,
    /// Payload bytes from the guest written to the socket.
    fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    fwd_cnt_told: u32,
    to_host: VecDeque<u8>,
    /// Close the socket's write side once `to_host` is flushed.
    shut_write: bool,
    pending: VecDeque<Outgoing>,
    pending_bytes: usize,
    /// Bytes a CONNECT client sent before OK, forwarded on RESPONSE.
    pub early: Vec<u8>,
    /// The socket hung up and was taken out of the epoll set: it is read
    /// on demand from then on.
    pub hung_up: bool,
    /// The host socket reached EOF (SHUTDOWN with SEND was queued for the
    /// guest); the guest may still send, so the connection stays up.
    pub host_eof: bool,
    /// The epoll interest currently registered.
    pub interest: EventSet,
    /// In the muxer's delivery queue.
    pub scheduled: bool,
}

/// `send(2)` with MSG_NOSIGNAL, so a client that went away yields EPIPE
/// rather than a process-killing SIGPIPE.
fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a live slice of `data.len()` readable bytes, and
    // `stream` owns the descriptor for the whole call.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Conn {
    /// A connection on `stream` (already non-blocking).
    pub fn new(stream: UnixStream, local_port: u32, peer_port: u32, state: State) -> Self {
        Self {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            to_host: VecDeque::new(),
            shut_write: false,
            pending: VecDeque::new(),
            pending_bytes: 0,
            early: Vec::new(),
            hung_up: false,
            host_eof: false,
            interest: EventSet::empty(),
            scheduled: false,
        }
    }

    /// Records the credit every guest packet carries.
    pub fn peer_credit(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = fwd_cnt;
    }

    /// Bytes the guest can still take. A guest claiming to have consumed
    /// more than was sent just gets no more data (never an overflow).
    pub fn peer_free(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// How many bytes the socket may be read for right now.
    fn read_room(&self) -> usize {
        if self.state != State::Established {
            return 0;
        }
        (self.peer_free() as usize)
            .min(HOST_BUF_CAP.saturating_sub(self.pending_bytes))
            .min(MAX_PAYLOAD)
    }

    /// Queues a packet for the guest; data counts against its credit.
    pub fn push(&mut self, op: Op, flags: u32, data: Vec<u8>) {
        self.tx_cnt = self.tx_cnt.wrapping_add(data.len() as u32);
        self.pending_bytes += data.len();
        self.pending.push_back(Outgoing { op, flags, data });
    }

    /// Queues a CREDIT_UPDATE unless one is already waiting.
    pub fn push_credit_update(&mut self) {
        if !self.pending.iter().any(|p| p.op == Op::CreditUpdate) {
            self.push(Op::CreditUpdate, 0, Vec::new());
        }
    }

    /// Whether packets wait for rx buffers.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The next packet, cut to at most `max_payload` bytes of data (the
    /// rest stays queued as the next RW packet), with the `fwd_cnt` it
    /// will report. Control packets need no payload room.
    pub fn pop(&mut self, max_payload: usize) -> Option<(Outgoing, u32)> {
        let front = self.pending.front_mut()?;
        let packet = if front.data.len() > max_payload {
            let rest = front.data.split_off(max_payload);
            let data = std::mem::replace(&mut front.data, rest);
            Outgoing {
                op: front.op,
                flags: front.flags,
                data,
            }
        } else {
            self.pending.pop_front()?
        };
        self.pending_bytes -= packet.data.len();
        self.fwd_cnt_told = self.fwd_cnt;
        Some((packet, self.fwd_cnt))
    }

    /// Answers a CONNECT client with `OK <host port>\n` once the guest
    /// accepted. The socket is fresh, so the short line goes out in one
    /// send or the client is treated as gone.
    pub fn greet(&self) -> io::Result<()> {
        let line = format!("OK {}\n", self.local_port);
        if send(&self.stream, line.as_bytes())? == line.len() {
            Ok(())
        } else {
            Err(io::ErrorKind::WriteZero.into())
        }
    }

    /// Reads the socket into RW packets as far as credit and the cap allow.
    pub fn pump(&mut self) -> io::Result<Pumped> {
        for _ in 0..READS_PER_PUMP {
            let room = self.read_room();
            if room == 0 {
                break;
            }
            let mut data = vec![0u8; room];
            match self.stream.read(&mut data) {
                Ok(0) => return Ok(Pumped::Eof),
                Ok(n) => {
                    data.truncate(n);
                    self.push(Op::Rw, 0, data);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Pumped::Open)
    }

    /// Takes an RW payload from the guest. Refused (`false`) when it
    /// exceeds the credit we advertised.
    pub fn accept(&mut self, data: &[u8]) -> bool {
        if self.to_host.len() + data.len() > BUF_ALLOC as usize {
            return false;
        }
        self.to_host.extend(data);
        true
    }

    /// The guest will send no more: close our write side once flushed.
    pub fn shut_write(&mut self) {
        self.shut_write = true;
    }

    /// True once the guest said it will send no more.
    pub fn guest_done_sending(&self) -> bool {
        self.shut_write
    }

    /// Writes `to_host` to the socket as far as it takes it, then queues a
    /// CREDIT_UPDATE if the guest has not heard of enough consumed bytes.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send(&self.stream, front) {
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.to_host.is_empty() && self.shut_write {
            self.shut_write = false;
            self.stream.shutdown(std::net::Shutdown::Write)?;
        }
        if self.fwd_cnt.wrapping_sub(self.fwd_cnt_told) >= CREDIT_UPDATE_THRESHOLD {
            self.push_credit_update();
        }
        Ok(())
    }

    /// Whether every byte from the guest reached the socket.
    pub fn flushed(&self) -> bool {
        self.to_host.is_empty()
    }

    /// The epoll interest this connection needs now.
    pub fn wanted_interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        // After EOF the socket stays readable: watching it would spin.
        if self.read_room() > 0 && !self.host_eof {
            set |= EventSet::IN;
        }
        if !self.to_host.is_empty() {
            set |= EventSet::OUT;
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn conn() -> (UnixStream, Conn) {
        let (client, server) = UnixStream::pair().expect("pair");
        server.set_nonblocking(true).expect("nonblocking");
        (client, Conn::new(server, 1, 2, State::Established))
    }

    #[test]
    fn reads_only_within_guest_credit() {
        let (mut client, mut c) = conn();
        client.write_all(&[7u8; 100]).expect("write");
        assert_eq!(c.wanted_interest(), EventSet::empty());
        c.peer_credit(30, 0);
        assert_eq!(c.wanted_interest(), EventSet::IN);
        assert_eq!(c.pump().expect("pump"), Pumped::Open);
        assert_eq!(c.peer_free(), 0);
        assert_eq!(c.wanted_interest(), EventSet::empty());
        let (packet, _) = c.pop(20).expect("packet");
        assert_eq!(packet.data.len(), 20);
        assert_eq!(c.pop(20).expect("rest").0.data.len(), 10);
        // The guest consumed all 30 bytes: reading resumes.
        c.peer_credit(30, 30);
        assert_eq!(c.wanted_interest(), EventSet::IN);
    }

    #[test]
    fn hostile_fwd_cnt_gives_no_credit() {
        let (_client, mut c) = conn();
        c.peer_credit(10, 1000);
        assert_eq!(c.peer_free(), 0);
    }

    #[test]
    fn guest_beyond_credit_is_refused_and_flush_reports_credit() {
        let (mut client, mut c) = conn();
        assert!(c.accept(&vec![1u8; BUF_ALLOC as usize]));
        assert!(!c.accept(&[1]));
        client.set_nonblocking(true).expect("nonblocking");
        let mut sink = vec![0u8; BUF_ALLOC as usize];
        let mut got = 0;
        while got < sink.len() {
            c.flush().expect("flush");
            if let Ok(n) = client.read(sink.get_mut(got..).expect("range")) {
                got += n;
            }
        }
        c.flush().expect("flush");
        assert!(c.has_pending());
        let (packet, fwd) = c.pop(0).expect("credit update");
        assert_eq!((packet.op, fwd), (Op::CreditUpdate, BUF_ALLOC));
    }
}
