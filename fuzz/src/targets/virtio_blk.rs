//! virtio-blk through its transport, on a small in-memory disk (a memfd):
//! requests whose type, sector, buffer count, lengths and directions come
//! from the input. A request the device completed has a valid status byte
//! and a used length within its writable buffers.

use std::fs::File;
use std::os::fd::FromRawFd;

use sie_virtio::VirtioDevice;
use sie_virtio::block::{Block, BlockOptions, CacheType, IoEngine, SECTOR_SIZE};
use sie_virtio::testing::transport;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use super::scenario::{self, Chain, length};
use crate::input::Input;

/// Disk size: 64 sectors plus a partial one the device must not expose.
const DISK_LEN: u64 = 64 * SECTOR_SIZE + 100;

/// A fresh anonymous file of `len` bytes (nothing left on the host).
pub fn memfd(len: u64) -> File {
    // SAFETY: a constant NUL-terminated name; the call has no other inputs.
    let fd = unsafe { libc::memfd_create(c"sie-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(len).expect("sizing the disk");
    file
}

/// A block device on a `len`-byte memfd with its Sync engine's worker
/// running (no seccomp filter), as every block target starts one.
pub fn started_block(len: u64, id: &str, options: BlockOptions) -> Block {
    let mut device = Block::new(memfd(len), id, options).expect("block device");
    device
        .start_worker("fuzz-blk".into(), Box::new(|| Ok(())))
        .expect("block worker");
    device
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let options = BlockOptions {
        read_only: input.bool(),
        cache: if input.bool() {
            CacheType::Writeback
        } else {
            CacheType::Unsafe
        },
        // The worker: io_uring would leave the process's own seccomp-free
        // fuzzing no different, and a ring per input is slow to set up.
        engine: IoEngine::Sync,
    };
    let id = String::from_utf8_lossy(input.chunk(24)).into_owned();
    let device = started_block(DISK_LEN, &id, options);
    let offered = device.features();
    let capacity = device.capacity();
    let (t, mem, _irq) = transport(device);
    scenario::run(
        &t,
        &mem,
        offered,
        &mut input,
        |input, alloc, mem| {
            let kind = match input.u8() % 8 {
                0 | 1 => VIRTIO_BLK_T_IN,
                2 | 3 => VIRTIO_BLK_T_OUT,
                4 => VIRTIO_BLK_T_FLUSH,
                5 => VIRTIO_BLK_T_GET_ID,
                _ => input.u32(),
            };
            let sector = match input.u8() % 4 {
                0 => input.u64(),
                1 => capacity.saturating_sub(u64::from(input.below(4))),
                _ => u64::from(input.below(capacity as u32 + 1)),
            };
            let header_len = if input.u8() == 0xff {
                input.below(32)
            } else {
                16
            };
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&kind.to_le_bytes());
            header[8..].copy_from_slice(&sector.to_le_bytes());
            let at = alloc.take(header_len);
            let _ = mem.write_slice(&header[..header_len.min(16) as usize], GuestAddress(at));
            let mut chain: Chain = vec![(at, header_len, input.u8() == 0xff)];
            let to_guest = kind != VIRTIO_BLK_T_OUT;
            for _ in 0..input.below(4) {
                let len = length(input);
                let writable = to_guest ^ (input.u8() == 0xff);
                let at = alloc.take(len);
                if !writable {
                    let fill = input.u8();
                    let _ = mem.write_slice(&vec![fill; len.min(8192) as usize], GuestAddress(at));
                }
                chain.push((at, len, writable));
            }
            if input.u8() != 0xff {
                let len = if input.u8() == 0xff {
                    input.below(8)
                } else {
                    1
                };
                chain.push((alloc.take(len), len, input.u8() != 0xff));
            }
            chain
        },
        |mem, chain, used| {
            let writable: u64 = chain
                .iter()
                .skip(1)
                .filter(|b| b.2)
                .map(|&(_, len, _)| u64::from(len))
                .sum();
            assert!(
                u64::from(used) <= writable,
                "blk used {used} of {writable} writable bytes"
            );
            if used == 0 {
                return;
            }
            // Completed: the last byte of the last buffer holds the status.
            let &(addr, len, _) = chain.last().expect("a used chain has buffers");
            let status: u8 = mem
                .read_obj(GuestAddress(addr + u64::from(len) - 1))
                .expect("status byte in memory");
            assert!(
                [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP]
                    .contains(&u32::from(status)),
                "blk status {status}"
            );
        },
    );
}
