//! The transport's register window and status machine, as a driver (or a
//! hostile guest) sees them.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::*;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_bindings::virtio_mmio::*;

use crate::rng::{RNG_QUEUE_SIZE, Rng};
use crate::testing::{
    DATA, Driver, MEM_SIZE, Ring, VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_WRITE, transport,
};
use crate::{MMIO_MAGIC, VirtioWorker};
use sie_devices::BusDevice;

const ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const VERSION_1: u64 = 1 << VIRTIO_F_VERSION_1;
const EVENT_IDX: u64 = 1 << VIRTIO_RING_F_EVENT_IDX;

#[test]
fn identifies_itself() {
    let (t, _mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    assert_eq!(d.read(VIRTIO_MMIO_MAGIC_VALUE), MMIO_MAGIC);
    assert_eq!(d.read(VIRTIO_MMIO_VERSION), 2);
    assert_eq!(d.read(VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
    assert_eq!(d.device_features(), VERSION_1 | EVENT_IDX);
    d.write(VIRTIO_MMIO_QUEUE_SEL, 0);
    assert_eq!(d.read(VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(RNG_QUEUE_SIZE));
    d.write(VIRTIO_MMIO_QUEUE_SEL, 1);
    assert_eq!(d.read(VIRTIO_MMIO_QUEUE_NUM_MAX), 0);
    assert_eq!(t.counters().invalid_accesses, 0);
}

#[test]
fn odd_sized_or_misaligned_register_accesses_are_ignored() {
    let (t, _mem, _irq) = transport(Rng::new());
    let mut word = [0xffu8; 2];
    t.read(0, &mut word);
    assert_eq!(word, [0, 0]);
    let mut dword = [0xffu8; 4];
    t.read(2, &mut dword);
    assert_eq!(dword, [0; 4]);
    let mut qword = [0xffu8; 8];
    t.read(0, &mut qword);
    assert_eq!(qword, [0; 8]);
    // A byte-wide Status write and a misaligned one change nothing.
    t.write(u64::from(VIRTIO_MMIO_STATUS), &[ACK as u8]);
    t.write(u64::from(VIRTIO_MMIO_STATUS) + 1, &ACK.to_le_bytes());
    t.write(u64::from(VIRTIO_MMIO_STATUS), &u64::from(ACK).to_le_bytes());
    assert_eq!(t.status(), 0);
    // Write-only registers read as 0; read-only ones ignore writes.
    t.read(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &mut dword);
    assert_eq!(dword, [0; 4]);
    t.write(u64::from(VIRTIO_MMIO_MAGIC_VALUE), &0u32.to_le_bytes());
    assert_eq!(t.counters().invalid_accesses, 8);
}

#[test]
fn status_follows_the_initialisation_sequence() {
    let (t, _mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    // Skipping ACKNOWLEDGE, or jumping ahead, is refused.
    d.write(VIRTIO_MMIO_STATUS, DRIVER);
    d.write(VIRTIO_MMIO_STATUS, ACK | DRIVER | FEATURES_OK);
    assert_eq!(d.status(), 0);
    d.add_status(ACK);
    d.add_status(DRIVER);
    // DRIVER_OK before FEATURES_OK.
    d.add_status(DRIVER_OK);
    assert_eq!(d.status(), ACK | DRIVER);
    // Clearing a bit without a reset.
    d.write(VIRTIO_MMIO_STATUS, ACK);
    assert_eq!(d.status(), ACK | DRIVER);
    assert_eq!(t.counters().invalid_status, 4);
    // Rewriting the same value is not a transition at all.
    d.write(VIRTIO_MMIO_STATUS, ACK | DRIVER);
    assert_eq!(t.counters().invalid_status, 4);
    // FAILED is always allowed; 0 resets.
    d.add_status(VIRTIO_CONFIG_S_FAILED);
    assert_eq!(d.status(), ACK | DRIVER | VIRTIO_CONFIG_S_FAILED);
    d.write(VIRTIO_MMIO_STATUS, 0);
    assert_eq!(d.status(), 0);
}

#[test]
fn features_ok_needs_version_1_and_only_offered_bits() {
    let (t, _mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    assert!(!d.negotiate(0), "legacy driver");
    assert_eq!(d.status(), ACK | DRIVER);
    assert!(
        !d.negotiate(VERSION_1 | 1 << VIRTIO_F_ACCESS_PLATFORM),
        "unoffered bit"
    );
    assert!(d.negotiate(VERSION_1));
    assert_eq!(t.counters().invalid_status, 2);
    // Features are frozen once FEATURES_OK is set.
    d.write(VIRTIO_MMIO_DRIVER_FEATURES, 0);
    assert_eq!(t.counters().invalid_accesses, 1);
}

#[test]
fn queue_registers_freeze_at_driver_ok() {
    let (t, mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start(&[ring]);
    assert_eq!(d.status(), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    let before = t.counters().invalid_accesses;
    d.write(VIRTIO_MMIO_QUEUE_NUM, 8);
    d.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x8000);
    d.write(VIRTIO_MMIO_QUEUE_USED_HIGH, 1);
    d.write(VIRTIO_MMIO_QUEUE_READY, 0);
    assert_eq!(t.counters().invalid_accesses, before + 4);
    assert_eq!(d.read(VIRTIO_MMIO_QUEUE_READY), 1);
    // The device still uses the rings it was activated with.
    ring.set_chain(&mem, 0, &[(DATA, 16, true)]);
    ring.publish(&mem, &[0]);
    d.notify(0);
    assert_eq!(ring.used(&mem, 0), (0, 16));
}

#[test]
fn invalid_queue_values_are_refused() {
    let (t, _mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    assert!(d.negotiate(VERSION_1));
    d.write(VIRTIO_MMIO_QUEUE_NUM, 12); // not a power of two
    d.write(VIRTIO_MMIO_QUEUE_NUM, 512); // above the maximum
    d.write(VIRTIO_MMIO_QUEUE_DESC_LOW, 0x1001); // misaligned
    d.write(VIRTIO_MMIO_QUEUE_READY, 2);
    d.write(VIRTIO_MMIO_QUEUE_SEL, 5);
    d.write(VIRTIO_MMIO_QUEUE_NUM, 16); // no such queue
    d.write(VIRTIO_MMIO_QUEUE_NOTIFY, 5);
    assert_eq!(t.counters().invalid_accesses, 6);
}

#[test]
fn rings_outside_memory_mark_the_device_needs_reset() {
    let (t, _mem, irq) = transport(Rng::new());
    let d = Driver::new(&t);
    d.start(&[Ring::new(MEM_SIZE - 0x100, 16)]);
    assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    assert_eq!(d.take_interrupt(), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(irq.count(), 1);
    // A reset and a proper bring-up recover it.
    d.start(&[Ring::new(0x1000, 16)]);
    assert_eq!(d.status(), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
}

#[test]
fn queue_not_ready_at_driver_ok_needs_reset() {
    let (t, _mem, _irq) = transport(Rng::new());
    let d = Driver::new(&t);
    d.start(&[]);
    assert_ne!(d.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn worker_serves_ioeventfd_notifications_on_the_event_loop() {
    let (t, mem, irq) = transport(Rng::new());
    let t = Arc::new(t);
    let d = Driver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start(&[ring]);
    let mut manager =
        EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("event manager");
    manager.add_subscriber(Arc::new(Mutex::new(VirtioWorker::new(t.clone()))));
    ring.set_chain(&mem, 0, &[(DATA, 32, true)]);
    ring.publish(&mem, &[0]);
    // What KVM does on a matching QueueNotify write with an ioeventfd.
    t.queue_events()[0].write(1).expect("kick");
    assert_eq!(manager.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(ring.used(&mem, 0), (0, 32));
    assert_eq!(irq.count(), 1);
    // And a QueueNotify that reached the transport lands on the same fd.
    ring.set_chain(&mem, 1, &[(DATA, 8, true)]);
    ring.publish(&mem, &[1]);
    d.write(VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    assert_eq!(manager.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(ring.used(&mem, 1), (1, 8));
    assert_eq!(t.counters().notifications, 2);
}

#[test]
fn event_idx_suppresses_interrupts_until_used_event() {
    let (t, mem, irq) = transport(Rng::new());
    let d = Driver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start_with(VERSION_1 | EVENT_IDX, &[ring]);
    // The driver wants an interrupt only once the used index passes 2.
    ring.set_used_event(&mem, 2);
    for i in 0..4u16 {
        ring.set_desc(&mem, i, DATA, 8, VRING_DESC_F_WRITE, 0);
        ring.publish(&mem, &[i]);
        d.notify(0);
        // The device asks to be kicked for the next chain.
        assert_eq!(ring.avail_event(&mem), i + 1);
    }
    assert_eq!(ring.used_idx(&mem), 4);
    assert_eq!(irq.count(), 1, "only the chain that moved used past 2");
}

#[test]
fn without_event_idx_every_batch_interrupts_and_kicks_are_reenabled() {
    let (t, mem, irq) = transport(Rng::new());
    let d = Driver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start(&[ring]);
    for i in 0..3u16 {
        ring.set_desc(&mem, i, DATA, 8, VRING_DESC_F_WRITE, 0);
        ring.publish(&mem, &[i]);
        d.notify(0);
        assert_eq!(ring.used_flags(&mem), 0, "NO_NOTIFY cleared after draining");
    }
    assert_eq!(irq.count(), 3);
}
