//! The guest side of the metadata service: a smoltcp interface that owns
//! the MMDS address on one virtio-net device, answering ARP for it and
//! serving HTTP on TCP port 80 from the shared store.
//!
//! The net device shows every frame the guest sends to [`MmdsStack::claims`];
//! the ones it claims (ARP whose target is the MMDS address, IPv4 TCP to
//! that address on port 80) go to [`MmdsStack::receive`] instead of the tap,
//! and the frames the stack answers with are taken with
//! [`MmdsStack::next_frame`] and delivered on the receive queue like the
//! tap's. The stack is polled whenever a frame comes in or one goes out,
//! never on a timer of its own: nothing between the guest and the stack
//! loses frames (a full outgoing queue makes smoltcp hold its data), so
//! retransmissions are never needed, and the idle timeout that frees a
//! connection the guest abandoned is checked at the next poll.
//!
//! Memory is bounded: [`SOCKETS`] connections, each with a request buffer
//! of at most [`crate::http::MAX_REQUEST_BYTES`] and one response at a
//! time (at most the store's size limit plus a header), and at most
//! [`MAX_QUEUED_FRAMES`] frames waiting for the guest.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::sync::PoisonError;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Checksum, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::SharedMmds;
use crate::http::{MAX_REQUEST_BYTES, Parsed, serve};

/// The MMDS's own MAC address, which the guest learns through ARP: a
/// locally administered unicast address, Firecracker's.
pub const MMDS_MAC: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];
/// Connections served at once; more get a reset.
pub const SOCKETS: usize = 8;
/// Frames waiting for the guest's receive buffers.
pub const MAX_QUEUED_FRAMES: usize = 64;
/// The HTTP port.
const HTTP_PORT: u16 = 80;
/// Socket buffers: a request fits the receive side; responses stream
/// through the send side.
const RX_BUFFER: usize = 4096;
const TX_BUFFER: usize = 16 * 1024;
/// How long a connection may stay without a segment from the guest.
const IDLE_TIMEOUT: smoltcp::time::Duration = smoltcp::time::Duration::from_secs(10);
/// Largest Ethernet frame the stack sends (1500-byte IP MTU).
const MAX_FRAME: usize = 1514;
/// Rounds of (poll, serve sockets) per event, so one event's work is
/// bounded.
const POLL_ROUNDS: usize = 8;

/// How often a sender already taught to smoltcp is taught again (its
/// neighbour cache keeps entries for a minute).
const RELEARN: std::time::Duration = std::time::Duration::from_secs(20);

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const IPPROTO_TCP: u8 = 6;

/// The frames crossing between the device and smoltcp.
struct Frames {
    inbound: Option<Vec<u8>>,
    outbound: VecDeque<Vec<u8>>,
}

struct FrameRx(Vec<u8>);

struct FrameTx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for FrameRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for FrameTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        // Full only for replies to an inbound frame (transmit() refuses
        // otherwise): the guest asks again.
        if self.0.len() < MAX_QUEUED_FRAMES {
            self.0.push_back(frame);
        }
        result
    }
}

impl Device for Frames {
    type RxToken<'a> = FrameRx;
    type TxToken<'a> = FrameTx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(FrameRx, FrameTx<'_>)> {
        let frame = self.inbound.take()?;
        Some((FrameRx(frame), FrameTx(&mut self.outbound)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<FrameTx<'_>> {
        (self.outbound.len() < MAX_QUEUED_FRAMES).then_some(FrameTx(&mut self.outbound))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MAX_FRAME;
        // The guest offloads checksums (VIRTIO_NET_F_CSUM): its frames
        // carry partial ones, so they are not checked on the way in.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps
    }
}

/// One connection's HTTP state.
#[derive(Default)]
struct Conn {
    request: Vec<u8>,
    response: Vec<u8>,
    sent: usize,
    close_after: bool,
}

/// The metadata service on one net device.
pub struct MmdsStack {
    mmds: SharedMmds,
    ip: Ipv4Addr,
    iface: Interface,
    frames: Frames,
    sockets: SocketSet<'static>,
    conns: Vec<(SocketHandle, Conn)>,
    /// Added to the clock (tests move time forward with it).
    skew: std::time::Duration,
    /// The guest's MAC and IPv4 address as last taught to smoltcp, and when.
    learned: Option<([u8; 6], [u8; 4], std::time::Instant)>,
}

impl MmdsStack {
    /// A stack answering at `ip` from `mmds`.
    pub fn new(mmds: SharedMmds, ip: Ipv4Addr) -> std::io::Result<Self> {
        let mut seed = [0u8; 8];
        crate::random_bytes(&mut seed)?;
        Ok(Self::with_seed(mmds, ip, u64::from_le_bytes(seed)))
    }

    /// The same with a chosen seed for TCP's initial sequence numbers, so
    /// a fuzzer can complete handshakes; a VMM uses [`Self::new`].
    pub fn with_seed(mmds: SharedMmds, ip: Ipv4Addr, seed: u64) -> Self {
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(MMDS_MAC)));
        // Initial sequence numbers come from it.
        config.random_seed = seed;
        let mut frames = Frames {
            inbound: None,
            outbound: VecDeque::new(),
        };
        let mut iface = Interface::new(config, &mut frames, Instant::now());
        iface.update_ip_addrs(|addrs| {
            // A /0 prefix: the guest's address is on-link whatever it is
            // (it reaches the MMDS through a host route on its interface),
            // so smoltcp answers its ARP and replies without a gateway.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(ip), 0));
        });
        let mut sockets = SocketSet::new(Vec::new());
        let mut conns = Vec::with_capacity(SOCKETS);
        for _ in 0..SOCKETS {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; RX_BUFFER]),
                tcp::SocketBuffer::new(vec![0; TX_BUFFER]),
            );
            // A connection the guest leaves silent (half-open, or idle
            // keep-alive) gives its slot back at the next poll after this.
            socket.set_timeout(Some(IDLE_TIMEOUT));
            conns.push((sockets.add(socket), Conn::default()));
        }
        let mut stack = Self {
            mmds,
            ip,
            iface,
            frames,
            sockets,
            conns,
            skew: std::time::Duration::ZERO,
            learned: None,
        };
        stack.serve_sockets();
        stack
    }

    /// The MMDS address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Whether a guest frame (Ethernet, no virtio header) is for the MMDS:
    /// ARP about its address, or IPv4 TCP to it on port 80.
    pub fn claims(&self, frame: &[u8]) -> bool {
        let byte = |at: usize| frame.get(at).copied();
        let be16 = |at: usize| Some(u16::from_be_bytes([byte(at)?, byte(at + 1)?]));
        let addr = |at: usize| {
            frame
                .get(at..at + 4)
                .map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        match be16(12) {
            // Target protocol address of an Ethernet/IPv4 ARP packet.
            Some(ETHERTYPE_ARP) => addr(14 + 24) == Some(self.ip),
            Some(ETHERTYPE_IPV4) => {
                let Some(ihl) = byte(14).map(|b| usize::from(b & 0x0f) * 4) else {
                    return false;
                };
                addr(14 + 16) == Some(self.ip)
                    && byte(14 + 9) == Some(IPPROTO_TCP)
                    && be16(14 + ihl + 2) == Some(HTTP_PORT)
            }
            _ => false,
        }
    }

    /// A claimed guest frame.
    pub fn receive(&mut self, frame: &[u8]) {
        self.learn_sender(frame);
        self.frames.inbound = Some(frame.to_vec());
        self.poll();
        // Not taken (smoltcp found it malformed before asking): forget it.
        self.frames.inbound = None;
    }

    /// The next frame for the guest, if any.
    pub fn next_frame(&mut self) -> Option<Vec<u8>> {
        let frame = self.frames.outbound.pop_front();
        if frame.is_some() && self.frames.outbound.len() < MAX_QUEUED_FRAMES / 2 {
            // Room again: let held data go.
            self.poll();
        }
        frame
    }

    /// Whether frames wait for the guest.
    pub fn has_frames(&self) -> bool {
        !self.frames.outbound.is_empty()
    }

    /// How many frames wait for the guest (at most [`MAX_QUEUED_FRAMES`]).
    pub fn queued_frames(&self) -> usize {
        self.frames.outbound.len()
    }

    /// Drops every connection and queued frame (the device was reset).
    pub fn reset(&mut self) {
        self.frames.outbound.clear();
        for (handle, conn) in &mut self.conns {
            self.sockets.get_mut::<tcp::Socket>(*handle).abort();
            *conn = Conn::default();
        }
        self.poll();
        self.frames.outbound.clear();
    }

    /// smoltcp learns a neighbour only from ARP, and forgets it after a
    /// minute; a guest whose own ARP entry outlives that would see its
    /// segments answered with an ARP request instead, and wait for a
    /// retransmission. So the sender of an IPv4 frame is taught to smoltcp
    /// through an ARP request built from the frame's own addresses (its
    /// answer is dropped), when it is new or every [`RELEARN`].
    fn learn_sender(&mut self, frame: &[u8]) {
        if frame.get(12..14) != Some(&ETHERTYPE_IPV4.to_be_bytes()[..]) {
            return;
        }
        let (Some(mac), Some(ip)) = (frame.get(6..12), frame.get(14 + 12..14 + 16)) else {
            return;
        };
        let (Ok(mac), Ok(ip)) = (<[u8; 6]>::try_from(mac), <[u8; 4]>::try_from(ip)) else {
            return;
        };
        let now = std::time::Instant::now();
        if self
            .learned
            .is_some_and(|(m, i, at)| m == mac && i == ip && now.duration_since(at) < RELEARN)
        {
            return;
        }
        self.learned = Some((mac, ip, now));
        let mut arp = Vec::with_capacity(42);
        arp.extend_from_slice(&MMDS_MAC);
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&ETHERTYPE_ARP.to_be_bytes());
        // Ethernet, IPv4, 6- and 4-byte addresses, request.
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&mac);
        arp.extend_from_slice(&ip);
        arp.extend_from_slice(&[0; 6]);
        arp.extend_from_slice(&self.ip.octets());
        let queued = self.frames.outbound.len();
        self.frames.inbound = Some(arp);
        let now = self.now();
        self.iface.poll(now, &mut self.frames, &mut self.sockets);
        self.frames.inbound = None;
        self.frames.outbound.truncate(queued);
    }

    fn now(&self) -> Instant {
        Instant::from(std::time::SystemTime::now() + self.skew)
    }

    /// Moves this stack's clock `by` forward.
    #[cfg(test)]
    pub(crate) fn advance(&mut self, by: std::time::Duration) {
        self.skew += by;
    }

    fn poll(&mut self) {
        for _ in 0..POLL_ROUNDS {
            let now = self.now();
            self.iface.poll(now, &mut self.frames, &mut self.sockets);
            if !self.serve_sockets() {
                break;
            }
        }
    }

    /// Moves request bytes in and response bytes out of every socket;
    /// returns whether anything moved.
    fn serve_sockets(&mut self) -> bool {
        let mut moved = false;
        for (handle, conn) in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            match socket.state() {
                tcp::State::Closed | tcp::State::TimeWait => {
                    // TIME-WAIT only guards against stray segments of an
                    // old connection; a slot is worth more here.
                    socket.abort();
                    *conn = Conn::default();
                    if socket.listen(HTTP_PORT).is_err() {
                        tracing::debug!("MMDS socket cannot listen");
                    }
                    continue;
                }
                _ => {}
            }
            moved |= serve_conn(&self.mmds, socket, conn);
        }
        moved
    }
}

/// One connection's turn; returns whether bytes moved.
fn serve_conn(mmds: &SharedMmds, socket: &mut tcp::Socket<'_>, conn: &mut Conn) -> bool {
    let mut moved = false;
    if socket.can_recv() && conn.request.len() < MAX_REQUEST_BYTES && !conn.close_after {
        let room = MAX_REQUEST_BYTES - conn.request.len();
        let request = &mut conn.request;
        let taken = socket.recv(|data| {
            let n = data.len().min(room);
            request.extend_from_slice(&data[..n]);
            (n, n)
        });
        moved |= taken.is_ok_and(|n| n > 0);
    }
    // One response at a time: the next request waits until this one is
    // out (pipelined requests are answered in order).
    if conn.sent == conn.response.len() && !conn.close_after && !conn.request.is_empty() {
        let parsed = {
            let mut store = mmds.lock().unwrap_or_else(PoisonError::into_inner);
            serve(&mut store, &conn.request, std::time::Instant::now())
        };
        if let Parsed::Answered {
            consumed,
            response,
            close,
        } = parsed
        {
            conn.request.drain(..consumed.min(conn.request.len()));
            conn.response = response;
            conn.sent = 0;
            conn.close_after = close;
        }
    }
    if conn.sent < conn.response.len() && socket.can_send() {
        let rest = conn.response.get(conn.sent..).unwrap_or(&[]);
        if let Ok(n) = socket.send_slice(rest) {
            conn.sent += n;
            moved |= n > 0;
        }
    }
    let done = conn.sent == conn.response.len();
    // Closed once its last response is out, or once the guest closed its
    // side and nothing is left to answer.
    let peer_closed = !socket.may_recv() && socket.state() == tcp::State::CloseWait;
    let closable = matches!(
        socket.state(),
        tcp::State::Established | tcp::State::CloseWait
    );
    if done && (conn.close_after || peer_closed) && closable {
        socket.close();
        moved = true;
    }
    moved
}

#[cfg(test)]
#[path = "stack_tests.rs"]
mod tests;
