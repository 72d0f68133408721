//! A hostile driver (and a misbehaving host side): each case drops what it
//! must, counts it, returns the chain, and leaves the device working.

use std::sync::atomic::Ordering;

use super::test_rig::{Rig, frame};
use super::{MAX_FRAME_LEN, RX_QUEUE};
use crate::testing::{DATA, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

impl Rig {
    /// A good frame still goes out after whatever happened.
    fn assert_tx_works(&self, head: u16) {
        self.write(DATA + 0x8000, &[0u8; 12]);
        self.write(DATA + 0x8000 + 12, &frame(60, 5));
        self.post_tx(head, &[(DATA + 0x8000, 72, false)]);
        assert_eq!(self.peer.recv().map(|f| f.len()), Some(72));
        assert_eq!(self.last_used(self.tx), (u32::from(head), 0));
    }

    /// A good frame still comes in after whatever happened.
    fn assert_rx_works(&self, head: u16) {
        self.post_rx(head, &[(DATA + 0x9000, 2048, true)]);
        self.peer.send(&frame(60, 6));
        self.t.backend_event();
        assert_eq!(self.last_used(self.rx), (u32::from(head), 72));
        assert_eq!(self.read(DATA + 0x9000 + 12, 60), frame(60, 6));
    }

    /// The transmit chain at `head` was returned, nothing was sent, one
    /// drop and one error were counted, and transmission still works.
    fn assert_tx_dropped(&self, head: u16) {
        assert_eq!(self.last_used(self.tx), (u32::from(head), 0));
        assert_eq!(self.peer.recv(), None);
        assert_eq!(self.stats().tx_dropped, 1);
        assert_eq!(self.counters().errors, 1);
        assert!(!self.needs_reset());
        self.assert_tx_works(head + 1);
    }
}

#[test]
fn rx_frame_larger_than_the_buffer() {
    let rig = Rig::new();
    rig.post_rx(0, &[(DATA, 64, true)]);
    rig.peer.send(&frame(200, 1));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 0));
    let s = rig.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 0));
    assert_eq!(rig.counters().errors, 1);
    assert!(!rig.needs_reset());
    rig.assert_rx_works(1);
}

#[test]
fn rx_buffer_outside_guest_ram() {
    let rig = Rig::new();
    rig.post_rx(0, &[(MEM_SIZE - 16, 2048, true)]);
    rig.peer.send(&frame(60, 1));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 0));
    assert_eq!(rig.stats().rx_dropped, 1);
    rig.assert_rx_works(1);
}

#[test]
fn rx_chain_with_a_device_readable_buffer() {
    let rig = Rig::new();
    rig.post_rx(0, &[(DATA, 12, false), (DATA + 0x100, 2048, true)]);
    rig.peer.send(&frame(60, 1));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 0));
    assert_eq!(rig.read(DATA, 12), [0u8; 12]);
    assert_eq!(rig.stats().rx_dropped, 1);
    rig.assert_rx_works(1);
}

#[test]
fn rx_runt_from_the_backend() {
    let rig = Rig::new();
    rig.post_rx(0, &[(DATA, 2048, true)]);
    rig.peer.socket.send(&[0u8; 5]).expect("send");
    rig.t.backend_event();
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_eq!(rig.stats().rx_dropped, 1);
    // The chain was not spent on it.
    rig.peer.send(&frame(60, 6));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 72));
}

#[test]
fn rx_head_out_of_range_needs_reset_and_stops_listening() {
    let rig = Rig::new();
    rig.peer.send(&frame(60, 1));
    rig.rx.publish(&rig.mem, &[16]);
    rig.driver().notify(RX_QUEUE as u32);
    assert!(rig.needs_reset());
    assert!(!rig.backend_wakes());
}

#[test]
fn failing_backend_stops_listening_until_buffers_come() {
    let rig = Rig::new();
    rig.post_rx(0, &[(DATA, 2048, true)]);
    rig.peer.fail_reads.store(true, Ordering::SeqCst);
    rig.peer.send(&frame(60, 1));
    rig.t.backend_event();
    assert!(!rig.backend_wakes());
    assert_eq!(rig.counters().errors, 1);
    assert!(!rig.needs_reset());
    rig.peer.fail_reads.store(false, Ordering::SeqCst);
    // The next receive notification retries.
    rig.post_rx(1, &[(DATA + 0x1000, 2048, true)]);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 72));
}

#[test]
fn tx_chain_longer_than_the_largest_frame() {
    let rig = Rig::new();
    let half = (MAX_FRAME_LEN / 2 + 1) as u32;
    rig.post_tx(
        0,
        &[(DATA, half, false), (DATA + u64::from(half), half, false)],
    );
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_largest_frame_goes_out() {
    let rig = Rig::new();
    rig.post_tx(0, &[(DATA, MAX_FRAME_LEN as u32, false)]);
    assert_eq!(rig.peer.recv().map(|f| f.len()), Some(MAX_FRAME_LEN));
    assert_eq!(rig.stats().tx_dropped, 0);
}

#[test]
fn tx_chain_with_a_device_writable_buffer() {
    let rig = Rig::new();
    rig.post_tx(0, &[(DATA, 12, false), (DATA + 0x100, 60, true)]);
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_header_only() {
    let rig = Rig::new();
    rig.post_tx(0, &[(DATA, 12, false)]);
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_shorter_than_a_header() {
    let rig = Rig::new();
    rig.post_tx(0, &[(DATA, 8, false)]);
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_buffer_outside_guest_ram() {
    let rig = Rig::new();
    rig.post_tx(0, &[(DATA, 12, false), (MEM_SIZE - 8, 60, false)]);
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_descriptor_loop() {
    let rig = Rig::new();
    let n = VRING_DESC_F_NEXT;
    rig.tx.set_desc(&rig.mem, 0, DATA, 12, n, 1);
    rig.tx.set_desc(&rig.mem, 1, DATA + 12, 60, n, 0);
    rig.tx.publish(&rig.mem, &[0]);
    rig.driver().notify(1);
    rig.assert_tx_dropped(0);
}

#[test]
fn tx_backend_full_drops_without_stalling() {
    let rig = Rig::new();
    // Fill the peer's receive queue until the device's sends would block.
    let mut sent = 0;
    for head in 0..16u16 {
        rig.post_tx(head % 16, &[(DATA, MAX_FRAME_LEN as u32, false)]);
        sent += 1;
        if rig.stats().tx_dropped > 0 {
            break;
        }
    }
    assert!(rig.stats().tx_dropped > 0, "backend never filled");
    assert_eq!(rig.tx.used_idx(&rig.mem), sent);
    assert!(!rig.needs_reset());
}

#[test]
fn rx_chain_split_into_many_writable_bits_is_fine() {
    let rig = Rig::new();
    let w = VRING_DESC_F_WRITE | VRING_DESC_F_NEXT;
    for i in 0..7u16 {
        rig.rx
            .set_desc(&rig.mem, i, DATA + 0x100 * u64::from(i), 12, w, i + 1);
    }
    rig.rx
        .set_desc(&rig.mem, 7, DATA + 0x800, 12, VRING_DESC_F_WRITE, 0);
    rig.rx.publish(&rig.mem, &[0]);
    rig.driver().notify(RX_QUEUE as u32);
    rig.peer.send(&frame(60, 2));
    rig.t.backend_event();
    assert_eq!(rig.last_used(rig.rx), (0, 72));
    assert_eq!(rig.read(DATA + 0x100, 12), frame(60, 2)[..12]);
}
