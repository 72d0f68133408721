//! The virtio-PCI transport through BAR 0: reads and writes at any offset
//! and width (mostly the common configuration's fields, the notification
//! area, the MSI-X table and PBA, the ISR and device configuration),
//! MSI-X enable and function-mask writes in configuration space, Linux's
//! bring-up on fuzzed rings, queue events and memory writes, on an rng and
//! a block device side by side.
//!
//! Besides never panicking: a vector register reads back an existing
//! vector or NO_VECTOR, and the status byte never holds a bit the state
//! machine cannot reach.

use sie_pci::PciDevice;
use sie_virtio::block::BlockOptions;
use sie_virtio::pci::{
    BAR_SIZE, DEVICE_CONFIG_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NO_VECTOR,
    NOTIFY_OFFSET, VirtioPciDevice,
};
use sie_virtio::rng::Rng;
use sie_virtio::testing::{PciDriver, common, pci_transport};
use sie_virtio::{GuestMemory, VirtioDevice};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

use super::virtio_blk::started_block;
use crate::input::Input;
use crate::layout::{fuzzed_ring, scribble};

/// Interesting offsets in BAR 0.
const OFFSETS: [u64; 28] = [
    common::DEVICE_FEATURE_SELECT,
    common::DEVICE_FEATURE,
    common::DRIVER_FEATURE_SELECT,
    common::DRIVER_FEATURE,
    common::CONFIG_MSIX_VECTOR,
    common::NUM_QUEUES,
    common::DEVICE_STATUS,
    common::CONFIG_GENERATION,
    common::QUEUE_SELECT,
    common::QUEUE_SIZE,
    common::QUEUE_MSIX_VECTOR,
    common::QUEUE_ENABLE,
    common::QUEUE_NOTIFY_OFF,
    common::QUEUE_DESC,
    common::QUEUE_DESC + 4,
    common::QUEUE_DRIVER,
    common::QUEUE_DRIVER + 4,
    common::QUEUE_DEVICE,
    common::QUEUE_DEVICE + 4,
    ISR_OFFSET,
    DEVICE_CONFIG_OFFSET,
    NOTIFY_OFFSET,
    NOTIFY_OFFSET + 4,
    NOTIFY_OFFSET + 8,
    MSIX_TABLE_OFFSET,
    MSIX_TABLE_OFFSET + 12,
    MSIX_TABLE_OFFSET + 28,
    MSIX_PBA_OFFSET,
];

/// Status values a driver (good or bad) writes.
const STATUSES: [u64; 8] = [0, 1, 3, 0xb, 0xf, 0x80, 0x40, 0x8b];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let (rng, rng_mem, _) = pci_transport(Rng::new());
    let (blk, blk_mem, _) = pci_transport(started_block(8 * 512, "fuzz", BlockOptions::default()));
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let op = input.u8();
        if op & 1 == 0 {
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

fn width(input: &mut Input) -> usize {
    match input.u8() % 8 {
        0 => 1,
        1 => 8,
        2 | 3 => 2,
        _ => 4,
    }
}

fn step<D: VirtioDevice>(t: &VirtioPciDevice<D>, mem: &GuestMemory, op: u8, input: &mut Input) {
    let d = PciDriver::new(t);
    match op % 8 {
        0 | 1 => {
            let at = if input.u8() < 0xe0 {
                input.pick(&OFFSETS)
            } else {
                u64::from(input.u32()) % (BAR_SIZE + 0x100)
            };
            let mut buf = [0u8; 8];
            let w = width(input);
            t.read_bar(input.pick(&[0u8, 0, 0, 1, 6]), at, &mut buf[..w]);
        }
        2 | 3 => {
            let at = if input.u8() < 0xe0 {
                input.pick(&OFFSETS)
            } else {
                u64::from(input.u32()) % (BAR_SIZE + 0x100)
            };
            let w = width(input);
            let value = if at == common::DEVICE_STATUS && input.bool() {
                input.pick(&STATUSES)
            } else {
                input.u64()
            };
            t.write_bar(0, at, &value.to_le_bytes()[..w]);
        }
        4 => {
            // MSI-X message control, or anywhere in configuration space.
            let msix = d.capabilities(sie_pci::MSIX_CAPABILITY_ID)[0];
            let at = if input.bool() {
                msix + 2
            } else {
                input.u16() % 4100
            };
            let w = width(input).min(4);
            t.write_config(at, &input.u32().to_le_bytes()[..w]);
        }
        5 => scribble(mem, input),
        6 => {
            let ring = fuzzed_ring(input);
            let features = input.u64() | 1 << VIRTIO_F_VERSION_1;
            d.try_start(features, &[ring]);
        }
        _ => match input.u8() % 3 {
            0 => t.config_changed(),
            1 => t.queue_event(input.below(3) as usize),
            _ => t.process_queue(input.below(3) as usize),
        },
    }
    check(&d);
}

/// What a driver may always rely on.
fn check<D: VirtioDevice>(d: &PciDriver<'_, D>) {
    let vectors = d.read_bar(common::NUM_QUEUES, 2) + 1;
    let ok = |v: u64| v == u64::from(NO_VECTOR) || v < vectors;
    assert!(ok(d.read_bar(common::CONFIG_MSIX_VECTOR, 2)));
    assert!(ok(d.read_bar(common::QUEUE_MSIX_VECTOR, 2)));
    // ACKNOWLEDGE..DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED: no bit 4 or 5.
    assert_eq!(d.status() & 0x30, 0);
}
