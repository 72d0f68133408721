//! virtio-net through the transport's registers, real rings and a socket
//! pair standing in for the tap.

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_net::*;

use super::test_rig::{MAC, Rig, frame};
use super::*;
use crate::VirtioWorker;
use crate::testing::{DATA, VIRTIO_RING_F_EVENT_IDX};
use sie_devices::BusDevice;

/// Config space starts at this offset of the MMIO window.
const CONFIG: u64 = 0x100;

fn config_bytes(rig: &Rig, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| {
            let mut b = [0u8];
            rig.t.read(CONFIG + offset + i, &mut b);
            b[0]
        })
        .collect()
}

#[test]
fn offers_a_single_queue_pair_with_mac_and_link_up() {
    let rig = Rig::idle();
    let features = rig.driver().device_features();
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
    ] {
        assert_ne!(features & 1 << bit, 0, "feature {bit}");
    }
    for bit in [
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
    ] {
        assert_eq!(features & 1 << bit, 0, "feature {bit}");
    }
    assert_eq!(rig.driver().read(0x8), VIRTIO_ID_NET);
    assert_eq!(config_bytes(&rig, 0, 6), MAC);
    assert_eq!(config_bytes(&rig, 6, 2), [VIRTIO_NET_S_LINK_UP as u8, 0]);
    assert_eq!(config_bytes(&rig, 8, 2), [1, 0]);
    // Past the config space: ignored and counted.
    let mut b = [0xffu8];
    rig.t.read(CONFIG + 10, &mut b);
    assert_eq!(rig.counters().invalid_accesses, 1);
    // The MAC is read-only.
    rig.t.write(CONFIG, &[0xaa]);
    assert_eq!(config_bytes(&rig, 0, 1), [MAC[0]]);
}

#[test]
fn transmits_header_and_frame_in_one_datagram() {
    let rig = Rig::new();
    let header = [1u8, 0, 0, 0, 0, 0, 34, 0, 16, 0, 0, 0];
    let body = frame(60, 3);
    rig.write(DATA, &header);
    rig.write(DATA + 0x100, &body[..20]);
    rig.write(DATA + 0x200, &body[20..]);
    rig.post_tx(
        0,
        &[
            (DATA, 12, false),
            (DATA + 0x100, 20, false),
            (DATA + 0x200, 40, false),
        ],
    );
    let sent = rig.peer.recv().expect("a frame reached the backend");
    assert_eq!(sent.get(..12), Some(&header[..]));
    assert_eq!(sent.get(12..), Some(&body[..]));
    assert_eq!(rig.peer.recv(), None);
    assert_eq!(rig.last_used(rig.tx), (0, 0));
    assert_eq!(rig.driver().take_interrupt(), VIRTIO_MMIO_INT_VRING);
    let s = rig.stats();
    assert_eq!((s.tx_frames, s.tx_bytes, s.tx_dropped), (1, 60, 0));
    let c = rig.counters();
    assert_eq!((c.requests, c.bytes_written, c.errors), (1, 72, 0));
}

#[test]
fn receives_a_frame_with_a_v1_header() {
    let rig = Rig::new();
    // Stale bytes where the header goes: the device must overwrite them.
    rig.write(DATA, &[0xee; 12]);
    rig.post_rx(0, &[(DATA, 2048, true)]);
    assert!(!rig.backend_wakes());
    let body = frame(100, 9);
    rig.peer.send(&body);
    assert!(rig.backend_wakes());
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 112));
    let mut header = [0u8; 12];
    header[10] = 1; // num_buffers
    assert_eq!(rig.read(DATA, 12), header);
    assert_eq!(rig.read(DATA + 12, 100), body);
    assert_eq!(rig.driver().take_interrupt(), VIRTIO_MMIO_INT_VRING);
    let s = rig.stats();
    assert_eq!((s.rx_frames, s.rx_bytes, s.rx_dropped), (1, 100, 0));
    assert_eq!(rig.counters().bytes_read, 112);
    assert!(!rig.backend_wakes());
}

#[test]
fn scatters_a_frame_over_several_buffers() {
    let rig = Rig::new();
    rig.post_rx(
        0,
        &[
            (DATA, 12, true),
            (DATA + 0x100, 30, true),
            (DATA + 0x200, 100, true),
        ],
    );
    let body = frame(64, 1);
    rig.peer.send(&body);
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 76));
    assert_eq!(rig.read(DATA + 0x100, 30), body[..30]);
    assert_eq!(rig.read(DATA + 0x200, 34), body[30..]);
}

#[test]
fn waits_for_buffers_without_spinning() {
    let rig = Rig::new();
    rig.peer.send(&frame(60, 1));
    rig.peer.send(&frame(61, 2));
    assert!(rig.backend_wakes());
    // No buffer posted: the first frame is held, the second stays in the
    // backend, and the event loop no longer wakes for it.
    rig.t.backend_event();
    assert!(!rig.backend_wakes());
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_eq!(rig.stats().rx_dropped, 0);
    // Posting buffers (a receive notification) delivers both, in order.
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 2048, true)]);
    rig.rx
        .set_chain(&rig.mem, 1, &[(DATA + 0x1000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[0, 1]);
    rig.driver().notify(RX_QUEUE as u32);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 72));
    assert_eq!(rig.rx.used(&rig.mem, 1), (1, 73));
    assert_eq!(rig.read(DATA + 0x1000 + 12, 61), frame(61, 2));
    // Buffers left and the backend empty: listening again.
    rig.post_rx(2, &[(DATA + 0x2000, 2048, true)]);
    assert!(!rig.backend_wakes());
    rig.peer.send(&frame(62, 3));
    assert!(rig.backend_wakes());
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (2, 74));
}

#[test]
fn ignores_the_backend_until_the_driver_is_ready() {
    let rig = Rig::idle();
    rig.peer.send(&frame(60, 1));
    assert!(!rig.backend_wakes());
    rig.t.backend_event();
    let features = rig.driver().device_features();
    rig.start(features);
    // Activation listens again: the frame that waited is wanted now.
    assert!(rig.backend_wakes());
    rig.post_rx(0, &[(DATA, 2048, true)]);
    assert_eq!(rig.last_used(rig.rx), (0, 72));
}

#[test]
fn tap_offloads_follow_negotiation_and_reset() {
    let rig = Rig::idle();
    let features = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM;
    rig.start(features);
    assert_eq!(*rig.peer.offloads.lock().expect("lock"), Some(features));
    rig.driver().write(0x70, 0);
    assert_eq!(*rig.peer.offloads.lock().expect("lock"), Some(0));
    assert!(!rig.backend_wakes());
}

#[test]
fn works_with_event_idx() {
    let rig = Rig::idle();
    rig.start(rig.driver().device_features());
    assert_ne!(
        rig.driver().device_features() & 1 << VIRTIO_RING_F_EVENT_IDX,
        0
    );
    rig.post_tx(0, &[(DATA, 12 + 60, false)]);
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(72));
    rig.post_rx(0, &[(DATA, 2048, true)]);
    rig.peer.send(&frame(60, 1));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 72));
    assert!(rig.irq.count() >= 2);
}

#[test]
fn event_loop_sleeps_while_the_guest_has_no_buffers() {
    let rig = Rig::new();
    let mut manager =
        EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("event manager");
    manager.add_subscriber(Arc::new(Mutex::new(VirtioWorker::new(rig.t.clone()))));
    rig.peer.send(&frame(60, 1));
    rig.peer.send(&frame(60, 2));
    // One wakeup takes a frame and finds no buffer; then quiet, although
    // the backend is still readable.
    assert_eq!(manager.run_with_timeout(1000).expect("run"), 1);
    for _ in 0..3 {
        assert_eq!(manager.run_with_timeout(0).expect("run"), 0);
    }
    // The driver posts buffers and kicks (ioeventfd): both frames arrive,
    // the loop goes quiet again once the backend is empty.
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 2048, true)]);
    rig.rx
        .set_chain(&rig.mem, 1, &[(DATA + 0x1000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[0, 1]);
    rig.t.queue_events()[RX_QUEUE].write(1).expect("kick");
    assert_eq!(manager.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(rig.rx.used_idx(&rig.mem), 2);
    assert_eq!(manager.run_with_timeout(0).expect("run"), 0);
    // A new frame wakes the loop and lands in the next buffer.
    rig.rx
        .set_chain(&rig.mem, 2, &[(DATA + 0x2000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[2]);
    rig.peer.send(&frame(60, 3));
    assert_eq!(manager.run_with_timeout(1000).expect("run"), 1);
    assert_eq!(rig.last_used(rig.rx), (2, 72));
}

#[test]
fn reset_forgets_a_held_frame() {
    let rig = Rig::new();
    rig.peer.send(&frame(60, 1));
    rig.t.backend_event();
    rig.driver().write(0x70, 0);
    assert_eq!(rig.stats().rx_dropped, 1);
    rig.start(rig.driver().device_features());
    rig.post_rx(0, &[(DATA, 2048, true)]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    rig.peer.send(&frame(60, 2));
    rig.t.backend_event();
    assert_eq!(rig.read(DATA + 12, 60), frame(60, 2));
}
