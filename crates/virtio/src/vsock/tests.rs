//! virtio-vsock end to end: real rings, real Unix sockets.

use std::io::Write;
use std::os::unix::net::UnixListener;

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_CONFIG, VIRTIO_MMIO_DEVICE_ID};

use super::packet::{HOST_CID, Header, Op, SHUTDOWN_RCV, SHUTDOWN_SEND};
use super::test_rig::{GUEST_CID, Rig, TempDir, closed, guest_header, read_n};
use super::*;

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<Op> {
    packets
        .iter()
        .filter_map(|(h, _)| Op::from_raw(h.op))
        .collect()
}

#[test]
fn config_space_holds_the_cid() {
    let rig = Rig::new(0);
    let d = rig.driver();
    assert_eq!(d.read(VIRTIO_MMIO_DEVICE_ID), 19);
    assert_eq!(d.read(VIRTIO_MMIO_CONFIG), GUEST_CID as u32);
    assert_eq!(d.read(VIRTIO_MMIO_CONFIG + 4), 0);
    assert_eq!(d.device_features(), 1 << 32);
}

/// Host client → guest port 1024: REQUEST, RESPONSE, `OK`, then an echo.
#[test]
fn host_initiated_connection_echoes() {
    echo(Rig::new(8));
}

/// The same with the device on virtio-PCI.
#[test]
fn host_initiated_connection_echoes_over_pci() {
    echo(Rig::new_pci(8));
}

fn echo(mut rig: Rig) {
    let mut client = rig.client(b"CONNECT 1024\n");
    rig.backend();
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Request]);
    let request = got[0].0;
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(request.dst_port, 1024);
    assert!(request.src_port >= EPHEMERAL_BASE);
    assert_eq!(request.buf_alloc, BUF_ALLOC);

    let host_port = request.src_port;
    rig.send(guest_header(Op::Response, 1024, host_port), &[]);
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_n(&mut client, ok.len()), ok.as_bytes());

    client.write_all(b"hello").expect("write");
    rig.backend();
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Rw]);
    assert_eq!(got[0].1, b"hello");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (host_port, 1024));

    rig.send(guest_header(Op::Rw, 1024, host_port), b"hello");
    assert_eq!(read_n(&mut client, 5), b"hello");
    assert_eq!(rig.t.counters().bytes_written, 5);

    // The client leaves: SHUTDOWN then RST, and the connection is gone.
    drop(client);
    rig.backend();
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Shutdown, Op::Rst]);
    assert_eq!(got[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
    assert_eq!(rig.errors(), 0);
}

/// A client that shuts only its write side still gets the guest's answer:
/// SHUTDOWN(SEND) to the guest, its bytes back, then RST when it is done.
#[test]
fn a_host_half_close_still_delivers_the_guest_answer() {
    let mut rig = Rig::new(8);
    let mut client = rig.client(b"CONNECT 1024\n");
    rig.backend();
    let host_port = rig.recv()[0].0.src_port;
    rig.send(guest_header(Op::Response, 1024, host_port), &[]);
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_n(&mut client, ok.len()), ok.as_bytes());

    client.write_all(b"ask").expect("write");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close");
    rig.backend();
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Rw, Op::Shutdown]);
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 1);

    rig.send(guest_header(Op::Rw, 1024, host_port), b"answer");
    assert_eq!(read_n(&mut client, 6), b"answer");
    let mut shut = guest_header(Op::Shutdown, 1024, host_port);
    shut.flags = SHUTDOWN_SEND;
    rig.send(shut, &[]);
    rig.backend();
    assert_eq!(ops(&rig.recv()), [Op::Rst]);
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
    assert_eq!(rig.errors(), 0);
}

/// Guest → host port 5000 reaches `<uds>_5000`; bytes flow both ways, and
/// the guest's close gets its RST.
#[test]
fn guest_initiated_connection_reaches_the_port_socket() {
    let mut rig = Rig::new(8);
    let mut path = rig.uds.clone().into_os_string();
    path.push("_5000");
    let listener = UnixListener::bind(&path).expect("listen");
    rig.send(guest_header(Op::Request, 1234, 5000), &[]);
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Response]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (5000, 1234));

    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    rig.send(guest_header(Op::Rw, 1234, 5000), b"ping");
    assert_eq!(read_n(&mut host, 4), b"ping");
    host.write_all(b"pong").expect("write");
    rig.backend();
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Rw]);
    assert_eq!(got[0].1, b"pong");

    let mut close = guest_header(Op::Shutdown, 1234, 5000);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(close, &[]);
    assert_eq!(ops(&rig.recv()), [Op::Rst]);
    assert!(closed(&mut host));
    assert_eq!(rig.errors(), 0);
}

#[test]
fn guest_request_to_a_port_nobody_listens_on_is_reset() {
    let mut rig = Rig::new(4);
    rig.send(guest_header(Op::Request, 1234, 6000), &[]);
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Rst]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (6000, 1234));
    assert_eq!(rig.t.with_device(|v| v.connection_count()), 0);
}

/// Host data waits for the guest's credit and for rx buffers, and a
/// packet larger than an rx buffer is split.
#[test]
fn host_data_respects_credit_and_rx_buffers() {
    let mut rig = Rig::new(0);
    let mut path = rig.uds.clone().into_os_string();
    path.push("_7");
    let listener = UnixListener::bind(&path).expect("listen");
    let mut request = guest_header(Op::Request, 99, 7);
    request.buf_alloc = 6000;
    rig.send(request, &[]);
    let (mut host, _) = listener.accept().expect("accept");
    host.write_all(&[0x5a; 10_000]).expect("write");
    rig.backend();
    // No rx buffers yet: nothing delivered, nothing lost.
    assert!(rig.recv().is_empty());
    rig.post_rx(4);
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Response, Op::Rw, Op::Rw]);
    let delivered: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(delivered, 6000);
    // Credit exhausted: the rest stays in the socket until the guest
    // reports it consumed the data.
    rig.backend();
    assert!(rig.recv().is_empty());
    let mut update = guest_header(Op::CreditUpdate, 99, 7);
    update.buf_alloc = 6000;
    update.fwd_cnt = 6000;
    rig.send(update, &[]);
    let got = rig.recv();
    assert_eq!(got.iter().map(|(_, d)| d.len()).sum::<usize>(), 4000);
}

#[test]
fn credit_request_is_answered() {
    let mut rig = Rig::new(4);
    let mut path = rig.uds.clone().into_os_string();
    path.push("_8");
    let _listener = UnixListener::bind(&path).expect("listen");
    rig.send(guest_header(Op::Request, 5, 8), &[]);
    rig.send(guest_header(Op::Rw, 5, 8), b"abc");
    rig.send(guest_header(Op::CreditRequest, 5, 8), &[]);
    let got = rig.recv();
    assert_eq!(ops(&got), [Op::Response, Op::CreditUpdate]);
    assert_eq!(got[1].0.fwd_cnt, 3);
}

#[test]
fn socket_file_lifecycle() {
    let dir = TempDir::new();
    let uds = dir.0.join("v.sock");
    let stale = UnixListener::bind(&uds).expect("stale socket");
    drop(stale);
    let vsock = Vsock::new(GUEST_CID, &uds).expect("replaces a stale socket");
    assert!(uds.exists());
    drop(vsock);
    assert!(!uds.exists());

    std::fs::write(&uds, b"precious").expect("file");
    let error = Vsock::new(GUEST_CID, &uds).err().expect("refused");
    assert!(error.to_string().contains(&uds.display().to_string()));
    assert!(uds.exists());

    let missing = dir.0.join("no/such/dir/v.sock");
    let error = Vsock::new(GUEST_CID, &missing).err().expect("refused");
    assert!(error.to_string().contains("no/such/dir"));
    assert!(matches!(
        Vsock::new(2, &dir.0.join("x.sock")),
        Err(VsockError::InvalidCid(2))
    ));
}

/// A megabyte through a host-initiated connection and back: rx buffers
/// recycled, payloads split to fit them, credit returned only through
/// the `fwd_cnt` of the guest's own packets.
#[test]
fn bulk_echo_keeps_every_byte_in_order() {
    const TOTAL: usize = 1 << 20;
    let mut rig = Rig::new(16);
    let mut client = rig.client(b"CONNECT 77\n");
    rig.backend();
    let host_port = rig.recv()[0].0.src_port;
    rig.send(guest_header(Op::Response, 77, host_port), &[]);
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_n(&mut client, ok.len()), ok.as_bytes());

    let blob: Vec<u8> = (0..TOTAL).map(|i| (i * 7 + i / 4096) as u8).collect();
    let expected = blob.clone();
    let mut writer = client.try_clone().expect("clone");
    let sender = std::thread::spawn(move || writer.write_all(&blob));
    // Hands the client back so its close cannot race the loop below.
    let receiver = std::thread::spawn(move || (read_n(&mut client, TOTAL), client));

    let mut consumed = 0u32;
    // The guest side honours sie's credit too: echoes wait in `backlog`.
    let mut backlog = std::collections::VecDeque::<u8>::new();
    let (mut echoed, mut host_free) = (0u32, 0u32);
    let mut rounds = 0;
    // Until the client has its echo back (sie may still be flushing it).
    while !receiver.is_finished() {
        rounds += 1;
        assert!(rounds < 200_000, "stalled after {consumed} bytes");
        rig.backend();
        let got = rig.recv();
        let returned = got.len() as u32 + std::mem::take(&mut rig.rx_empty);
        if got.is_empty() {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        for (header, data) in got {
            let op = Op::from_raw(header.op);
            assert!(matches!(op, Some(Op::Rw | Op::CreditUpdate)), "{op:?}");
            host_free = header.buf_alloc - (echoed - header.fwd_cnt);
            consumed += data.len() as u32;
            backlog.extend(data);
        }
        while !backlog.is_empty() && host_free > 0 {
            let n = backlog.len().min(4000).min(host_free as usize);
            let data: Vec<u8> = backlog.drain(..n).collect();
            let mut echo = guest_header(Op::Rw, 77, host_port);
            echo.fwd_cnt = consumed;
            rig.send(echo, &data);
            echoed += n as u32;
            host_free -= n as u32;
        }
        rig.post_rx(returned as u16);
    }
    assert_eq!(consumed as usize, TOTAL);
    sender.join().expect("sender").expect("write");
    assert_eq!(receiver.join().expect("receiver").0, expected);
    assert_eq!(rig.errors(), 0);
}

/// The guest closes right after sending more than the host socket holds:
/// every byte still reaches the host, then the guest gets its RST.
#[test]
fn guest_close_flushes_before_reset() {
    let mut rig = Rig::new(8);
    let mut path = rig.uds.clone().into_os_string();
    path.push("_90");
    let listener = UnixListener::bind(&path).expect("listen");
    rig.send(guest_header(Op::Request, 3, 90), &[]);
    assert_eq!(ops(&rig.recv()), [Op::Response]);
    let (mut host, _) = listener.accept().expect("accept");
    host.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    let chunk: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    // All the credit sie gave: more than the socket buffer takes at once.
    let count = BUF_ALLOC as usize / chunk.len();
    for _ in 0..count {
        rig.send(guest_header(Op::Rw, 3, 90), &chunk);
    }
    assert_eq!(rig.errors(), 0);
    let mut close = guest_header(Op::Shutdown, 3, 90);
    close.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    rig.send(close, &[]);
    // Still draining (with default socket buffers, always): no RST yet.
    let draining = rig.t.with_device(|v| v.connection_count()) == 1;
    assert_eq!(ops(&rig.recv()).contains(&Op::Rst), !draining);
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut host, &mut all).expect("read");
        all
    });
    let mut rounds = 0;
    while rig.t.with_device(|v| v.connection_count()) != 0 {
        rounds += 1;
        assert!(rounds < 10_000, "never drained");
        rig.backend();
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let all = reader.join().expect("reader");
    assert_eq!(all.len(), count * chunk.len());
    assert!(all.chunks(chunk.len()).all(|c| c == chunk.as_slice()));
    assert_eq!(ops(&rig.recv()).last(), Some(&Op::Rst));
}
