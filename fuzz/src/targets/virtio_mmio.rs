//! The virtio-MMIO transport: any sequence of register reads and writes
//! (any offset in the window, widths 1/2/4/8, mostly-meaningful values),
//! queue notifications and guest memory writes, on an rng and a block
//! transport side by side.

use sie_devices::BusDevice;
use sie_virtio::block::BlockOptions;
use sie_virtio::rng::Rng;
use sie_virtio::testing::{Driver, transport};
use sie_virtio::{GuestMemory, MMIO_WINDOW_LEN, VirtioDevice, VirtioMmioTransport};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::*;

use super::virtio_blk::{memfd, started_block};
use crate::input::Input;
use crate::layout::{fuzzed_ring, scribble};

/// Every register of the window, and the start of configuration space.
const REGISTERS: [u32; 28] = [
    VIRTIO_MMIO_MAGIC_VALUE,
    VIRTIO_MMIO_VERSION,
    VIRTIO_MMIO_DEVICE_ID,
    VIRTIO_MMIO_VENDOR_ID,
    VIRTIO_MMIO_DEVICE_FEATURES,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL,
    VIRTIO_MMIO_DRIVER_FEATURES,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL,
    VIRTIO_MMIO_QUEUE_SEL,
    VIRTIO_MMIO_QUEUE_NUM_MAX,
    VIRTIO_MMIO_QUEUE_NUM,
    VIRTIO_MMIO_QUEUE_READY,
    VIRTIO_MMIO_QUEUE_NOTIFY,
    VIRTIO_MMIO_INTERRUPT_STATUS,
    VIRTIO_MMIO_INTERRUPT_ACK,
    VIRTIO_MMIO_STATUS,
    VIRTIO_MMIO_QUEUE_DESC_LOW,
    VIRTIO_MMIO_QUEUE_DESC_HIGH,
    VIRTIO_MMIO_QUEUE_AVAIL_LOW,
    VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
    VIRTIO_MMIO_QUEUE_USED_LOW,
    VIRTIO_MMIO_QUEUE_USED_HIGH,
    VIRTIO_MMIO_CONFIG_GENERATION,
    VIRTIO_MMIO_CONFIG,
    VIRTIO_MMIO_CONFIG + 4,
    VIRTIO_MMIO_CONFIG + 8,
    VIRTIO_MMIO_CONFIG + 20,
    0x0fc,
];

/// Status values a driver (good or bad) writes.
const STATUSES: [u32; 8] = [0, 1, 3, 0xb, 0xf, 0x80, 0x40, 0x8b];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (rng, rng_mem, _) = transport(Rng::new());
    let options = BlockOptions {
        read_only: input.bool(),
        ..BlockOptions::default()
    };
    let (blk, blk_mem, _) = transport(started_block(8 * 512, "fuzz", options));
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        if op == 0xff {
            // The API swaps the disk (PATCH /drives): any size, even a
            // partial sector or nothing, under a driver in any state.
            let len = u64::from(input.below(16)) * 512 + u64::from(input.pick(&[0u8, 1, 100]));
            let _ = blk.swap_backing_file(memfd(len));
        } else if op & 1 == 0 {
            step(&rng, &rng_mem, op >> 1, &mut input);
        } else {
            step(&blk, &blk_mem, op >> 1, &mut input);
        }
    }
    for q in 0..2 {
        rng.queue_event(q);
        blk.queue_event(q);
    }
}

fn step<D: VirtioDevice>(t: &VirtioMmioTransport<D>, mem: &GuestMemory, op: u8, input: &mut Input) {
    let offset = |input: &mut Input| -> u64 {
        if input.u8() < 0xe0 {
            u64::from(input.pick(&REGISTERS))
        } else {
            u64::from(input.u16()) % MMIO_WINDOW_LEN
        }
    };
    let width = |input: &mut Input| -> usize {
        match input.u8() % 8 {
            0 => 1,
            1 => 2,
            2 => 8,
            _ => 4,
        }
    };
    match op % 8 {
        0 | 1 => {
            let at = offset(input);
            let mut buf = [0u8; 8];
            let w = width(input);
            t.read(at, &mut buf[..w]);
        }
        2 | 3 => {
            let at = offset(input);
            let w = width(input);
            let value = if at == u64::from(VIRTIO_MMIO_STATUS) && input.bool() {
                u64::from(input.pick(&STATUSES))
            } else {
                input.u64()
            };
            t.write(at, &value.to_le_bytes()[..w]);
        }
        4 => t.queue_event(input.below(3) as usize),
        5 => scribble(mem, input),
        6 => {
            // A well-behaved bring-up on input-sized rings, so the rest of
            // the sequence often starts from a live device.
            let ring = fuzzed_ring(input);
            let features = input.u64() | 1 << VIRTIO_F_VERSION_1;
            Driver::new(t).try_start(features, &[ring]);
        }
        _ => match input.u8() % 3 {
            0 => t.config_changed(),
            1 => t.backend_event(),
            _ => t.process_queue(input.below(3) as usize),
        },
    }
}
