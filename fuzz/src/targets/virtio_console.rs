//! virtio-console through its transport: the guest posts receive chains
//! and sends transmit chains built from the input; the host types input
//! of any size (past the device's 64 KiB buffer too) and wakes the device;
//! ring scribbles and resets in between.
//!
//! Checked: every transmit chain is used (length 0) on its kick, and the
//! output sink got exactly the bytes of the chains that are all readable,
//! inside RAM and within the per-chain cap, in order; receive chains are
//! used in order, each with at most its room, and together they carry the
//! typed bytes in the order typed (what the device buffers always matches
//! what was typed and not yet delivered); a live device with input waiting
//! leaves no receive chain unused after a pass.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use sie_virtio::VirtioDevice;
use sie_virtio::console::{Console, MAX_TX_CHAIN_BYTES};
use sie_virtio::testing::{MEM_SIZE, transport};
use vm_memory::{Bytes, GuestAddress};

use super::queues::{Queues, buffers, read_chain};
use super::scenario::Chain;
use crate::input::Input;

const RX: usize = 0;
const TX: usize = 1;

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("sink").extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether the device prints `chain`: every buffer readable, non-empty and
/// in RAM, and no more than the cap in all.
fn printable(chain: &Chain) -> bool {
    let total: u64 = chain.iter().map(|&(_, len, _)| u64::from(len)).sum();
    !chain.is_empty()
        && total <= MAX_TX_CHAIN_BYTES
        && chain
            .iter()
            .all(|&(addr, len, w)| !w && len > 0 && addr + u64::from(len) <= MEM_SIZE)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let sink = Sink::default();
    let device = Console::new(Box::new(sink.clone()), None).expect("console device");
    let host = device.input();
    let offered = device.features();
    let (t, mem, _irq) = transport(device);
    let mut q = Queues::start(&t, &mem, offered, 2, &mut input);
    // Typed and not yet delivered, while that is known.
    let mut typed: Option<VecDeque<u8>> = Some(VecDeque::new());
    let mut key = 0u8;

    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let was_live = q.live();
        let mut rx_pass = false;
        match input.u8() % 12 {
            0 => q.scribble(&mut input),
            // The host's buffered input survives a reset.
            1 => q.reset(),
            2 => {
                q.driver.take_interrupt();
            }
            3 => {
                let which = input.below(2) as usize;
                q.set_used_event(which, input.u16());
            }
            4 | 5 => {
                // The host types: a few bytes, or a flood.
                let len = if input.bool() {
                    input.below(64) as usize
                } else {
                    input.below(70_000) as usize
                };
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        key = key.wrapping_add(1);
                        key
                    })
                    .collect();
                let taken = host.enqueue(&bytes);
                assert!(taken <= bytes.len());
                if let Some(w) = typed.as_mut() {
                    w.extend(&bytes[..taken]);
                }
                if input.bool() {
                    t.backend_event();
                    rx_pass = true;
                }
            }
            6 => {
                t.backend_event();
                rx_pass = true;
            }
            7..=8 => {
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
                q.begin_batch();
                let mut chains = Vec::new();
                for _ in 0..=input.below(4) {
                    let chain = buffers(&mut input, &mut q.alloc, false, 4);
                    let fill = input.u8();
                    for &(addr, len, _) in &chain {
                        let n = (len as usize).min(4096);
                        let _ = mem.write_slice(&vec![fill; n], GuestAddress(addr));
                    }
                    chains.push(chain);
                }
                let expected: Vec<u8> = chains
                    .iter()
                    .filter(|c| printable(c))
                    .flat_map(|c| {
                        let total = c.iter().map(|&(_, len, _)| len as usize).sum();
                        read_chain(&mem, c, total)
                    })
                    .collect();
                let before = sink.0.lock().expect("sink").len();
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
                    let printed = sink.0.lock().expect("sink")[before..].to_vec();
                    assert!(
                        printed == expected,
                        "printed other bytes than the chains held"
                    );
                } else {
                    typed = None;
                }
                continue;
            }
        }
        let mem = &mem;
        let mut expected = typed.clone();
        let counts = q.collect(was_live, |queue, o, len| {
            assert!(queue == RX, "transmit chain used without a kick");
            let Some(w) = expected.as_mut() else {
                return;
            };
            assert!(len as usize <= w.len(), "delivered more than was typed");
            let want: Vec<u8> = w.drain(..len as usize).collect();
            if o.clean {
                assert_eq!(read_chain(mem, &o.chain, want.len()), want, "other bytes");
            }
        });
        if counts.is_none() {
            typed = None;
        } else {
            typed = expected;
            if rx_pass && host.buffered() > 0 {
                assert!(
                    q.queues[RX].outstanding.is_empty(),
                    "input waits beside unused receive chains"
                );
            }
        }
        match typed.as_ref() {
            Some(w) => assert_eq!(w.len(), host.buffered(), "buffered input lost or grown"),
            // Everything typed was delivered: known again.
            None if host.buffered() == 0 => typed = Some(VecDeque::new()),
            None => {}
        }
    }
}
