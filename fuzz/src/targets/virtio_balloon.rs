//! virtio-balloon through its transport, every feature offered: chains of
//! page numbers, stats buffers, hints and reports of any shape on any
//! queue, stats ticks, hinting runs, targets and config writes, in any
//! order. The device never asks to drop memory outside guest RAM, and a
//! guest that only sends chains (never scribbles on its rings) never
//! makes it need a reset.

use std::sync::{Arc, Mutex};

use sie_virtio::balloon::{Balloon, BalloonOptions, PageDiscard};
use sie_virtio::testing::{Driver, MEM_SIZE, Ring, transport};
use sie_virtio::{GuestMemory, VirtioDevice};
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_CONFIG;
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;
use crate::layout::{DATA, RING_BASE};

/// Checks each range against guest RAM instead of dropping it.
struct Checked(Arc<Mutex<u64>>);

impl PageDiscard for Checked {
    fn discard(&self, _mem: &GuestMemory, addr: GuestAddress, len: u64) -> std::io::Result<u64> {
        let end = addr.0.checked_add(len).expect("a range that wraps");
        assert!(end <= MEM_SIZE, "asked to drop {addr:?}+{len:#x}, past RAM");
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += len;
        Ok(len)
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let options = BalloonOptions {
        target_pages: input.u16().into(),
        deflate_on_oom: true,
        stats_interval_s: 1,
        free_page_reporting: true,
        free_page_hinting: true,
    };
    let dropped = Arc::new(Mutex::new(0));
    let Ok(device) = Balloon::new(options, Box::new(Checked(dropped))) else {
        return;
    };
    let offered = device.features();
    let (t, mem, _irq) = transport(device);
    let d = Driver::new(&t);
    let rings: Vec<Ring> = (0..5)
        .map(|i| Ring::new(RING_BASE + 0x1000 * i, 16))
        .collect();
    // The driver may decline any optional feature: queue numbers follow.
    let features = offered & (input.u64() | 1 << 32);
    d.try_start(features, &rings);
    let mut scribbled = false;
    let mut next = [0u16; 5];
    while !input.is_empty() {
        match input.below(8) {
            0..=3 => {
                let q = input.below(5) as usize;
                let ring = rings[q];
                let mut buffers = Vec::new();
                for _ in 0..input.below(3) + 1 {
                    let addr = DATA + u64::from(input.below(0x7_0000));
                    let len = input.below(0x1_0000) + 1;
                    buffers.push((addr, len, input.bool()));
                }
                let head = next[q] % ring.size;
                next[q] = next[q].wrapping_add(buffers.len() as u16);
                ring.set_chain(&mem, head, &buffers);
                ring.publish(&mem, &[head]);
                d.notify(q as u32);
            }
            4 => {
                let at = DATA + u64::from(input.below(0x7_0000));
                let _ = mem.write_slice(input.chunk(64), GuestAddress(at));
            }
            5 => t.timer_event(0),
            6 => {
                match input.below(4) {
                    0 => {
                        let ack = input.bool();
                        let _ = t.with_device(|b| b.start_hinting(ack));
                    }
                    1 => {
                        let _ = t.with_device(|b| b.stop_hinting());
                    }
                    2 => {
                        let pages = input.u32();
                        t.with_device(|b| b.set_target_pages(pages));
                    }
                    _ => {
                        let seconds = input.u16();
                        let _ = t.with_device(|b| b.set_stats_interval(seconds));
                    }
                }
                t.config_changed();
            }
            _ => {
                if input.bool() {
                    let at = VIRTIO_MMIO_CONFIG + input.below(20);
                    d.write(at, input.u32());
                } else {
                    let q = input.below(5) as usize;
                    let _ = mem.write_slice(input.chunk(16), GuestAddress(rings[q].avail));
                    scribbled = true;
                }
            }
        }
        if !scribbled {
            assert_eq!(
                t.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
                0,
                "a guest that only sent chains made the balloon need a reset"
            );
        }
    }
}
