//! virtio-net through its transport over a fake tap: a datagram socket
//! pair (never the host network). The guest posts receive chains and sends
//! transmit chains built from the input; the host side injects frames of
//! input-chosen sizes (empty, shorter than a header, oversize), makes reads
//! fail, and drains what the guest sent.
//!
//! Checked: every transmit chain is used (length 0) on its kick, and every
//! datagram the device sends holds a header and an Ethernet header and fits
//! the largest frame; receive chains are used in order, each with the next
//! waiting frame (its length, or 0 when dropped), one chain per frame, as
//! many as both frames and chains last, with `num_buffers` = 1 and the
//! frame's bytes.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use sie_virtio::VirtioDevice;
use sie_virtio::net::{ETH_HLEN, MAX_FRAME_LEN, NET_HDR_LEN, Net};
use sie_virtio::testing::{Peer, pair, transport};
use vm_memory::{Bytes, GuestAddress};

use super::queues::{Queues, buffers, read_chain};
use crate::input::Input;

const RX: usize = 0;
const TX: usize = 1;
/// Datagrams injected per run at most: keeps every receive pass within the
/// device's per-wakeup budget, so "as many as both last" holds exactly.
const MAX_INJECTED: usize = 128;

/// What the host knows waits on the device's socket: frames of at least
/// a header, as (length the device reads, marker byte), front first.
/// `None` once that cannot be known (reads failed, an empty datagram (read
/// as end of file), a reset dropping a held frame, unchecked device work);
/// known again when a receive pass leaves chains unused (then nothing
/// waits).
type Waiting = Option<VecDeque<(usize, u8)>>;

/// A frame length: all the interesting sizes, oversize included.
fn frame_len(input: &mut Input) -> usize {
    match input.u8() % 12 {
        0 => 0,
        1 => input.below(NET_HDR_LEN as u32) as usize,
        2 => NET_HDR_LEN,
        3 => NET_HDR_LEN + ETH_HLEN,
        4 => NET_HDR_LEN + 1514,
        5 => NET_HDR_LEN + 9000,
        6 => MAX_FRAME_LEN,
        7 => MAX_FRAME_LEN + 1 + input.below(1000) as usize,
        8 => input.below(70_000) as usize,
        _ => NET_HDR_LEN + input.below(600) as usize,
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    // The host network: one datagram per frame, header included.
    let (
        backend,
        Peer {
            socket: peer,
            fail_reads,
            ..
        },
    ) = pair();
    let device =
        Net::new(backend, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]), None).expect("net device");
    let offered = device.features();
    let (t, mem, _irq) = transport(device);
    let mut q = Queues::start(&t, &mem, offered, 2, &mut input);

    let mut waiting: Waiting = Some(VecDeque::new());
    let mut injected = 0usize;
    // An empty datagram was sent: the device reads it as end of file and
    // stops its pass early, so leftover chains no longer mean "nothing
    // waits".
    let mut eof = false;
    let mut marker = 0u8;
    let mut sent_buf = vec![0u8; MAX_FRAME_LEN + 2000];

    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let was_live = q.live();
        // Whether the event ran a receive pass that must take what it can.
        let mut rx_pass = false;
        match input.u8() % 16 {
            0 => q.scribble(&mut input),
            1 => {
                q.reset();
                // A frame held for want of a buffer is gone with the reset.
                waiting = None;
            }
            2 => {
                q.driver.take_interrupt();
            }
            3 => {
                let which = input.below(2) as usize;
                q.set_used_event(which, input.u16());
            }
            4 => fail_reads.store(input.bool(), Ordering::Relaxed),
            5 | 6 => {
                // The host network sends frames.
                for _ in 0..input.below(4) + 1 {
                    if injected >= MAX_INJECTED {
                        break;
                    }
                    let len = frame_len(&mut input);
                    marker = marker.wrapping_add(1);
                    let mut frame = vec![marker; len];
                    let header = input.bytes(NET_HDR_LEN.min(len));
                    frame[..header.len()].copy_from_slice(header);
                    if peer.send(&frame).is_err() {
                        continue;
                    }
                    injected += 1;
                    match len {
                        0 => (waiting, eof) = (None, true),
                        1..NET_HDR_LEN => {}
                        _ => {
                            if let Some(w) = waiting.as_mut() {
                                w.push_back((len.min(MAX_FRAME_LEN), marker));
                            }
                        }
                    }
                }
                if input.bool() {
                    t.backend_event();
                    rx_pass = true;
                }
            }
            7 => {
                t.backend_event();
                rx_pass = true;
            }
            8 => {
                // The host network reads what the guest sent.
                while let Ok(n) = peer.recv(&mut sent_buf) {
                    assert!(
                        (NET_HDR_LEN + ETH_HLEN..=MAX_FRAME_LEN).contains(&n),
                        "device sent a {n}-byte frame"
                    );
                }
            }
            9..=11 => {
                // Receive buffers.
                q.begin_batch();
                let chains = (0..=input.below(4))
                    .map(|_| buffers(&mut input, &mut q.alloc, true, 4))
                    .collect();
                q.offer(RX, chains);
                if input.bool() {
                    q.driver.kick(RX as u32);
                }
                t.queue_event(RX);
                rx_pass = true;
            }
            _ => {
                // Frames to send: a header and a frame in readable buffers.
                q.begin_batch();
                let mut chains = Vec::new();
                for _ in 0..=input.below(4) {
                    let chain = buffers(&mut input, &mut q.alloc, false, 4);
                    let fill = input.u8();
                    for &(addr, len, _) in &chain {
                        let n = (len as usize).min(MAX_FRAME_LEN);
                        let _ = mem.write_slice(&vec![fill; n], GuestAddress(addr));
                    }
                    chains.push(chain);
                }
                q.offer(TX, chains);
                if input.bool() {
                    q.driver.kick(TX as u32);
                }
                t.queue_event(TX);
                let counts = q.collect(was_live, |queue, _o, len| {
                    assert!(queue == TX, "a transmit kick used a receive chain");
                    assert_eq!(len, 0, "transmit chain used with length {len}");
                });
                if counts.is_some() {
                    q.assert_drained(TX);
                } else {
                    waiting = None;
                }
                continue;
            }
        }
        // Receive chains the pass could use (collect() retires them).
        let rx_before = q.queues[RX].outstanding.len();
        let mem = &mem;
        let mut expected = waiting.clone();
        let counts = q.collect(was_live, |queue, o, len| {
            assert!(queue == RX, "transmit chain used without a kick");
            let Some(w) = expected.as_mut() else {
                return;
            };
            let (frame, mark) = w.pop_front().expect("a chain used with no frame waiting");
            assert!(
                len == 0 || len as usize == frame,
                "a {frame}-byte frame delivered as {len} bytes"
            );
            let got = read_chain(mem, &o.chain, frame.min(NET_HDR_LEN + 1));
            if len > 0 && o.clean && got.len() >= NET_HDR_LEN {
                assert_eq!(&got[10..12], &[1, 0], "num_buffers is not 1");
                if let Some(&byte) = got.get(NET_HDR_LEN) {
                    assert_eq!(byte, mark, "another frame's bytes");
                }
            }
        });
        let Some(counts) = counts else {
            waiting = None;
            continue;
        };
        let used = counts[RX];
        let reading = !fail_reads.load(Ordering::Relaxed);
        if let Some(w) = waiting.as_mut() {
            if rx_pass && reading {
                assert_eq!(
                    used,
                    w.len().min(rx_before),
                    "{} frames waiting, {rx_before} receive chains, {used} used",
                    w.len()
                );
            }
            w.drain(..used.min(w.len()));
        } else if rx_pass && reading && !eof && used < rx_before {
            // Chains left over: the device read everything there was.
            waiting = Some(VecDeque::new());
        }
    }
}
