//! virtio-vsock through its transport, its host side on Unix sockets in a
//! temporary directory of this process (created once, reused by every
//! run). The guest posts rx and event chains and sends packets whose
//! headers (op, ports, CIDs, type, length, credit) come from the input,
//! often answering the last packet it received so connections get
//! established; host clients connect, send `CONNECT <port>\n` lines (or
//! garbage), data, half-closes and hang-ups; a guest connecting to port
//! [`GUEST_PORT`] reaches a host listener the run accepts from.
//!
//! Checked: every tx chain is used, with length 0, on its kick; the event
//! queue is never used; rx chains are used in order, each either empty or
//! holding a well-formed packet: from the host CID to the guest's, a
//! stream-type known op, `len` matching the used length.

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sie_virtio::VirtioDevice;
use sie_virtio::testing::transport;
use sie_virtio::vsock::{EPHEMERAL_BASE, HOST_CID, MAX_PAYLOAD, Vsock};
use vm_memory::{Bytes, GuestAddress};

use super::queues::{Queues, buffers, read_chain};
use crate::input::Input;

const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
const HEADER_LEN: usize = 44;
/// The host port with a listener (`<uds_path>_1024`) for guest connects.
pub(crate) const GUEST_PORT: u32 = 1024;
/// Most host clients alive at once.
const MAX_CLIENTS: usize = 8;

/// This process's socket directory and the listener for guest connects.
pub(crate) struct Host {
    pub(crate) uds_path: PathBuf,
    pub(crate) listener: UnixListener,
}

/// `<temp dir>/<prefix><pid>`: the directory of a fuzzing process.
const DIR_PREFIX: &str = "sie-fuzz-vsock-";

/// Removes the socket directories of fuzzing processes that are gone.
fn remove_dead(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let tmp = std::env::temp_dir();
        remove_dead(&tmp);
        let dir = tmp.join(format!("{DIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("vsock socket directory");
        let uds_path = dir.join("v.sock");
        let mut port_path = uds_path.clone().into_os_string();
        port_path.push(format!("_{GUEST_PORT}"));
        let listener = UnixListener::bind(&port_path).expect("guest-connect listener");
        listener.set_nonblocking(true).expect("nonblocking");
        Host { uds_path, listener }
    })
}

/// A 44-byte packet header, little-endian, as the guest writes it.
#[allow(clippy::too_many_arguments)]
fn header(
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    kind: u16,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
) -> [u8; HEADER_LEN] {
    let mut raw = [0u8; HEADER_LEN];
    raw[0..8].copy_from_slice(&src_cid.to_le_bytes());
    raw[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    raw[16..20].copy_from_slice(&src_port.to_le_bytes());
    raw[20..24].copy_from_slice(&dst_port.to_le_bytes());
    raw[24..28].copy_from_slice(&len.to_le_bytes());
    raw[28..30].copy_from_slice(&kind.to_le_bytes());
    raw[30..32].copy_from_slice(&op.to_le_bytes());
    raw[32..36].copy_from_slice(&flags.to_le_bytes());
    raw[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    raw[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    raw
}

fn le_u32(raw: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(raw[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(raw: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"))
}

fn port(input: &mut Input, heard: Option<u32>) -> u32 {
    match input.u8() % 8 {
        0 | 1 => heard.unwrap_or(GUEST_PORT),
        2 => GUEST_PORT,
        3 => EPHEMERAL_BASE + input.below(4),
        4 => input.below(8) + 5000,
        5 => u32::MAX,
        _ => input.u32(),
    }
}

/// A tx packet: a header from the input (mostly answering the last
/// packet heard: `heard` = (host port, guest port)), a payload, spread
/// over up to three readable buffers, sometimes with a short or lying
/// length.
fn packet(input: &mut Input, guest_cid: u64, heard: Option<(u32, u32)>) -> Vec<u8> {
    let src_cid = match input.u8() % 8 {
        0 => HOST_CID,
        1 => input.u64(),
        _ => guest_cid,
    };
    let dst_cid = match input.u8() % 8 {
        0 => guest_cid,
        1 => input.u64(),
        _ => HOST_CID,
    };
    let src_port = port(input, heard.map(|h| h.1));
    let dst_port = port(input, heard.map(|h| h.0));
    let op = match input.u8() % 16 {
        0 => 0,
        n @ 1..=7 => u16::from(n),
        8 => input.u16(),
        _ => 5, // RW
    };
    let kind = if input.u8() == 0xff { input.u16() } else { 1 };
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
    let payload = match input.u8() % 8 {
        0 => vec![0x5a; MAX_PAYLOAD],
        1 => vec![0x5a; input.below(70_000) as usize],
        _ => input.chunk(64).to_vec(),
    };
    let len = match input.u8() % 8 {
        0 => input.u32(),
        1 => (payload.len() as u32).wrapping_add(1),
        _ => payload.len() as u32,
    };
    let mut bytes = header(
        src_cid, dst_cid, src_port, dst_port, len, kind, op, flags, buf_alloc, fwd_cnt,
    )
    .to_vec();
    bytes.extend_from_slice(&payload);
    bytes
}

/// Host-side clients: what the input makes them do.
fn client_action(input: &mut Input, clients: &mut Vec<UnixStream>, path: &Path) {
    match input.u8() % 8 {
        0 | 1 if clients.len() < MAX_CLIENTS => {
            if let Ok(stream) = UnixStream::connect(path) {
                let _ = stream.set_nonblocking(true);
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
                3 => {
                    let line = match input.u8() % 4 {
                        0 => format!("CONNECT {}\n", input.u32()),
                        1 => input.chunk(40).iter().map(|&b| b as char).collect(),
                        _ => format!("CONNECT {}\n", input.below(4) + 5000),
                    };
                    let _ = client.write_all(line.as_bytes());
                }
                4 => {
                    let data = match input.u8() % 4 {
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

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let host = host();
    let guest_cid = match input.u8() % 4 {
        0 => u64::from(u32::MAX),
        _ => 3,
    };
    let device = Vsock::new(guest_cid, &host.uds_path).expect("vsock device");
    let offered = device.features();
    let (t, mem, _irq) = transport(device);
    let mut q = Queues::start(&t, &mem, offered, 3, &mut input);
    let mut clients: Vec<UnixStream> = Vec::new();
    // (host port, guest port) of the last packet the guest received.
    let mut heard: Option<(u32, u32)> = None;

    for _ in 0..96 {
        if input.is_empty() {
            break;
        }
        let was_live = q.live();
        let mut tx_kick = false;
        match input.u8() % 16 {
            0 => q.scribble(&mut input),
            1 => q.reset(),
            2 => {
                q.driver.take_interrupt();
            }
            3 => {
                let which = input.below(3) as usize;
                q.set_used_event(which, input.u16());
            }
            4..=6 => {
                client_action(&mut input, &mut clients, &host.uds_path);
                if input.bool() {
                    t.backend_event();
                }
            }
            7 => t.backend_event(),
            8..=10 => {
                // rx (mostly) or event buffers.
                let queue = if input.u8().is_multiple_of(8) {
                    EVENT
                } else {
                    RX
                };
                q.begin_batch();
                let chains = (0..=input.below(4))
                    .map(|_| {
                        if input.bool() {
                            vec![(q.alloc.take(HEADER_LEN as u32 + 4096), 4096 + 44, true)]
                        } else {
                            buffers(&mut input, &mut q.alloc, true, 3)
                        }
                    })
                    .collect();
                q.offer(queue, chains);
                if input.bool() {
                    q.driver.kick(queue as u32);
                }
                t.queue_event(queue);
            }
            _ => {
                // Packets from the guest.
                q.begin_batch();
                let mut chains = Vec::new();
                for _ in 0..=input.below(3) {
                    let bytes = packet(&mut input, guest_cid, heard);
                    let mut chain = Vec::new();
                    let mut rest = &bytes[..];
                    let parts = input.below(3) + 1;
                    for i in 0..parts {
                        let n = if i + 1 == parts {
                            rest.len()
                        } else {
                            (input.below(HEADER_LEN as u32 + 8) as usize).min(rest.len())
                        };
                        let (part, tail) = rest.split_at(n);
                        let at = q.alloc.take(n as u32);
                        let _ = mem.write_slice(part, GuestAddress(at));
                        chain.push((at, n as u32, input.u8() == 0xff));
                        rest = tail;
                    }
                    chains.push(chain);
                }
                q.offer(TX, chains);
                if input.bool() {
                    q.driver.kick(TX as u32);
                }
                t.queue_event(TX);
                tx_kick = true;
            }
        }
        let mem = &mem;
        let counts = q.collect(was_live, |queue, o, len| match queue {
            TX => assert_eq!(len, 0, "tx chain used with length {len}"),
            EVENT => panic!("the event queue was used"),
            _ => {
                let len = len as usize;
                assert!(
                    len == 0 || len >= HEADER_LEN,
                    "rx chain used with {len} bytes, less than a header"
                );
                if len == 0 || !o.clean {
                    return;
                }
                let raw = read_chain(mem, &o.chain, HEADER_LEN);
                if raw.len() < HEADER_LEN {
                    return;
                }
                assert_eq!(le_u64(&raw, 0), HOST_CID, "rx packet not from the host");
                assert_eq!(le_u64(&raw, 8), guest_cid, "rx packet not to the guest");
                let payload = le_u32(&raw, 24) as usize;
                assert_eq!(HEADER_LEN + payload, len, "rx len and used length differ");
                let kind = u16::from_le_bytes([raw[28], raw[29]]);
                let op = u16::from_le_bytes([raw[30], raw[31]]);
                assert!(kind == 1 && (1..=7).contains(&op), "rx type {kind} op {op}");
                heard = Some((le_u32(&raw, 16), le_u32(&raw, 20)));
            }
        });
        if tx_kick && counts.is_some() {
            q.assert_drained(TX);
        }
    }
    // Guest connects nobody accepted would pile up in the shared
    // listener's backlog run after run.
    while host.listener.accept().is_ok() {}
}
