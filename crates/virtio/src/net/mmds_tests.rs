//! The metadata service on a net device: frames for it never reach the
//! backend, its answers arrive on the receive queue, everything else
//! passes unchanged.

use std::sync::{Arc, Mutex};

use sie_mmds::stack::MMDS_MAC;
use sie_mmds::{DEFAULT_IPV4, DEFAULT_SIZE_LIMIT, Mmds, MmdsStack};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

use super::test_rig::{MAC, Rig, frame};
use crate::testing::DATA;

const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

fn rig_with_mmds() -> Rig {
    let rig = Rig::idle();
    let store = Arc::new(Mutex::new(Mmds::new(DEFAULT_SIZE_LIMIT)));
    let stack = MmdsStack::new(store, DEFAULT_IPV4).expect("stack");
    rig.t.with_device(|net| net.set_mmds(stack));
    let features = rig.driver().device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
    rig.start(features);
    rig
}

/// A virtio-net header and an ARP request from the guest for `target`.
fn arp_request(target: [u8; 4]) -> Vec<u8> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame.extend_from_slice(&MAC);
    frame.extend_from_slice(&GUEST_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target);
    frame
}

#[test]
fn arp_for_the_mmds_is_answered_on_the_receive_queue_and_never_reaches_the_tap() {
    let rig = rig_with_mmds();
    rig.post_rx(0, &[(DATA + 0x1000, 2048, true)]);
    let request = arp_request(DEFAULT_IPV4.octets());
    rig.write(DATA, &request);
    rig.post_tx(0, &[(DATA, request.len() as u32, false)]);
    assert_eq!(rig.peer.recv(), None, "the tap saw an MMDS frame");
    let (head, len) = rig.last_used(rig.rx);
    assert_eq!(head, 0);
    let reply = rig.read(DATA + 0x1000, len as usize);
    let ethernet = &reply[12..];
    assert_eq!(&ethernet[0..6], &MAC, "to the guest");
    assert_eq!(&ethernet[6..12], &MMDS_MAC, "from the MMDS");
    assert_eq!(&ethernet[12..14], &[0x08, 0x06]);
    assert_eq!(&ethernet[20..22], &[0, 2], "an ARP reply");
    assert_eq!(&ethernet[22..28], &MMDS_MAC, "sender hardware address");
    assert_eq!(&ethernet[28..32], &DEFAULT_IPV4.octets());
    // num_buffers is 1, the rest of the header zero.
    assert_eq!(&reply[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
}

#[test]
fn other_frames_pass_to_the_tap_unchanged() {
    let rig = rig_with_mmds();
    let request = arp_request([10, 0, 0, 1]);
    rig.write(DATA, &request);
    rig.post_tx(0, &[(DATA, request.len() as u32, false)]);
    assert_eq!(rig.peer.recv(), Some(request));
    let mut other = vec![0u8; 12];
    other.extend_from_slice(&frame(60, 9));
    rig.write(DATA + 0x400, &other);
    rig.post_tx(1, &[(DATA + 0x400, other.len() as u32, false)]);
    assert_eq!(rig.peer.recv(), Some(other));
}

#[test]
fn answers_wait_for_receive_buffers() {
    let rig = rig_with_mmds();
    let request = arp_request(DEFAULT_IPV4.octets());
    rig.write(DATA, &request);
    rig.post_tx(0, &[(DATA, request.len() as u32, false)]);
    // No buffer yet: nothing used; posting one delivers the reply.
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    rig.post_rx(0, &[(DATA + 0x1000, 2048, true)]);
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    let (_, len) = rig.last_used(rig.rx);
    assert_eq!(&rig.read(DATA + 0x1000 + 12 + 6, 6), &MMDS_MAC);
    assert!(len as usize >= 12 + 42);
}
