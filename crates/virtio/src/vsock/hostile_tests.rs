//! A hostile guest and hostile host clients: every bad packet or line is
//! dropped or reset and counted, nothing panics, and nothing grows
//! without bound.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc;
use std::thread;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;

use super::packet::{HEADER_LEN, Header, Op, SHUTDOWN_SEND};
use super::test_rig::{Rig, closed, guest_header, read_n};
use super::*;

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<u16> {
    packets.iter().map(|(h, _)| h.op).collect()
}

const RST: u16 = Op::Rst as u16;

/// Binds `<uds>_port` for the guest to connect to.
fn port_listener(rig: &Rig, port: u32) -> UnixListener {
    let mut path = rig.uds.clone().into_os_string();
    path.push(format!("_{port}"));
    UnixListener::bind(&path).expect("listen")
}

#[test]
fn bad_connect_lines_close_the_client() {
    let mut rig = Rig::new(4);
    let lines: [&[u8]; 5] = [
        b"HELLO 5\n",
        b"CONNECT abc\n",
        b"CONNECT 99999999999\n",
        &[b'x'; 40],
        b"CONNECT                            7\n",
    ];
    for (n, line) in lines.iter().enumerate() {
        let mut client = rig.client(line);
        rig.backend();
        assert!(closed(&mut client), "line {n} left the client open");
        assert_eq!(rig.errors(), n as u64 + 1);
    }
    assert!(rig.recv().is_empty());
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}

#[test]
fn client_leaving_before_the_guest_answers_resets() {
    let mut rig = Rig::new(4);
    let client = rig.client(b"CONNECT 9\n");
    rig.backend();
    assert_eq!(ops(&rig.recv()), [Op::Request as u16]);
    drop(client);
    rig.backend();
    assert_eq!(ops(&rig.recv()), [RST]);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}

#[test]
fn guest_rst_to_a_connect_closes_the_client() {
    let mut rig = Rig::new(4);
    let mut client = rig.client(b"CONNECT 9\n");
    rig.backend();
    let request = rig.recv()[0].0;
    rig.send(guest_header(Op::Rst, 9, request.src_port), &[]);
    assert!(closed(&mut client));
    assert!(rig.recv().is_empty());
}

#[test]
fn data_before_response_resets() {
    let mut rig = Rig::new(4);
    let mut client = rig.client(b"CONNECT 9\n");
    rig.backend();
    let request = rig.recv()[0].0;
    rig.send(guest_header(Op::Rw, 9, request.src_port), b"early");
    assert_eq!(ops(&rig.recv()), [RST]);
    assert!(closed(&mut client));
    assert_eq!(rig.errors(), 1);
}

#[test]
fn spoofed_source_cid_is_dropped_silently() {
    let mut rig = Rig::new(4);
    let mut header = guest_header(Op::Request, 1, 6000);
    header.src_cid = 7;
    rig.send(header, &[]);
    assert!(rig.recv().is_empty());
    assert_eq!(rig.errors(), 1);
}

#[test]
fn length_beyond_the_chain_is_dropped() {
    let mut rig = Rig::new(4);
    let mut header = guest_header(Op::Rw, 1, 6000);
    header.len = 100;
    rig.send_raw(&header, &[0; 10], 10);
    header.len = (MAX_PAYLOAD + 1) as u32;
    rig.send_raw(&header, &[0; 10], 0x800);
    header.len = 0;
    rig.send_raw(&header, &[], 0);
    assert_eq!(rig.errors(), 2);
    // The header alone made it through: an RW for no connection.
    assert_eq!(ops(&rig.recv()), [RST]);
    assert_eq!(rig.driver().status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn short_or_writable_tx_chains_are_dropped() {
    let mut rig = Rig::new(4);
    let header = guest_header(Op::Request, 1, 6000).to_bytes();
    // 20 bytes of a 44-byte header.
    rig.send_bytes(&header, &[(20, false)]);
    // A device-writable buffer on the tx queue.
    rig.send_bytes(&header, &[(HEADER_LEN as u32, true)]);
    assert_eq!(rig.errors(), 2);
    assert!(rig.recv().is_empty());
    // A header split over three descriptors is fine.
    rig.send_bytes(&header, &[(10, false), (30, false), (4, false)]);
    assert_eq!(ops(&rig.recv()), [RST]);
    assert_eq!(rig.errors(), 2);
}

#[test]
fn bad_fields_are_reset_and_counted() {
    let mut rig = Rig::new(8);
    let mut unknown = guest_header(Op::Request, 1, 6000);
    unknown.op = 99;
    let mut seqpacket = guest_header(Op::Request, 2, 6000);
    seqpacket.kind = 2;
    let mut elsewhere = guest_header(Op::Request, 3, 6000);
    elsewhere.dst_cid = 5;
    let mut bad_rst = guest_header(Op::Rst, 4, 6000);
    bad_rst.kind = 2;
    for header in [unknown, seqpacket, elsewhere, bad_rst] {
        rig.send(header, &[]);
    }
    let got = rig.recv();
    assert_eq!(ops(&got), [RST, RST, RST]);
    assert_eq!(
        got.iter().map(|(h, _)| h.dst_port).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(rig.errors(), 4);
    // An RST for nothing is not answered (and not an error).
    rig.send(guest_header(Op::Rst, 5, 6000), &[]);
    assert!(rig.recv().is_empty());
    assert_eq!(rig.errors(), 4);
}

#[test]
fn unknown_op_on_a_live_connection_resets_it() {
    let mut rig = Rig::new(8);
    let listener = port_listener(&rig, 80);
    rig.send(guest_header(Op::Request, 1, 80), &[]);
    let (mut host, _) = listener.accept().expect("accept");
    let mut header = guest_header(Op::Rw, 1, 80);
    header.op = 42;
    rig.send(header, &[]);
    assert_eq!(ops(&rig.recv()), [Op::Response as u16, RST]);
    assert!(closed(&mut host));
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}

#[test]
fn rx_chain_too_small_for_a_header_keeps_the_packet() {
    let mut rig = Rig::new(0);
    rig.post_rx_sized(1, HEADER_LEN as u32 - 1);
    rig.send(guest_header(Op::Request, 1, 6000), &[]);
    assert_eq!(rig.errors(), 1);
    rig.post_rx(1);
    // The small buffer came back empty; the RST waited for the next one.
    assert_eq!(ops(&rig.recv()), [RST]);
    assert_eq!(rig.rx_empty, 1);
}

#[test]
fn guest_beyond_its_credit_is_reset() {
    let mut rig = Rig::new(8);
    let listener = port_listener(&rig, 81);
    rig.send(guest_header(Op::Request, 1, 81), &[]);
    assert_eq!(ops(&rig.recv()), [Op::Response as u16]);
    // The host never reads: sie's buffer fills, then the guest overruns it.
    let (_host, _) = listener.accept().expect("accept");
    let chunk = vec![7u8; 4000];
    let mut sent = 0;
    while rig.errors() == 0 {
        rig.send(guest_header(Op::Rw, 1, 81), &chunk);
        sent += chunk.len();
        assert!(sent < 8 << 20, "never reset");
    }
    assert!(sent > BUF_ALLOC as usize);
    assert_eq!(ops(&rig.recv()).last(), Some(&RST));
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}

#[test]
fn guest_shutting_its_send_side_closes_the_host_write_side() {
    let mut rig = Rig::new(8);
    let listener = port_listener(&rig, 82);
    rig.send(guest_header(Op::Request, 1, 82), &[]);
    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    rig.send(guest_header(Op::Rw, 1, 82), b"last");
    let mut shut = guest_header(Op::Shutdown, 1, 82);
    shut.flags = SHUTDOWN_SEND;
    rig.send(shut, &[]);
    assert_eq!(read_n(&mut host, 4), b"last");
    assert!(closed(&mut host));
    // The other direction still works.
    host.write_all(b"reply").expect("write");
    rig.backend();
    let got = rig.recv();
    assert_eq!(got.last().map(|(_, d)| d.as_slice()), Some(&b"reply"[..]));
}

#[test]
fn request_flood_stops_at_the_cap() {
    let mut rig = Rig::new(0);
    let listener = port_listener(&rig, 83);
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // Accepts (and holds) every connection so connect(2) never blocks.
    let acceptor = thread::spawn(move || {
        let mut held = Vec::new();
        listener.set_nonblocking(true).expect("nonblocking");
        loop {
            match listener.accept() {
                Ok((stream, _)) => held.push(stream),
                Err(_) if stop_rx.try_recv().is_ok() => return held.len(),
                Err(_) => thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
    });
    let extra = 5;
    for port in 0..(MAX_CONNECTIONS + extra) as u32 {
        rig.send(guest_header(Op::Request, port, 83), &[]);
    }
    assert_eq!(rig.t.with_device(|v| v.connection_count()), MAX_CONNECTIONS);
    assert_eq!(rig.errors(), extra as u64);
    // A host client is turned away too.
    let mut client = UnixStream::connect(&rig.uds).expect("connect");
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    rig.backend();
    assert!(closed(&mut client));
    stop_tx.send(()).expect("stop");
    assert_eq!(acceptor.join().expect("acceptor"), MAX_CONNECTIONS);
    // A driver reset drops them all.
    rig.driver()
        .write(virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}
