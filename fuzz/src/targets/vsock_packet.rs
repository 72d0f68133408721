//! The vsock packet wire format (`sie_virtio::vsock::wire`): a header and
//! payload read from a tx chain of any shape (segments of any length and
//! place, overlapping, past the end of RAM, a direction flipped), then
//! written into an rx chain and read back.
//!
//! Input: the segments (count, then address and length of each), then the
//! bytes the guest put in them. Checked: a packet read is exactly the
//! chain's first 44 bytes as a header and the next `len` bytes, within
//! [`MAX_PAYLOAD`] and the chain; headers survive an encode/decode round
//! trip both ways; a packet written into a chain with room reports its
//! length and, when the segments do not overlap, reads back unchanged.

use sie_virtio::Segment;
use sie_virtio::testing::{MEM_SIZE, memory};
use sie_virtio::vsock::MAX_PAYLOAD;
use sie_virtio::vsock::wire::{HEADER_LEN, Header, capacity, read, write};
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mem = memory();
    let count = input.below(6) + 1;
    let mut segments: Vec<Segment> = (0..count)
        .map(|_| {
            let addr = match input.u8() % 8 {
                0 => u64::from(input.u32()),
                1 => MEM_SIZE - u64::from(input.below(64)),
                _ => u64::from(input.u16()) * 8,
            };
            let len = match input.u8() % 8 {
                0 => input.u32().max(1),
                1 => HEADER_LEN as u32,
                2 => input.below(70_000) + 1,
                _ => input.below(128) + 1,
            };
            Segment {
                addr: GuestAddress(addr),
                len,
                writable: false,
            }
        })
        .collect();
    if input.u8() == 0xff {
        let at = input.below(count) as usize;
        segments[at].writable = true;
    }
    // The guest's bytes, segment after segment.
    for s in &segments {
        let bytes = input.bytes(s.len as usize);
        if bytes.is_empty() {
            break;
        }
        let _ = mem.write_slice(bytes, s.addr);
    }

    let Ok((header, payload)) = read(&mem, &segments) else {
        return;
    };
    let total = capacity(&segments, false).expect("a packet was read, so one direction");
    let len = header.len as usize;
    assert_eq!(payload.len(), len, "payload is not the header's len");
    assert!(len <= MAX_PAYLOAD, "a {len}-byte payload");
    assert!(HEADER_LEN + len <= total, "packet longer than its chain");
    let bytes = concatenation(&mem, &segments, HEADER_LEN + len);
    let mut raw = [0u8; HEADER_LEN];
    raw.copy_from_slice(&bytes[..HEADER_LEN]);
    assert_eq!(
        header,
        Header::from_bytes(&raw),
        "header is not the chain's"
    );
    assert_eq!(header.to_bytes(), raw, "header does not encode back");
    assert!(payload == bytes[HEADER_LEN..], "payload is not the chain's");

    // The same chain as an rx chain: room for exactly this packet.
    let rx: Vec<Segment> = segments
        .iter()
        .map(|s| Segment {
            writable: true,
            ..*s
        })
        .collect();
    let used = write(&mem, &rx, &header, &payload).expect("the packet fits where it was read");
    assert_eq!(used as usize, HEADER_LEN + len, "used length of a write");
    if !overlapping(&segments, HEADER_LEN + len) {
        let again = read(&mem, &segments).expect("a written packet reads back");
        assert_eq!(again, (header, payload), "a packet changed in a write");
    }
}

/// The first `n` bytes of the chain's buffers, back to back.
fn concatenation(mem: &sie_virtio::GuestMemory, segments: &[Segment], n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for s in segments {
        let take = (s.len as usize).min(n - out.len());
        let mut buf = vec![0u8; take];
        mem.read_slice(&mut buf, s.addr)
            .expect("read found these bytes in RAM");
        out.extend_from_slice(&buf);
        if out.len() == n {
            break;
        }
    }
    out
}

/// Whether the parts of the segments holding the first `n` bytes overlap.
fn overlapping(segments: &[Segment], n: usize) -> bool {
    let mut left = n as u64;
    let mut ranges = Vec::new();
    for s in segments {
        if left == 0 {
            break;
        }
        let take = u64::from(s.len).min(left);
        ranges.push((s.addr.0, s.addr.0 + take));
        left -= take;
    }
    ranges.sort_unstable();
    ranges.windows(2).any(|w| w[1].0 < w[0].1)
}
