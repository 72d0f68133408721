//! virtio-mem requests from a register-level driver, hostile ones included.

use std::sync::Mutex;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;

use super::*;
use crate::testing::{DATA, Driver, Ring, transport};
use vm_memory::GuestAddress;

const BASE: u64 = 0x5_0000_0000;
const BLOCK: u64 = 2 << 20;

type Discarded = Arc<Mutex<Vec<(u64, u64)>>>;

fn device() -> (Mem, Discarded) {
    let discarded = Discarded::default();
    let log = discarded.clone();
    let discard: Discard = Box::new(move |offset, len| {
        log.lock().unwrap().push((offset, len));
        Ok(())
    });
    (Mem::new(BASE, 8 * BLOCK, BLOCK, discard), discarded)
}

fn request(kind: u16, addr: u64, count: u16) -> [u8; REQUEST_LEN] {
    let mut raw = [0u8; REQUEST_LEN];
    raw[..2].copy_from_slice(&kind.to_le_bytes());
    raw[8..16].copy_from_slice(&addr.to_le_bytes());
    raw[16..18].copy_from_slice(&count.to_le_bytes());
    raw
}

/// Sends each request as its own chain and returns the answers
/// `(type, state)`.
fn send(requests: &[[u8; REQUEST_LEN]], mem_dev: Mem) -> (Vec<(u16, u16)>, u64) {
    let (t, mem, _irq) = transport(mem_dev);
    let d = Driver::new(&t);
    // Two descriptors per request.
    let ring = Ring::new(0x1000, 32);
    d.start(&[ring]);
    let mut heads = Vec::new();
    for (i, raw) in requests.iter().enumerate() {
        let at = DATA + 0x100 * i as u64;
        mem.write_slice(raw, GuestAddress(at)).unwrap();
        let head = (2 * i) as u16;
        ring.set_chain(&mem, head, &[(at, 24, false), (at + 0x40, 16, true)]);
        heads.push(head);
    }
    ring.publish(&mem, &heads);
    d.notify(0);
    let answers = (0..requests.len())
        .map(|i| {
            let at = DATA + 0x100 * i as u64 + 0x40;
            let kind: u16 = mem.read_obj(GuestAddress(at)).unwrap();
            let state: u16 = mem.read_obj(GuestAddress(at + 8)).unwrap();
            (kind, state)
        })
        .collect();
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    (answers, t.with_device(|m| m.plugged_size()))
}

#[test]
fn config_space_describes_the_region() {
    let (mut m, _) = device();
    m.set_requested_size(4 * BLOCK).unwrap();
    let mut raw = [0u8; CONFIG_LEN];
    m.read_config(0, &mut raw);
    let field = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().unwrap());
    assert_eq!(field(0), BLOCK);
    assert_eq!(field(16), BASE);
    assert_eq!((field(24), field(32)), (8 * BLOCK, 8 * BLOCK));
    assert_eq!((field(40), field(48)), (0, 4 * BLOCK));
    assert_eq!(m.device_type(), 24);
    assert!(m.set_requested_size(9 * BLOCK).is_err());
    assert!(m.set_requested_size(BLOCK + 4096).is_err());
}

#[test]
fn plug_within_the_request_then_unplug_gives_memory_back() {
    let (mut m, discarded) = device();
    m.set_requested_size(4 * BLOCK).unwrap();
    let (answers, plugged) = send(
        &[
            request(REQ_PLUG, BASE, 2),
            request(REQ_PLUG, BASE + 2 * BLOCK, 2),
            // Beyond the requested size: NACK.
            request(REQ_PLUG, BASE + 4 * BLOCK, 1),
            request(REQ_STATE, BASE, 4),
            request(REQ_STATE, BASE + 3 * BLOCK, 2),
            request(REQ_UNPLUG, BASE, 1),
            request(REQ_STATE, BASE + 6 * BLOCK, 2),
        ],
        m,
    );
    assert_eq!(
        answers,
        [
            (RESP_ACK, 0),
            (RESP_ACK, 0),
            (RESP_NACK, 0),
            (RESP_ACK, STATE_PLUGGED),
            (RESP_ACK, STATE_MIXED),
            (RESP_ACK, 0),
            (RESP_ACK, STATE_UNPLUGGED),
        ]
    );
    assert_eq!(plugged, 3 * BLOCK);
    assert_eq!(*discarded.lock().unwrap(), [(0, BLOCK)]);
}

#[test]
fn hostile_ranges_and_types_are_errors() {
    let (mut m, discarded) = device();
    m.set_requested_size(8 * BLOCK).unwrap();
    let (answers, plugged) = send(
        &[
            request(REQ_PLUG, BASE - BLOCK, 1),
            request(REQ_PLUG, BASE + 4096, 1),
            request(REQ_PLUG, BASE, 0),
            request(REQ_PLUG, BASE + 7 * BLOCK, 2),
            request(REQ_PLUG, u64::MAX - 10, u16::MAX),
            request(REQ_UNPLUG, BASE, 1),
            request(9, BASE, 1),
            request(REQ_PLUG, BASE, 1),
            request(REQ_PLUG, BASE, 1),
        ],
        m,
    );
    let errors = answers
        .iter()
        .filter(|(kind, _)| *kind == RESP_ERROR)
        .count();
    assert_eq!(errors, 8, "{answers:?}");
    assert_eq!(answers[7], (RESP_ACK, 0));
    assert_eq!(plugged, BLOCK);
    assert!(discarded.lock().unwrap().is_empty());
}

#[test]
fn unplug_all_and_short_chains() {
    let (mut m, discarded) = device();
    m.set_requested_size(8 * BLOCK).unwrap();
    let (answers, plugged) = send(
        &[request(REQ_PLUG, BASE, 8), request(REQ_UNPLUG_ALL, 0, 0)],
        m,
    );
    assert_eq!(answers, [(RESP_ACK, 0), (RESP_ACK, 0)]);
    assert_eq!(plugged, 0);
    assert_eq!(*discarded.lock().unwrap(), [(0, 8 * BLOCK)]);

    let (m, _) = device();
    let (t, mem, _irq) = transport(m);
    let d = Driver::new(&t);
    let ring = Ring::new(0x1000, 16);
    d.start(&[ring]);
    // A request too short to read, and a chain with no room for an answer.
    ring.set_chain(&mem, 0, &[(DATA, 8, false), (DATA + 0x40, 16, true)]);
    ring.set_chain(&mem, 2, &[(DATA, 24, false)]);
    ring.publish(&mem, &[0, 2]);
    d.notify(0);
    assert_eq!(ring.used(&mem, 0), (0, RESPONSE_LEN as u32));
    let kind: u16 = mem.read_obj(GuestAddress(DATA + 0x40)).unwrap();
    assert_eq!(kind, RESP_ERROR);
    assert_eq!(ring.used(&mem, 1), (2, 0));
    assert_eq!(t.counters().errors, 2);
    assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}
