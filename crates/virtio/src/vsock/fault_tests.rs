//! Host-side faults under a live vsock device: a host peer that never
//! reads. The event thread must never block on it or spin for it; the
//! guest's credit runs out (so a well-behaved guest simply waits), sie
//! holds at most [`BUF_ALLOC`] bytes for it, other connections carry on,
//! and once the peer reads again every byte arrives in order.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::packet::{Header, Op};
use super::test_rig::{Rig, guest_header, read_n};
use super::*;

/// Binds `<uds>_port` for the guest to connect to.
fn port_listener(rig: &Rig, port: u32) -> UnixListener {
    let mut path = rig.uds.clone().into_os_string();
    path.push(format!("_{port}"));
    UnixListener::bind(&path).expect("listen")
}

/// Whether the worker's event loop would wake for the device's host side.
fn backend_wakes(rig: &Rig) -> bool {
    let fd = rig.t.backend_fd().expect("vsock has a backend fd");
    let epoll = Epoll::new().expect("epoll");
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .expect("watch");
    let mut events = [EpollEvent::default()];
    epoll.wait(0, &mut events).expect("epoll wait") > 0
}

/// The guest's view of its credit on one connection.
struct Credit {
    buf_alloc: u32,
    fwd_cnt: u32,
    sent: u32,
}

impl Credit {
    fn free(&self) -> u32 {
        self.buf_alloc
            .saturating_sub(self.sent.wrapping_sub(self.fwd_cnt))
    }

    /// Takes in what the device told the guest on port `port`, reposting
    /// the rx buffers it used.
    fn update(&mut self, rig: &mut Rig, port: u32) -> Vec<(Header, Vec<u8>)> {
        let got = rig.recv();
        for (header, _) in &got {
            if header.dst_port == port {
                self.buf_alloc = header.buf_alloc;
                self.fwd_cnt = header.fwd_cnt;
            }
        }
        let used = u16::try_from(got.len()).expect("few packets") + rig.rx_empty as u16;
        rig.rx_empty = 0;
        rig.post_rx(used);
        got
    }
}

#[test]
fn a_host_peer_that_never_reads_stops_the_guests_credit_not_sie() {
    let mut rig = Rig::new(16);
    let stuck = port_listener(&rig, 81);
    rig.send(guest_header(Op::Request, 1, 81), &[]);
    let mut credit = Credit {
        buf_alloc: 0,
        fwd_cnt: 0,
        sent: 0,
    };
    let got = credit.update(&mut rig, 1);
    assert_eq!(got.first().map(|(h, _)| h.op), Some(Op::Response as u16));
    assert_eq!(credit.buf_alloc, BUF_ALLOC);
    let (mut host, _) = stuck.accept().expect("accept");

    // The guest sends as long as its credit allows; the peer reads nothing.
    let chunk = vec![0x5au8; 4000];
    let started = Instant::now();
    let mut stream: Vec<u8> = Vec::new();
    loop {
        credit.update(&mut rig, 1);
        let n = credit.free().min(chunk.len() as u32) as usize;
        if n == 0 {
            break;
        }
        let bytes: Vec<u8> = (0..n)
            .map(|i| (stream.len() + i).wrapping_mul(31) as u8)
            .collect();
        rig.send(guest_header(Op::Rw, 1, 81), &bytes);
        stream.extend_from_slice(&bytes);
        credit.sent = credit.sent.wrapping_add(n as u32);
        assert!(stream.len() < 64 << 20, "the credit never ran out");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "sending to a stuck peer blocked the device"
    );
    // The socket's own buffer took some, sie holds the rest up to the
    // credit it gave, and nothing went wrong.
    assert!(stream.len() >= BUF_ALLOC as usize, "{} bytes", stream.len());
    assert_eq!(rig.errors(), 0);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 1);
    assert!(!backend_wakes(&rig), "a stuck peer must not wake the loop");

    // Other connections carry on meanwhile.
    let other = port_listener(&rig, 82);
    rig.send(guest_header(Op::Request, 2, 82), &[]);
    let got = credit.update(&mut rig, 1);
    assert!(
        got.iter()
            .any(|(h, _)| h.op == Op::Response as u16 && h.dst_port == 2)
    );
    let (mut reader, _) = other.accept().expect("accept");
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    rig.send(guest_header(Op::Rw, 2, 82), b"still here");
    assert_eq!(read_n(&mut reader, 10), b"still here");
    reader.write_all(b"ack").expect("write");
    rig.backend();
    let got = credit.update(&mut rig, 1);
    assert!(
        got.iter()
            .any(|(h, data)| h.dst_port == 2 && data == b"ack")
    );

    // The peer finally reads: every byte arrives, in order.
    let total = stream.len();
    let drain = std::thread::spawn(move || {
        host.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut all = vec![0u8; total];
        host.read_exact(&mut all).expect("read everything");
        (host, all)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !drain.is_finished() {
        assert!(Instant::now() < deadline, "the held bytes never left");
        rig.backend();
        credit.update(&mut rig, 1);
        std::thread::sleep(Duration::from_millis(5));
    }
    let (_host, all) = drain.join().expect("reader");
    assert!(all == stream, "bytes lost or reordered");
    // And the guest hears that its credit is back.
    rig.backend();
    credit.update(&mut rig, 1);
    assert!(credit.free() > 0, "the guest never got its credit back");
    assert_eq!(rig.errors(), 0);
}
