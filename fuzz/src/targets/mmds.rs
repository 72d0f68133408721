//! The metadata service's guest side (`sie_mmds`): Ethernet frames a guest
//! sends to the MMDS address, into its smoltcp stack and HTTP responder,
//! with the host changing the store in between.
//!
//! Input: a sequence of steps, each a byte choosing what to do: a TCP
//! segment to port 80 with fuzzed ports, sequence numbers, flags and
//! payload (often an HTTP request, so connections get far); an ARP packet
//! about the address; raw bytes as a frame; taking the stack's frames; a
//! host `PUT` or `PATCH`; the HTTP responder on raw bytes. Checked: at
//! most `MAX_QUEUED_FRAMES` frames wait, every frame for the guest comes
//! from the MMDS's MAC and fits an Ethernet frame, every answer the
//! responder gives is an HTTP/1.1 response using no more bytes than it had.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sie_mmds::http::{Parsed, serve};
use sie_mmds::stack::{MAX_QUEUED_FRAMES, MMDS_MAC};
use sie_mmds::{DEFAULT_IPV4, Mmds, MmdsStack, MmdsVersion};

use crate::input::Input;

const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const GUEST_IP: [u8; 4] = [10, 0, 0, 2];

const REQUESTS: [&[u8]; 5] = [
    b"GET /latest/meta-data HTTP/1.1\r\n\r\n",
    b"PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n",
    b"GET / HTTP/1.1\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
    b"GET /a/b HTTP/1.0\r\nX-metadata-token: 00\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
];

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mut mmds = Mmds::new(usize::from(input.u16()) + 1);
    let version = if input.bool() {
        MmdsVersion::V2
    } else {
        MmdsVersion::V1
    };
    mmds.configure(version, input.bool());
    let _ = mmds.put(serde_json::json!({"latest": {"meta-data": {"id": "i-1", "n": 4}}}));
    let store = Arc::new(Mutex::new(mmds));
    let mut stack = MmdsStack::with_seed(store.clone(), DEFAULT_IPV4, 1);
    while !input.is_empty() {
        match input.below(6) {
            0 => {
                let frame = tcp_segment(&mut input);
                if stack.claims(&frame) {
                    stack.receive(&frame);
                }
            }
            1 => {
                let frame = arp(&mut input);
                if stack.claims(&frame) {
                    stack.receive(&frame);
                }
            }
            2 => {
                let frame = input.chunk(1600);
                if stack.claims(frame) {
                    stack.receive(frame);
                }
            }
            3 => {
                for _ in 0..input.below(8) {
                    let Some(frame) = stack.next_frame() else {
                        break;
                    };
                    assert!(
                        frame.len() >= 14 && frame.len() <= 1514,
                        "{} bytes",
                        frame.len()
                    );
                    assert_eq!(frame[6..12], MMDS_MAC, "a frame not from the MMDS");
                }
            }
            4 => {
                let text = String::from_utf8_lossy(input.chunk(64)).into_owned();
                let mut mmds = store.lock().unwrap_or_else(|e| e.into_inner());
                let value = serde_json::json!({"latest": {"meta-data": {"id": text}}});
                let _ = if input.bool() {
                    mmds.put(value)
                } else {
                    mmds.patch(&value)
                };
            }
            _ => {
                let bytes = input.chunk(10_000);
                let mut mmds = store.lock().unwrap_or_else(|e| e.into_inner());
                if let Parsed::Answered {
                    consumed, response, ..
                } = serve(&mut mmds, bytes, Instant::now())
                {
                    assert!(consumed <= bytes.len());
                    assert!(response.starts_with(b"HTTP/1.1 "));
                }
            }
        }
        assert!(stack.queued_frames() <= MAX_QUEUED_FRAMES);
    }
}

fn ethernet(ethertype: [u8; 2], dst: [u8; 6]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(1514);
    frame.extend_from_slice(&dst);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&ethertype);
    frame
}

/// An IPv4 TCP segment to the MMDS on port 80 (checksums are not checked
/// on the way in: the guest offloads them).
fn tcp_segment(input: &mut Input) -> Vec<u8> {
    let payload: Vec<u8> = if input.bool() {
        input.pick(&REQUESTS).to_vec()
    } else {
        input.chunk(1400).to_vec()
    };
    let mut frame = ethernet([0x08, 0x00], MMDS_MAC);
    let total = (20 + 20 + payload.len()) as u16;
    frame.extend_from_slice(&[0x45, 0]);
    frame.extend_from_slice(&total.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    frame.extend_from_slice(&GUEST_IP);
    frame.extend_from_slice(&DEFAULT_IPV4.octets());
    frame.extend_from_slice(&(40000 + input.below(4) as u16).to_be_bytes());
    frame.extend_from_slice(&80u16.to_be_bytes());
    frame.extend_from_slice(&input.u32().to_be_bytes());
    frame.extend_from_slice(&input.u32().to_be_bytes());
    frame.push(0x50);
    frame.push(input.u8());
    frame.extend_from_slice(&input.u16().to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(&payload);
    frame
}

fn arp(input: &mut Input) -> Vec<u8> {
    let mut frame = ethernet([0x08, 0x06], [0xff; 6]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0]);
    frame.push(input.below(3) as u8);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&GUEST_IP);
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&DEFAULT_IPV4.octets());
    frame
}
