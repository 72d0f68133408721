//! The vsock connection state machine (`sie_virtio::vsock::wire::Muxer`)
//! without a virtqueue: guest packets from the input go straight to
//! `handle_guest`, packets for the guest are popped with any room, and
//! host clients (Unix sockets in the per-process directory the
//! `virtio_vsock` target uses) connect, handshake, send, half-close and
//! hang up in between. Guest connects to port 1024 reach a listener the
//! run accepts from.
//!
//! Checked: every packet for the guest goes from the host CID to the
//! guest's, is a stream packet with a known op, its `len` is its payload's
//! length and fits the room offered, and only RW packets carry data; the
//! connection count stays within [`MAX_CONNECTIONS`].

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

use sie_virtio::VirtioCounters;
use sie_virtio::vsock::wire::{Header, Muxer, Op, TYPE_STREAM};
use sie_virtio::vsock::{EPHEMERAL_BASE, HOST_CID, MAX_CONNECTIONS, MAX_PAYLOAD};

use super::virtio_vsock::{GUEST_PORT, host};
use crate::input::Input;

const GUEST_CID: u64 = 3;
/// Most host clients alive at once.
const MAX_CLIENTS: usize = 8;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let host = host();
    let uds_path = host.uds_path.with_file_name("muxer.sock");
    let _ = std::fs::remove_file(&uds_path);
    let listener = UnixListener::bind(&uds_path).expect("muxer listener");
    // Guest connects to port P go to `<uds_path>_P`: the shared listener.
    let mut port_path = uds_path.clone().into_os_string();
    port_path.push(format!("_{GUEST_PORT}"));
    let _ = std::fs::remove_file(&port_path);
    let _ = std::os::unix::fs::symlink(
        {
            let mut p = host.uds_path.clone().into_os_string();
            p.push(format!("_{GUEST_PORT}"));
            p
        },
        &port_path,
    );
    let mut muxer = Muxer::new(
        GUEST_CID,
        uds_path.clone(),
        listener,
        Arc::new(VirtioCounters::default()),
    )
    .expect("muxer");
    let mut clients: Vec<UnixStream> = Vec::new();
    // (host port, guest port) of the last packet the guest received.
    let mut heard: Option<(u32, u32)> = None;

    for _ in 0..128 {
        if input.is_empty() {
            break;
        }
        match input.u8() % 8 {
            0..=2 => {
                let (header, payload) = packet(&mut input, heard);
                muxer.handle_guest(&header, &payload);
            }
            3 | 4 => {
                let room = match input.u8() % 4 {
                    0 => 0,
                    1 => input.below(64) as usize,
                    _ => MAX_PAYLOAD,
                };
                for _ in 0..=input.below(4) {
                    let Some((header, payload)) = muxer.pop(room) else {
                        break;
                    };
                    check(&header, &payload, room);
                    heard = Some((header.src_port, header.dst_port));
                }
            }
            5 => muxer.process_events(),
            6 => client_action(&mut input, &mut clients, &uds_path),
            _ => {
                if input.u8().is_multiple_of(8) {
                    muxer.reset();
                } else {
                    muxer.process_events();
                }
            }
        }
        assert!(
            muxer.connection_count() <= MAX_CONNECTIONS,
            "{} connections",
            muxer.connection_count()
        );
    }
    drop(muxer);
    let _ = std::fs::remove_file(&uds_path);
}

fn check(header: &Header, payload: &[u8], room: usize) {
    assert_eq!(header.src_cid, HOST_CID, "packet not from the host");
    assert_eq!(header.dst_cid, GUEST_CID, "packet not for the guest");
    assert_eq!(header.kind, TYPE_STREAM, "not a stream packet");
    let op = Op::from_raw(header.op).unwrap_or_else(|| panic!("unknown op {}", header.op));
    assert_eq!(
        header.len as usize,
        payload.len(),
        "len is not the payload's"
    );
    assert!(payload.len() <= room, "{} bytes into {room}", payload.len());
    if op != Op::Rw {
        assert!(payload.is_empty(), "a {op:?} packet carries data");
    }
}

fn port(input: &mut Input, heard: Option<u32>) -> u32 {
    match input.u8() % 8 {
        0..=2 => heard.unwrap_or(GUEST_PORT),
        3 => GUEST_PORT,
        4 => EPHEMERAL_BASE + input.below(4),
        5 => input.below(8) + 5000,
        6 => u32::MAX,
        _ => input.u32(),
    }
}

/// A guest packet, mostly well-formed and answering the last one heard
/// (`heard` = host port, guest port).
fn packet(input: &mut Input, heard: Option<(u32, u32)>) -> (Header, Vec<u8>) {
    let src_cid = match input.u8() % 16 {
        0 => HOST_CID,
        1 => input.u64(),
        _ => GUEST_CID,
    };
    let dst_cid = match input.u8() % 16 {
        0 => GUEST_CID,
        1 => input.u64(),
        _ => HOST_CID,
    };
    let src_port = port(input, heard.map(|h| h.1));
    let dst_port = port(input, heard.map(|h| h.0));
    let op = match input.u8() % 16 {
        0 => 0,
        n @ 1..=7 => u16::from(n),
        8 => input.u16(),
        _ => Op::Rw as u16,
    };
    let kind = if input.u8() == 0xff {
        input.u16()
    } else {
        TYPE_STREAM
    };
    let flags = match input.u8() % 4 {
        0 => input.u32(),
        _ => input.below(4),
    };
    let buf_alloc = match input.u8() % 4 {
        0 => input.u32(),
        1 => 0,
        _ => 256 * 1024,
    };
    let fwd_cnt = if input.bool() { input.u32() } else { 0 };
    let payload = match input.u8() % 16 {
        0 => vec![0x5a; input.below(MAX_PAYLOAD as u32 + 1) as usize],
        _ => input.chunk(64).to_vec(),
    };
    let len = match input.u8() % 16 {
        0 => input.u32(),
        _ => payload.len() as u32,
    };
    let header = Header {
        src_cid,
        dst_cid,
        src_port,
        dst_port,
        len,
        kind,
        op,
        flags,
        buf_alloc,
        fwd_cnt,
    };
    (header, payload)
}

/// What the host side does: connect and handshake, accept a guest
/// connect, send, drain, half-close or hang up.
fn client_action(input: &mut Input, clients: &mut Vec<UnixStream>, path: &std::path::Path) {
    match input.u8() % 8 {
        0 | 1 if clients.len() < MAX_CLIENTS => {
            if let Ok(mut stream) = UnixStream::connect(path) {
                let _ = stream.set_nonblocking(true);
                let line = match input.u8() % 4 {
                    0 => input.chunk(40).to_vec(),
                    1 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                    _ => format!("CONNECT {}\n", input.below(4) + 5000).into_bytes(),
                };
                let _ = stream.write_all(&line);
                clients.push(stream);
            }
        }
        2 if clients.len() < MAX_CLIENTS => {
            if let Ok((stream, _)) = host().listener.accept() {
                let _ = stream.set_nonblocking(true);
                clients.push(stream);
            }
        }
        _ if clients.is_empty() => {}
        n => {
            let at = input.below(clients.len() as u32) as usize;
            let client = &mut clients[at];
            match n {
                3 | 4 => {
                    let data = match input.u8() % 8 {
                        0 => vec![0xa5; input.below(300_000) as usize],
                        _ => input.chunk(200).to_vec(),
                    };
                    let _ = client.write(&data);
                }
                5 => {
                    let mut buf = [0u8; 4096];
                    while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
                }
                6 => {
                    let how = if input.bool() {
                        Shutdown::Write
                    } else {
                        Shutdown::Both
                    };
                    let _ = client.shutdown(how);
                }
                _ => {
                    clients.swap_remove(at);
                }
            }
        }
    }
}
