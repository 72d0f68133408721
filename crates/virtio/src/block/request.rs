//! One virtio-blk request: header (type, sector), data buffers, status byte.
//!
//! Every check happens here, on the event thread, before any I/O, so a
//! malformed request never reaches the disk or an engine: what needs the
//! disk becomes an [`IoRequest`], the rest is answered at once. Host I/O
//! errors become VIRTIO_BLK_S_IOERR and the device keeps serving. Guest
//! memory is only reached through vm-memory's checked accessors.

use std::fs::File;
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use super::op::OpKind;
use crate::{GuestMemory, Segment, VirtioCounters};

/// Bytes per virtio-blk sector, whatever the backing store's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header: type, reserved, sector.
const HEADER_LEN: u32 = 16;

/// The backing store as requests see it.
pub struct Disk {
    pub(super) file: Arc<File>,
    /// Usable size in bytes: whole sectors only.
    pub(super) size: u64,
    pub(super) read_only: bool,
    pub(super) serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
    /// Whether flush requests are served (Firecracker's Writeback); when
    /// not, the feature is not offered and a flush is UNSUPP.
    pub(super) flush: bool,
}

/// Outcome of a request: status byte and bytes written into guest buffers
/// (not counting the status byte).
pub struct Done {
    pub status: u32,
    pub written: u32,
}

impl Done {
    fn status(status: u32) -> Self {
        Self { status, written: 0 }
    }
}

/// A checked request that needs the disk.
pub struct IoRequest {
    pub kind: OpKind,
    /// Byte offset in the image.
    pub offset: u64,
    /// Data buffers, all in the right direction.
    pub data: Vec<Segment>,
    /// Their total length, which fits the disk and a u32.
    pub len: u32,
}

/// What to do with a chain.
pub enum Parsed {
    /// Nowhere to report a status: return the chain with length 0.
    Dropped,
    /// Answered without the disk.
    Done(GuestAddress, Done),
    /// Handed to the engine; its status goes at the address.
    Io(GuestAddress, IoRequest),
}

/// Checks one chain and says what it asks for.
pub fn parse(disk: &Disk, mem: &GuestMemory, buffers: &[Segment]) -> Parsed {
    let (Some(status), Some(header)) = (buffers.last(), buffers.first()) else {
        return Parsed::Dropped;
    };
    if buffers.len() < 2 || !status.writable {
        return Parsed::Dropped;
    }
    // The status is the request's final byte.
    let at = GuestAddress(status.addr.0 + u64::from(status.len) - 1);
    let data = buffers.get(1..buffers.len() - 1).unwrap_or_default();
    let Some((request, sector)) = read_header(mem, header) else {
        return Parsed::Done(at, Done::status(VIRTIO_BLK_S_IOERR));
    };
    let io = |kind| match checked_range(disk, sector, data, kind == OpKind::Read) {
        // Nothing to move: no need for the disk.
        Some((_, 0)) => Parsed::Done(at, Done::status(VIRTIO_BLK_S_OK)),
        Some((offset, len)) => Parsed::Io(
            at,
            IoRequest {
                kind,
                offset,
                data: data.to_vec(),
                len,
            },
        ),
        None => Parsed::Done(at, Done::status(VIRTIO_BLK_S_IOERR)),
    };
    match request {
        VIRTIO_BLK_T_IN => io(OpKind::Read),
        VIRTIO_BLK_T_OUT if disk.read_only => Parsed::Done(at, Done::status(VIRTIO_BLK_S_IOERR)),
        VIRTIO_BLK_T_OUT => io(OpKind::Write),
        VIRTIO_BLK_T_FLUSH if disk.flush => Parsed::Io(
            at,
            IoRequest {
                kind: OpKind::Flush,
                offset: 0,
                data: Vec::new(),
                len: 0,
            },
        ),
        VIRTIO_BLK_T_GET_ID => Parsed::Done(at, get_id(disk, mem, data)),
        // Flushes too when the feature was not offered (cache_type Unsafe).
        _ => Parsed::Done(at, Done::status(VIRTIO_BLK_S_UNSUPP)),
    }
}

/// Writes a request's status byte; returns the used length (0 when the
/// status cannot be written). Counts a failed request as an error.
pub fn finish(mem: &GuestMemory, at: GuestAddress, done: &Done, counters: &VirtioCounters) -> u32 {
    if done.status != VIRTIO_BLK_S_OK {
        counters.error();
    }
    if mem.write_obj(done.status as u8, at).is_err() {
        counters.error();
        return 0;
    }
    done.written.saturating_add(1)
}

/// (type, sector) from a device-readable header of at least 16 bytes.
fn read_header(mem: &GuestMemory, header: &Segment) -> Option<(u32, u64)> {
    if header.writable || header.len < HEADER_LEN {
        return None;
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, header.addr).ok()?;
    let (kind, rest) = raw.split_first_chunk::<4>()?;
    let sector = rest.last_chunk::<8>()?;
    Some((u32::from_le_bytes(*kind), u64::from_le_bytes(*sector)))
}

/// IN (`to_guest`) or OUT: every data buffer in the right direction and the
/// whole range inside the disk; (byte offset, length).
fn checked_range(disk: &Disk, sector: u64, data: &[Segment], to_guest: bool) -> Option<(u64, u32)> {
    if data.iter().any(|s| s.writable != to_guest) {
        return None;
    }
    let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    let start = sector.checked_mul(SECTOR_SIZE)?;
    let end = start.checked_add(total)?;
    if end > disk.size {
        return None;
    }
    Some((start, u32::try_from(total).ok()?))
}

/// The drive id, zero padded, into the first (device-writable) data buffer.
fn get_id(disk: &Disk, mem: &GuestMemory, data: &[Segment]) -> Done {
    let Some(buffer) = data.first().filter(|s| s.writable) else {
        return Done::status(VIRTIO_BLK_S_IOERR);
    };
    let n = (buffer.len as usize).min(disk.serial.len());
    let Some(id) = disk.serial.get(..n) else {
        return Done::status(VIRTIO_BLK_S_IOERR);
    };
    match mem.write_slice(id, buffer.addr) {
        Ok(()) => Done {
            status: VIRTIO_BLK_S_OK,
            written: n as u32,
        },
        Err(_) => Done::status(VIRTIO_BLK_S_IOERR),
    }
}
