//! Raw Ethernet frames in, raw frames out: what a guest's kernel sends and
//! must get back.

use std::sync::{Arc, Mutex};

use serde_json::json;
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr,
    TcpSeqNumber,
};

use super::*;
use crate::{DEFAULT_IPV4, DEFAULT_SIZE_LIMIT, Mmds, MmdsVersion};

const GUEST_MAC: EthernetAddress = EthernetAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);

thread_local! {
    /// The guest's port for the current connection: each exchange takes a
    /// new one, as a guest's kernel would.
    static SRC_PORT: std::cell::Cell<u16> = const { std::cell::Cell::new(40000) };
}

fn stack(version: MmdsVersion) -> (MmdsStack, SharedMmds) {
    let mut mmds = Mmds::new(DEFAULT_SIZE_LIMIT);
    mmds.configure(version, false);
    mmds.put(json!({"latest": {"meta-data": {"instance-id": "i-42"}}}))
        .unwrap();
    let shared = Arc::new(Mutex::new(mmds));
    (
        MmdsStack::new(shared.clone(), DEFAULT_IPV4).unwrap(),
        shared,
    )
}

fn ethernet(
    dst: EthernetAddress,
    ethertype: EthernetProtocol,
    payload_len: usize,
) -> (Vec<u8>, EthernetRepr) {
    let repr = EthernetRepr {
        src_addr: GUEST_MAC,
        dst_addr: dst,
        ethertype,
    };
    (vec![0u8; repr.buffer_len() + payload_len], repr)
}

fn arp_request(target: Ipv4Address) -> Vec<u8> {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let (mut buf, eth) = ethernet(
        EthernetAddress::BROADCAST,
        EthernetProtocol::Arp,
        arp.buffer_len(),
    );
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    eth.emit(&mut frame);
    arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
    buf
}

fn tcp_frame(
    dst_ip: Ipv4Address,
    dst_port: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    data: &[u8],
) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: SRC_PORT.with(|p| p.get()),
        dst_port,
        control: if syn {
            TcpControl::Syn
        } else {
            TcpControl::None
        },
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 64000,
        window_scale: None,
        max_seg_size: syn.then_some(1460),
        sack_permitted: false,
        sack_ranges: [None, None, None],
        timestamp: None,
        payload: data,
    };
    let ip = Ipv4Repr {
        src_addr: GUEST_IP,
        dst_addr: dst_ip,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let (mut buf, eth) = ethernet(
        EthernetAddress(MMDS_MAC),
        EthernetProtocol::Ipv4,
        ip.buffer_len() + tcp.buffer_len(),
    );
    let caps = ChecksumCapabilities::default();
    let mut frame = EthernetFrame::new_unchecked(&mut buf);
    eth.emit(&mut frame);
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &caps);
    tcp.emit(
        &mut TcpPacket::new_unchecked(packet.payload_mut()),
        &GUEST_IP.into(),
        &dst_ip.into(),
        &caps,
    );
    buf
}

fn drain(stack: &mut MmdsStack) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| stack.next_frame()).collect()
}

/// The TCP segments among `frames`, as (seq, flags syn/fin, payload).
fn segments(frames: &[Vec<u8>]) -> Vec<(u32, bool, bool, Vec<u8>)> {
    frames
        .iter()
        .filter_map(|f| {
            let eth = EthernetFrame::new_checked(f).ok()?;
            assert_eq!(eth.dst_addr(), GUEST_MAC, "replies go to the guest's MAC");
            assert_eq!(eth.src_addr(), EthernetAddress(MMDS_MAC));
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            assert_eq!(ip.src_addr(), DEFAULT_IPV4);
            assert!(ip.verify_checksum());
            let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
            Some((
                tcp.seq_number().0 as u32,
                tcp.syn(),
                tcp.fin(),
                tcp.payload().to_vec(),
            ))
        })
        .collect()
}

/// SYN, then the request once the SYN-ACK came; returns the response bytes.
fn exchange(stack: &mut MmdsStack, request: &str) -> String {
    SRC_PORT.with(|p| p.set(p.get() + 1));
    let syn = tcp_frame(DEFAULT_IPV4, 80, 1000, None, true, &[]);
    assert!(stack.claims(&syn));
    stack.receive(&syn);
    let synack = segments(&drain(stack));
    let (server_seq, is_syn, _, _) = synack[0];
    assert!(is_syn, "SYN-ACK expected");
    let data = tcp_frame(
        DEFAULT_IPV4,
        80,
        1001,
        Some(server_seq + 1),
        false,
        request.as_bytes(),
    );
    stack.receive(&data);
    let mut response = Vec::new();
    let mut fin = false;
    for (_, _, is_fin, payload) in segments(&drain(stack)) {
        response.extend_from_slice(&payload);
        fin |= is_fin;
    }
    assert!(fin, "Connection: close ends with a FIN");
    String::from_utf8(response).unwrap()
}

#[test]
fn arp_for_the_mmds_address_is_answered_with_the_mmds_mac() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    let request = arp_request(DEFAULT_IPV4);
    assert!(stack.claims(&request));
    stack.receive(&request);
    let frames = drain(&mut stack);
    assert_eq!(frames.len(), 1);
    let eth = EthernetFrame::new_checked(&frames[0]).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    let arp = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = arp
    else {
        panic!("not an IPv4 ARP");
    };
    assert_eq!(operation, ArpOperation::Reply);
    assert_eq!(source_hardware_addr, EthernetAddress(MMDS_MAC));
    assert_eq!(source_protocol_addr, DEFAULT_IPV4);
    assert_eq!(target_protocol_addr, GUEST_IP);
}

#[test]
fn other_frames_are_not_claimed() {
    let (stack, _) = stack(MmdsVersion::V1);
    assert!(!stack.claims(&arp_request(Ipv4Address::new(10, 0, 0, 1))));
    assert!(!stack.claims(&tcp_frame(
        Ipv4Address::new(10, 0, 0, 1),
        80,
        1,
        None,
        true,
        &[]
    )));
    assert!(!stack.claims(&tcp_frame(DEFAULT_IPV4, 22, 1, None, true, &[])));
    assert!(!stack.claims(&[0u8; 10]));
    assert!(!stack.claims(&[]));
}

#[test]
fn a_tcp_http_get_is_answered_with_the_value() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    let response = exchange(
        &mut stack,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\ni-42"), "{response}");
}

#[test]
fn v2_without_a_token_gets_401_and_data_patched_later_is_seen() {
    let (mut stack, shared) = stack(MmdsVersion::V2);
    let response = exchange(
        &mut stack,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    shared.lock().unwrap().configure(MmdsVersion::V1, false);
    shared
        .lock()
        .unwrap()
        .patch(&json!({"latest": {"meta-data": {"instance-id": "i-43"}}}))
        .unwrap();
    let response = exchange(
        &mut stack,
        "GET /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.ends_with("i-43"), "{response}");
}

#[test]
fn garbage_frames_to_the_mmds_get_nothing_or_a_reset_and_the_stack_lives_on() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    // A truncated IPv4 header, a segment for no connection, random bytes.
    let mut short = tcp_frame(DEFAULT_IPV4, 80, 5, None, true, &[]);
    short.truncate(40);
    if stack.claims(&short) {
        stack.receive(&short);
    }
    stack.receive(&tcp_frame(
        DEFAULT_IPV4,
        80,
        5,
        Some(9),
        false,
        b"GET / HTTP/1.1\r\n\r\n",
    ));
    for frame in segments(&drain(&mut stack)) {
        assert!(
            frame.3.is_empty(),
            "no data for a connection that never was"
        );
    }
    stack.receive(&[0xffu8; 60]);
    drain(&mut stack);
    let response = exchange(
        &mut stack,
        "GET /latest HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.ends_with("meta-data/"), "{response}");
}

#[test]
fn malformed_http_gets_400_and_a_close() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    let response = exchange(&mut stack, "\x01\x02 nonsense\r\n\r\n");
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
}

#[test]
fn a_syn_flood_holds_at_most_the_socket_slots_which_come_back_after_the_idle_timeout() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    let mut synacks = 0;
    for _ in 0..(SOCKETS * 4) {
        SRC_PORT.with(|p| p.set(p.get() + 1));
        stack.receive(&tcp_frame(DEFAULT_IPV4, 80, 7, None, true, &[]));
        assert!(stack.frames.outbound.len() <= MAX_QUEUED_FRAMES);
        synacks += segments(&drain(&mut stack)).iter().filter(|s| s.1).count();
    }
    assert_eq!(
        synacks, SOCKETS,
        "one SYN-ACK per slot, resets for the rest"
    );
    // The half-open connections time out; a real request is then served.
    stack.advance(std::time::Duration::from_secs(11));
    SRC_PORT.with(|p| p.set(p.get() + 1));
    stack.receive(&tcp_frame(DEFAULT_IPV4, 80, 7, None, true, &[]));
    drain(&mut stack);
    let response = exchange(
        &mut stack,
        "GET /latest HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert!(response.ends_with("meta-data/"), "{response}");
}

#[test]
fn a_request_larger_than_the_buffer_gets_400_not_more_memory() {
    let (mut stack, _) = stack(MmdsVersion::V1);
    SRC_PORT.with(|p| p.set(p.get() + 1));
    stack.receive(&tcp_frame(DEFAULT_IPV4, 80, 1000, None, true, &[]));
    let (server_seq, _, _, _) = segments(&drain(&mut stack))[0];
    let mut seq = 1001u32;
    let mut response = Vec::new();
    // Header bytes that never end, 1000 at a time, acknowledging what the
    // stack sends.
    let chunk = vec![b'a'; 1000];
    for _ in 0..20 {
        stack.receive(&tcp_frame(
            DEFAULT_IPV4,
            80,
            seq,
            Some(server_seq + 1),
            false,
            &chunk,
        ));
        seq += chunk.len() as u32;
        for (_, _, _, payload) in segments(&drain(&mut stack)) {
            response.extend_from_slice(&payload);
        }
        let conn = &stack
            .conns
            .iter()
            .map(|(_, c)| c.request.len())
            .max()
            .unwrap_or(0);
        assert!(*conn <= crate::http::MAX_REQUEST_BYTES);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
}

#[test]
fn a_value_larger_than_the_send_buffer_streams_out_as_the_guest_acknowledges() {
    let (mut stack, shared) = stack(MmdsVersion::V1);
    let big = "x".repeat(45_000);
    shared
        .lock()
        .unwrap()
        .put(json!({"user-data": big}))
        .unwrap();
    SRC_PORT.with(|p| p.set(p.get() + 1));
    stack.receive(&tcp_frame(DEFAULT_IPV4, 80, 1000, None, true, &[]));
    let (server_seq, _, _, _) = segments(&drain(&mut stack))[0];
    let request = b"GET /user-data HTTP/1.1\r\nConnection: close\r\n\r\n";
    let mut acked = server_seq + 1;
    stack.receive(&tcp_frame(
        DEFAULT_IPV4,
        80,
        1001,
        Some(acked),
        false,
        request,
    ));
    let seq = 1001 + request.len() as u32;
    let mut body = Vec::new();
    let mut fin = false;
    for _ in 0..200 {
        let got = segments(&drain(&mut stack));
        if got.is_empty() {
            break;
        }
        for (at, _, is_fin, payload) in got {
            // In order: each segment starts where the last ended.
            if at == acked {
                body.extend_from_slice(&payload);
                acked = acked.wrapping_add(payload.len() as u32);
            }
            if is_fin {
                fin = true;
                acked = acked.wrapping_add(1);
            }
        }
        // The guest acknowledges everything it has (a window of 64000).
        stack.receive(&tcp_frame(DEFAULT_IPV4, 80, seq, Some(acked), false, &[]));
    }
    assert!(fin, "the whole response and its FIN arrived");
    let text = String::from_utf8(body).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{}", &text[..40]);
    assert!(text.ends_with(&big));
}
