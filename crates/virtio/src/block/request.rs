//! One virtio-blk request: header (type, sector), data buffers, status byte.
//!
//! Every check happens before any I/O, so a malformed request never touches
//! the disk; host I/O errors become VIRTIO_BLK_S_IOERR and the device keeps
//! serving. Guest memory is only reached through vm-memory's checked
//! accessors, through a bounded bounce buffer so a 4 GiB chain cannot make
//! the VMM allocate 4 GiB.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use crate::{GuestMemory, Segment, VirtioCounters};

/// Bytes per virtio-blk sector, whatever the backing store's block size.
pub const SECTOR_SIZE: u64 = 512;
/// Bounce-buffer size for data transfers.
const CHUNK: usize = 64 * 1024;
/// Length of the request header: type, reserved, sector.
const HEADER_LEN: u32 = 16;

/// The backing store as requests see it.
pub struct Disk {
    pub(super) file: File,
    /// Usable size in bytes: whole sectors only.
    pub(super) size: u64,
    pub(super) read_only: bool,
    pub(super) serial: [u8; VIRTIO_BLK_ID_BYTES as usize],
}

/// Outcome of a request: status byte and bytes written into guest buffers
/// (not counting the status byte).
struct Done {
    status: u32,
    written: u32,
}

impl Done {
    fn status(status: u32) -> Self {
        Self { status, written: 0 }
    }
}

/// Serves one validated chain; returns the used length for the used ring.
pub fn serve(
    disk: &Disk,
    mem: &GuestMemory,
    buffers: &[Segment],
    counters: &VirtioCounters,
) -> u32 {
    let (Some(status), Some(header)) = (buffers.last(), buffers.first()) else {
        counters.error();
        return 0;
    };
    if buffers.len() < 2 || !status.writable {
        // Nowhere to report a status: the chain is dropped.
        counters.error();
        return 0;
    }
    let data = buffers.get(1..buffers.len() - 1).unwrap_or_default();
    let done = match read_header(mem, header) {
        Some((request, sector)) => execute(disk, mem, request, sector, data, counters),
        None => Done::status(VIRTIO_BLK_S_IOERR),
    };
    if done.status != VIRTIO_BLK_S_OK {
        counters.error();
    }
    // The status is the request's final byte.
    let at = GuestAddress(status.addr.0 + u64::from(status.len) - 1);
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

fn execute(
    disk: &Disk,
    mem: &GuestMemory,
    request: u32,
    sector: u64,
    data: &[Segment],
    counters: &VirtioCounters,
) -> Done {
    match request {
        VIRTIO_BLK_T_IN => transfer(disk, mem, sector, data, true, counters),
        VIRTIO_BLK_T_OUT if disk.read_only => Done::status(VIRTIO_BLK_S_IOERR),
        VIRTIO_BLK_T_OUT => transfer(disk, mem, sector, data, false, counters),
        VIRTIO_BLK_T_FLUSH => match disk.file.sync_all() {
            Ok(()) => Done::status(VIRTIO_BLK_S_OK),
            Err(error) => {
                tracing::warn!(%error, "virtio-blk flush failed");
                Done::status(VIRTIO_BLK_S_IOERR)
            }
        },
        VIRTIO_BLK_T_GET_ID => get_id(disk, mem, data),
        _ => Done::status(VIRTIO_BLK_S_UNSUPP),
    }
}

/// IN (`to_guest`) or OUT: every data buffer in the right direction and the
/// whole range inside the disk, checked before the first byte moves.
fn transfer(
    disk: &Disk,
    mem: &GuestMemory,
    sector: u64,
    data: &[Segment],
    to_guest: bool,
    counters: &VirtioCounters,
) -> Done {
    if data.iter().any(|s| s.writable != to_guest) {
        return Done::status(VIRTIO_BLK_S_IOERR);
    }
    let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
    let start = sector.checked_mul(SECTOR_SIZE);
    let in_disk = start
        .and_then(|start| start.checked_add(total))
        .is_some_and(|end| end <= disk.size);
    let (Some(start), true, Ok(written)) = (start, in_disk, u32::try_from(total)) else {
        return Done::status(VIRTIO_BLK_S_IOERR);
    };
    let mut scratch = vec![0u8; CHUNK.min(total as usize)];
    let mut offset = start;
    for segment in data {
        if let Err(error) = copy_segment(disk, mem, segment, offset, to_guest, &mut scratch) {
            tracing::warn!(%error, offset, "virtio-blk I/O failed");
            return Done::status(VIRTIO_BLK_S_IOERR);
        }
        offset += u64::from(segment.len);
    }
    if to_guest {
        counters.read_bytes(total);
        Done {
            status: VIRTIO_BLK_S_OK,
            written,
        }
    } else {
        counters.wrote_bytes(total);
        Done::status(VIRTIO_BLK_S_OK)
    }
}

fn copy_segment(
    disk: &Disk,
    mem: &GuestMemory,
    segment: &Segment,
    disk_offset: u64,
    to_guest: bool,
    scratch: &mut [u8],
) -> io::Result<()> {
    let mut done = 0u64;
    let len = u64::from(segment.len);
    while done < len {
        let step = (len - done).min(scratch.len() as u64) as usize;
        let buf = scratch.get_mut(..step).ok_or(io::ErrorKind::InvalidInput)?;
        let guest = GuestAddress(segment.addr.0 + done);
        if to_guest {
            disk.file.read_exact_at(buf, disk_offset + done)?;
            mem.write_slice(buf, guest).map_err(io::Error::other)?;
        } else {
            mem.read_slice(buf, guest).map_err(io::Error::other)?;
            disk.file.write_all_at(buf, disk_offset + done)?;
        }
        done += step as u64;
    }
    Ok(())
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
