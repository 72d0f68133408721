//! The virtio-vsock packet header (virtio 1.x §5.10.6) and moving packets
//! between descriptor chains and host memory.
//!
//! A packet is the 44-byte little-endian header followed by `len` payload
//! bytes, laid out across the chain's buffers in order (the header may be
//! split over descriptors, the payload may share one with it). Guest memory
//! is only touched through vm-memory's checked accessors on segments that
//! [`crate::chain`] already validated.

use vm_memory::{Bytes, GuestAddress};

use crate::{GuestMemory, Segment};

/// The host's context ID: every guest packet must be addressed to it.
pub const HOST_CID: u64 = 2;
/// Length of the packet header on the wire.
pub const HEADER_LEN: usize = 44;
/// Largest payload accepted in one packet from the guest; Linux sends at
/// most 64 KiB per RW packet, and the cap bounds the bounce buffer.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// `type` of a stream socket, the only kind offered.
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Packet operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection refused or aborted.
    Rst = 3,
    /// One or both directions closed (see `SHUTDOWN_*` flags).
    Shutdown = 4,
    /// Stream data.
    Rw = 5,
    /// The sender's buffer space and consumed-byte count changed.
    CreditUpdate = 6,
    /// Asks the peer for a CREDIT_UPDATE.
    CreditRequest = 7,
}

impl Op {
    /// The operation numbered `raw`, if it is one.
    pub fn from_raw(raw: u16) -> Option<Self> {
        Some(match raw {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Rst,
            4 => Self::Shutdown,
            5 => Self::Rw,
            6 => Self::CreditUpdate,
            7 => Self::CreditRequest,
            _ => return None,
        })
    }
}

/// `struct virtio_vsock_hdr`, in host byte order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub kind: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Copies `N` bytes at `at` out of `raw` (always in range for the fixed
/// offsets used here; zeros otherwise, never a panic).
fn take<const N: usize>(raw: &[u8; HEADER_LEN], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(bytes) = raw.get(at..at + N) {
        out.copy_from_slice(bytes);
    }
    out
}

fn put(raw: &mut [u8; HEADER_LEN], at: usize, bytes: &[u8]) {
    if let Some(slot) = raw.get_mut(at..at + bytes.len()) {
        slot.copy_from_slice(bytes);
    }
}

impl Header {
    /// Decodes the wire form.
    pub fn from_bytes(raw: &[u8; HEADER_LEN]) -> Self {
        Self {
            src_cid: u64::from_le_bytes(take(raw, 0)),
            dst_cid: u64::from_le_bytes(take(raw, 8)),
            src_port: u32::from_le_bytes(take(raw, 16)),
            dst_port: u32::from_le_bytes(take(raw, 20)),
            len: u32::from_le_bytes(take(raw, 24)),
            kind: u16::from_le_bytes(take(raw, 28)),
            op: u16::from_le_bytes(take(raw, 30)),
            flags: u32::from_le_bytes(take(raw, 32)),
            buf_alloc: u32::from_le_bytes(take(raw, 36)),
            fwd_cnt: u32::from_le_bytes(take(raw, 40)),
        }
    }

    /// Encodes the wire form.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut raw = [0u8; HEADER_LEN];
        put(&mut raw, 0, &self.src_cid.to_le_bytes());
        put(&mut raw, 8, &self.dst_cid.to_le_bytes());
        put(&mut raw, 16, &self.src_port.to_le_bytes());
        put(&mut raw, 20, &self.dst_port.to_le_bytes());
        put(&mut raw, 24, &self.len.to_le_bytes());
        put(&mut raw, 28, &self.kind.to_le_bytes());
        put(&mut raw, 30, &self.op.to_le_bytes());
        put(&mut raw, 32, &self.flags.to_le_bytes());
        put(&mut raw, 36, &self.buf_alloc.to_le_bytes());
        put(&mut raw, 40, &self.fwd_cnt.to_le_bytes());
        raw
    }
}

/// Why a chain could not carry a packet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    /// A tx chain with a device-writable buffer, or an rx chain with a
    /// device-readable one.
    #[error("buffer in the wrong direction")]
    Direction,
    /// Fewer bytes than a header.
    #[error("chain shorter than a packet header")]
    Short,
    /// `len` beyond [`MAX_PAYLOAD`] or beyond what the chain holds.
    #[error("payload length {0} does not fit the chain")]
    BadLength(u32),
    /// Guest memory could not be accessed.
    #[error("guest memory access failed")]
    Memory,
}

/// Total length of `segments`, all of which must be `writable` (or all
/// device-readable).
pub fn capacity(segments: &[Segment], writable: bool) -> Result<usize, PacketError> {
    if segments.iter().any(|s| s.writable != writable) {
        return Err(PacketError::Direction);
    }
    Ok(segments.iter().map(|s| s.len as usize).sum())
}

/// Visits the guest ranges that make up bytes `offset..offset + len` of the
/// chain's concatenated buffers, with the position of each in that window.
fn ranges(
    segments: &[Segment],
    mut offset: usize,
    len: usize,
    mut visit: impl FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), PacketError>,
) -> Result<(), PacketError> {
    let mut done = 0;
    for segment in segments {
        if done == len {
            break;
        }
        let seg_len = segment.len as usize;
        if offset >= seg_len {
            offset -= seg_len;
            continue;
        }
        let step = (seg_len - offset).min(len - done);
        visit(
            GuestAddress(segment.addr.0 + offset as u64),
            done..done + step,
        )?;
        done += step;
        offset = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(PacketError::Short)
    }
}

/// Reads one packet from a tx chain: the header, then exactly `len` payload
/// bytes, which must fit both [`MAX_PAYLOAD`] and the chain.
pub fn read(mem: &GuestMemory, segments: &[Segment]) -> Result<(Header, Vec<u8>), PacketError> {
    let total = capacity(segments, false)?;
    if total < HEADER_LEN {
        return Err(PacketError::Short);
    }
    let mut raw = [0u8; HEADER_LEN];
    ranges(segments, 0, HEADER_LEN, |addr, at| {
        let buf = raw.get_mut(at).ok_or(PacketError::Memory)?;
        mem.read_slice(buf, addr).map_err(|_| PacketError::Memory)
    })?;
    let header = Header::from_bytes(&raw);
    let len = header.len as usize;
    if len > MAX_PAYLOAD || len > total - HEADER_LEN {
        return Err(PacketError::BadLength(header.len));
    }
    let mut payload = vec![0u8; len];
    ranges(segments, HEADER_LEN, len, |addr, at| {
        let buf = payload.get_mut(at).ok_or(PacketError::Memory)?;
        mem.read_slice(buf, addr).map_err(|_| PacketError::Memory)
    })?;
    Ok((header, payload))
}

/// Writes `header` and `payload` into an rx chain (the caller made sure
/// they fit); returns the used length.
pub fn write(
    mem: &GuestMemory,
    segments: &[Segment],
    header: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    let raw = header.to_bytes();
    ranges(segments, 0, HEADER_LEN, |addr, at| {
        let buf = raw.get(at).ok_or(PacketError::Memory)?;
        mem.write_slice(buf, addr).map_err(|_| PacketError::Memory)
    })?;
    ranges(segments, HEADER_LEN, payload.len(), |addr, at| {
        let buf = payload.get(at).ok_or(PacketError::Memory)?;
        mem.write_slice(buf, addr).map_err(|_| PacketError::Memory)
    })?;
    u32::try_from(HEADER_LEN + payload.len()).map_err(|_| PacketError::Memory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::memory;

    fn seg(addr: u64, len: u32, writable: bool) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
            writable,
        }
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 7,
            dst_port: 9,
            len: 5,
            kind: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 1,
            buf_alloc: 100,
            fwd_cnt: 42,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[30], 5);
    }

    #[test]
    fn packet_spans_descriptors_both_ways() {
        let mem = memory();
        let h = Header {
            len: 6,
            op: Op::Rw as u16,
            ..Header::default()
        };
        let rx = [
            seg(0x1000, 10, true),
            seg(0x2000, 36, true),
            seg(0x3000, 8, true),
        ];
        assert_eq!(write(&mem, &rx, &h, b"abcdef"), Ok(50));
        let tx: Vec<Segment> = rx.iter().map(|s| seg(s.addr.0, s.len, false)).collect();
        assert_eq!(read(&mem, &tx), Ok((h, b"abcdef".to_vec())));
    }

    #[test]
    fn length_beyond_chain_is_refused() {
        let mem = memory();
        let h = Header {
            len: 4,
            ..Header::default()
        };
        mem.write_slice(&h.to_bytes(), GuestAddress(0x1000))
            .expect("header");
        let tx = [seg(0x1000, 46, false)];
        assert_eq!(read(&mem, &tx), Err(PacketError::BadLength(4)));
        assert_eq!(
            read(&mem, &[seg(0x1000, 40, false)]),
            Err(PacketError::Short)
        );
        assert_eq!(
            read(&mem, &[seg(0x1000, 48, true)]),
            Err(PacketError::Direction)
        );
    }
}
