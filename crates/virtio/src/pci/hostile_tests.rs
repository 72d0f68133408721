//! A hostile driver on virtio-PCI: every register at every width and
//! offset, selectors out of range, bad queue sizes and rings, vectors that
//! do not exist, status writes out of order, notifications to absent
//! queues, the PCI configuration access window aimed anywhere. Each is
//! refused or counted; nothing panics.

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_VERSION_1,
};

use super::*;
use crate::rng::{RNG_QUEUE_SIZE, Rng};
use crate::testing::{MEM_SIZE, PciDriver, Ring, common, pci_transport};

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;

#[test]
fn every_offset_and_width_of_bar0_is_served_or_counted() {
    let (t, _mem, msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.start(&[Ring::new(0x1000, 16)]);
    msi.take_calls();
    let before = t.counters().invalid_accesses;
    for width in [1usize, 2, 4, 8] {
        for offset in (0..BAR_SIZE + 16).step_by(1) {
            // Skip the ones that change the driver's set-up; they have
            // their own tests.
            let writable =
                offset >= COMMON_LEN && !(MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&offset);
            let mut data = vec![0u8; width];
            t.read_bar(0, offset, &mut data);
            if writable && !(NOTIFY_OFFSET..NOTIFY_OFFSET + 4).contains(&offset) {
                t.write_bar(0, offset, &vec![0xff; width]);
            }
        }
    }
    assert!(t.counters().invalid_accesses > before);
    assert_eq!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    // Other BARs do not exist.
    let mut data = [0u8; 4];
    t.read_bar(2, 0, &mut data);
    t.write_bar(5, 0, &data);
    assert_eq!(data, [0; 4]);
}

#[test]
fn common_fields_accept_only_their_own_width() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    let before = t.counters().invalid_accesses;
    // A word read of device_status (a byte) and a dword of queue_select.
    assert_eq!(d.read_bar(common::DEVICE_STATUS, 2), 0);
    d.write_bar(common::QUEUE_SELECT, 4, 0x0001_0000);
    // A byte inside a field.
    d.write_bar(common::DEVICE_FEATURE_SELECT + 1, 1, 1);
    // Read-only fields.
    d.write_bar(common::NUM_QUEUES, 2, 9);
    d.write_bar(common::DEVICE_FEATURE, 4, 0);
    d.write_bar(common::CONFIG_GENERATION, 1, 9);
    d.write_bar(common::QUEUE_NOTIFY_OFF, 2, 9);
    assert_eq!(t.counters().invalid_accesses - before, 7);
    assert_eq!(d.read_bar(common::NUM_QUEUES, 2), 1);
    assert_eq!(d.read_bar(common::DEVICE_FEATURE_SELECT, 4), 0);
    // 64-bit queue addresses take a qword too.
    d.write_bar(common::QUEUE_DESC, 8, 0x1_0000_2000);
    assert_eq!(d.read_bar(common::QUEUE_DESC, 8), 0x1_0000_2000);
    assert_eq!(d.read_bar(common::QUEUE_DESC + 4, 4), 1);
}

#[test]
fn queue_select_out_of_range_reads_nothing_and_writes_nothing() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    for queue in [1u64, 2, 0x7fff, 0xffff] {
        d.write_bar(common::QUEUE_SELECT, 2, queue);
        assert_eq!(
            d.read_bar(common::QUEUE_SIZE, 2),
            0,
            "queue {queue} is not available"
        );
        assert_eq!(
            d.read_bar(common::QUEUE_MSIX_VECTOR, 2),
            u64::from(NO_VECTOR)
        );
        assert_eq!(d.read_bar(common::QUEUE_ENABLE, 2), 0);
        assert_eq!(d.read_bar(common::QUEUE_DESC, 4), 0);
        let before = t.counters().invalid_accesses;
        d.write_bar(common::QUEUE_SIZE, 2, 8);
        d.write_bar(common::QUEUE_MSIX_VECTOR, 2, 0);
        d.write_bar(common::QUEUE_ENABLE, 2, 1);
        d.write_bar(common::QUEUE_DESC, 4, 0x1000);
        assert_eq!(t.counters().invalid_accesses - before, 4);
    }
}

#[test]
fn queue_sizes_must_be_powers_of_two_within_the_maximum() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.write_bar(common::QUEUE_SELECT, 2, 0);
    assert_eq!(d.read_bar(common::QUEUE_SIZE, 2), u64::from(RNG_QUEUE_SIZE));
    for bad in [0u64, 3, 100, u64::from(RNG_QUEUE_SIZE) * 2, 0xffff] {
        d.write_bar(common::QUEUE_SIZE, 2, bad);
        assert_eq!(
            d.read_bar(common::QUEUE_SIZE, 2),
            u64::from(RNG_QUEUE_SIZE),
            "{bad}"
        );
    }
    d.write_bar(common::QUEUE_SIZE, 2, 8);
    assert_eq!(d.read_bar(common::QUEUE_SIZE, 2), 8);
    // Misaligned rings are refused too.
    d.write_bar(common::QUEUE_DESC, 4, 0x1001);
    assert_eq!(d.read_bar(common::QUEUE_DESC, 4), 0);
}

#[test]
fn rings_outside_guest_memory_make_driver_ok_need_a_reset() {
    let (t, _mem, msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.start(&[Ring::new(MEM_SIZE - 0x100, 16)]);
    assert_eq!(
        d.status() & VIRTIO_CONFIG_S_NEEDS_RESET,
        VIRTIO_CONFIG_S_NEEDS_RESET
    );
    // The configuration vector (1) tells the driver.
    assert_eq!(msi.triggers(1), 1);
    // And a reset brings the device back.
    d.write_bar(common::DEVICE_STATUS, 1, 0);
    assert_eq!(d.status(), 0);
}

#[test]
fn vectors_that_do_not_exist_read_back_no_vector() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    for (vector, expected) in [
        (0u64, 0u64),
        (1, 1),
        (2, 0xffff),
        (0x7ff, 0xffff),
        (0xfffe, 0xffff),
        (0xffff, 0xffff),
    ] {
        d.write_bar(common::CONFIG_MSIX_VECTOR, 2, vector);
        assert_eq!(d.read_bar(common::CONFIG_MSIX_VECTOR, 2), expected);
        d.write_bar(common::QUEUE_SELECT, 2, 0);
        d.write_bar(common::QUEUE_MSIX_VECTOR, 2, vector);
        assert_eq!(d.read_bar(common::QUEUE_MSIX_VECTOR, 2), expected);
    }
}

#[test]
fn status_writes_out_of_order_are_refused() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.write_bar(common::DEVICE_STATUS, 1, u64::from(DRIVER));
    d.write_bar(
        common::DEVICE_STATUS,
        1,
        u64::from(ACK | DRIVER | FEATURES_OK),
    );
    assert_eq!(d.status(), 0);
    d.add_status(ACK);
    d.add_status(DRIVER);
    d.add_status(DRIVER_OK);
    assert_eq!(d.status(), ACK | DRIVER);
    // FEATURES_OK without VERSION_1 is refused.
    d.write_bar(common::DRIVER_FEATURE_SELECT, 4, 1);
    d.write_bar(common::DRIVER_FEATURE, 4, 0);
    d.add_status(FEATURES_OK);
    assert_eq!(d.status(), ACK | DRIVER);
    // Features the device never offered are refused too.
    d.write_bar(
        common::DRIVER_FEATURE,
        4,
        u64::from(1u32 << (VIRTIO_F_VERSION_1 - 32)) | 1 << 20,
    );
    d.add_status(FEATURES_OK);
    assert_eq!(d.status(), ACK | DRIVER);
    // The driver cannot set NEEDS_RESET itself.
    d.write_bar(
        common::DEVICE_STATUS,
        1,
        u64::from(ACK | DRIVER | VIRTIO_CONFIG_S_NEEDS_RESET),
    );
    assert_eq!(d.status(), ACK | DRIVER);
    assert_eq!(t.counters().invalid_status, 5);
    // Feature writes outside DRIVER..FEATURES_OK are refused.
    d.write_bar(common::DEVICE_STATUS, 1, 0);
    let before = t.counters().invalid_accesses;
    d.write_bar(common::DRIVER_FEATURE, 4, 1);
    assert_eq!(t.counters().invalid_accesses - before, 1);
}

#[test]
fn queue_set_up_is_frozen_once_live() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.start(&[Ring::new(0x1000, 16)]);
    let before = t.counters().invalid_accesses;
    d.write_bar(common::QUEUE_SELECT, 2, 0);
    d.write_bar(common::QUEUE_SIZE, 2, 8);
    d.write_bar(common::QUEUE_DESC, 4, 0x8000);
    d.write_bar(common::QUEUE_ENABLE, 2, 0);
    assert_eq!(t.counters().invalid_accesses - before, 3);
    assert_eq!(d.read_bar(common::QUEUE_SIZE, 2), 16);
    assert_eq!(d.read_bar(common::QUEUE_ENABLE, 2), 1);
}

#[test]
fn notifications_to_absent_queues_are_counted_and_ignored() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    let before = t.counters().invalid_accesses;
    for queue in [1u16, 2, 100, 1023] {
        d.kick(queue);
    }
    assert_eq!(t.counters().invalid_accesses - before, 4);
    // The real queue's eventfd is signalled by a kick of any width.
    d.write_bar(NOTIFY_OFFSET, 1, 0);
    assert_eq!(t.queue_events()[0].read().expect("signalled"), 1);
    // Notify reads are not a thing.
    assert_eq!(d.read_bar(NOTIFY_OFFSET, 2), 0);
    assert_eq!(t.counters().invalid_accesses - before, 5);
}

#[test]
fn msix_table_writes_with_bad_sizes_or_entries_are_ignored() {
    let (t, _mem, msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    d.enable_msix();
    msi.take_calls();
    // Entry 2 does not exist (two vectors); byte and word writes are not allowed.
    d.write_bar(MSIX_TABLE_OFFSET + 32, 4, 0xfee0_0000);
    d.write_bar(MSIX_TABLE_OFFSET + 1, 1, 0xff);
    d.write_bar(MSIX_TABLE_OFFSET + 2, 2, 0xffff);
    d.write_bar(MSIX_PBA_OFFSET, 8, u64::MAX);
    assert_eq!(t.msix_rejected_accesses(), 4);
    assert_eq!(d.read_bar(MSIX_PBA_OFFSET, 8), 0);
    // An address and data no platform would accept still only reach the
    // VMM's routing (which judges them), once unmasked.
    d.write_bar(MSIX_TABLE_OFFSET, 8, 0xdead_beef_0000_0003);
    d.write_bar(MSIX_TABLE_OFFSET + 8, 4, 0xffff_ffff);
    assert!(msi.take_calls().is_empty(), "still masked");
    d.write_bar(MSIX_TABLE_OFFSET + 12, 4, 0);
    assert_eq!(
        msi.take_calls(),
        vec![sie_pci::testing::MsiCall::Configure(
            0,
            Some(sie_pci::MsiMessage {
                address: 0xdead_beef_0000_0000,
                data: 0xffff_ffff
            })
        )]
    );
}

#[test]
fn interrupts_without_msix_set_the_isr_and_go_nowhere() {
    let (t, mem, msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start(&[ring]);
    let msix = d.capabilities(sie_pci::MSIX_CAPABILITY_ID)[0];
    d.write_config(msix + 2, 2, 0);
    msi.take_calls();
    ring.set_chain(&mem, 0, &[(crate::testing::DATA, 8, true)]);
    ring.publish(&mem, &[0]);
    d.notify(0);
    assert_eq!(ring.used(&mem, 0), (0, 8));
    assert_eq!(msi.triggers(0), 0);
    assert_eq!(d.read_bar(ISR_OFFSET, 1), 1);
    // Wider ISR reads are refused and do not clear it.
    t.config_changed();
    assert_eq!(d.read_bar(ISR_OFFSET, 4), 0);
    assert_eq!(d.read_bar(ISR_OFFSET, 1), 2);
}

#[test]
fn the_pci_configuration_access_window_reaches_bar0_only_when_sane() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    let caps = d.capabilities(0x09);
    let cap = *caps.last().expect("pci cfg cap");
    assert_eq!(d.read_config(cap + 3, 1), 5);
    let window = |bar: u32, offset: u32, length: u32| {
        d.write_config(cap + 4, 1, bar);
        d.write_config(cap + 8, 4, offset);
        d.write_config(cap + 12, 4, length);
    };
    // num_queues through the window.
    window(0, common::NUM_QUEUES as u32, 2);
    assert_eq!(d.read_config(cap + 16, 2), 1);
    // A status write through the window.
    window(0, common::DEVICE_STATUS as u32, 1);
    d.write_config(cap + 16, 1, ACK);
    assert_eq!(d.status(), ACK);
    // Another BAR, a bad length, a misaligned or out-of-range offset: no access.
    for (bar, offset, length) in [
        (1, 0x12, 2),
        (0, 0x12, 3),
        (0, 0x13, 2),
        (0, BAR_SIZE as u32, 4),
        (0, u32::MAX, 1),
    ] {
        window(bar, offset, length);
        d.write_config(cap + 16, 4, 0);
        let _ = d.read_config(cap + 16, 4);
    }
    assert_eq!(d.status(), ACK);
}

#[test]
fn configuration_space_survives_every_offset_and_width() {
    let (t, _mem, _msi) = pci_transport(Rng::new());
    let d = PciDriver::new(&t);
    for width in [1usize, 2, 4] {
        for offset in 0..4096u16 {
            let _ = d.read_config(offset, width);
            // Keep BAR 0 and the command register as they are: the root
            // tests relocation.
            if !(0x04..0x18).contains(&offset) {
                d.write_config(offset, width, 0xffff_ffff);
            }
        }
    }
    assert_eq!(d.read_config(0, 4), 0x1044_1af4);
    assert_eq!(d.read_config(0x3d, 1), 0);
}
