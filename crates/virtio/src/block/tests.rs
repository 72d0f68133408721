//! virtio-blk through the transport's registers and real rings.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::testing::{CountingIrq, DATA, Driver, Ring, transport};
use sie_devices::BusDevice;

const HEADER: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const STATUS: u64 = DATA + 0x100;
const DISK_LEN: usize = 64 * 1024;

/// A scratch image of `len` bytes, unlinked at once so nothing is left
/// behind; opened read-write unless `writable` is false.
fn image(len: usize, writable: bool) -> File {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let path = std::env::temp_dir().join(format!("sie-blk-{}-{n}.img", std::process::id()));
    let mut f = File::create(&path).expect("create image");
    f.write_all(&vec![0xa5; len]).expect("fill image");
    let file = OpenOptions::new()
        .read(true)
        .write(writable)
        .open(&path)
        .expect("open image");
    std::fs::remove_file(&path).expect("unlink image");
    file
}

struct Rig {
    t: crate::VirtioMmioTransport<Block>,
    mem: crate::GuestMemory,
    irq: std::sync::Arc<CountingIrq>,
    ring: Ring,
    next: u16,
}

impl Rig {
    fn new(block: Block) -> Self {
        let (t, mem, irq) = transport(block);
        let ring = Ring::new(0x1000, 16);
        Driver::new(&t).start(&[ring]);
        Self {
            t,
            mem,
            irq,
            ring,
            next: 0,
        }
    }

    fn driver(&self) -> Driver<'_, Block> {
        Driver::new(&self.t)
    }

    /// Submits header(kind, sector) + `data` + status; returns (status byte,
    /// used length).
    fn request(&mut self, kind: u32, sector: u64, data: &[(u64, u32, bool)]) -> (u8, u32) {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&header, GuestAddress(HEADER))
            .expect("header");
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS))
            .expect("status");
        let mut chain = vec![(HEADER, 16, false)];
        chain.extend_from_slice(data);
        chain.push((STATUS, 1, true));
        self.submit(&chain)
    }

    fn submit(&mut self, chain: &[(u64, u32, bool)]) -> (u8, u32) {
        self.ring.set_chain(&self.mem, 0, chain);
        self.ring.publish(&self.mem, &[0]);
        self.driver().notify(0);
        let (id, len) = self.ring.used(&self.mem, self.next);
        self.next += 1;
        assert_eq!(id, 0);
        (
            self.mem.read_obj(GuestAddress(STATUS)).expect("status"),
            len,
        )
    }
}

fn block(len: usize) -> Block {
    Block::new(image(len, true), false, "drive0").expect("block")
}

#[test]
fn write_then_read_back() {
    let mut rig = Rig::new(block(DISK_LEN));
    let pattern: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
    rig.mem
        .write_slice(&pattern, GuestAddress(BUF))
        .expect("data");
    let out = rig.request(
        VIRTIO_BLK_T_OUT,
        2,
        &[(BUF, 512, false), (BUF + 512, 512, false)],
    );
    assert_eq!(out, (VIRTIO_BLK_S_OK as u8, 1));
    let dest = BUF + 0x8000;
    let got = rig.request(VIRTIO_BLK_T_IN, 2, &[(dest, 1024, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_OK as u8, 1025));
    let mut back = vec![0u8; 1024];
    rig.mem
        .read_slice(&mut back, GuestAddress(dest))
        .expect("read");
    assert_eq!(back, pattern);
    let c = rig.t.counters();
    assert_eq!(
        (c.bytes_written, c.bytes_read, c.requests, c.errors),
        (1024, 1024, 2, 0)
    );
    assert_eq!(rig.irq.count(), 2);
    assert_eq!(rig.driver().take_interrupt(), VIRTIO_MMIO_INT_VRING);
}

#[test]
fn reaches_the_backing_file() {
    let file = image(DISK_LEN, true);
    let mut check = file.try_clone().expect("clone");
    let mut rig = Rig::new(Block::new(file, false, "d").expect("block"));
    rig.mem
        .write_slice(&[7u8; 512], GuestAddress(BUF))
        .expect("data");
    rig.request(VIRTIO_BLK_T_OUT, 1, &[(BUF, 512, false)]);
    let mut sector = [0u8; 512];
    check.seek(SeekFrom::Start(512)).expect("seek");
    check.read_exact(&mut sector).expect("read");
    assert_eq!(sector, [7u8; 512]);
}

#[test]
fn flush_and_get_id() {
    let mut rig = Rig::new(block(DISK_LEN));
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]), (0, 1));
    let got = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_OK as u8, 21));
    let mut id = [0xffu8; 20];
    rig.mem.read_slice(&mut id, GuestAddress(BUF)).expect("id");
    assert_eq!(&id[..6], b"drive0");
    assert!(id[6..].iter().all(|&b| b == 0));
}

#[test]
fn read_only_refuses_writes_but_reads() {
    let b = Block::new(image(DISK_LEN, false), true, "ro").expect("block");
    assert_ne!(b.features() & (1 << VIRTIO_BLK_F_RO), 0);
    let mut rig = Rig::new(b);
    let out = rig.request(VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]);
    assert_eq!(out, (VIRTIO_BLK_S_IOERR as u8, 1));
    let got = rig.request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_OK as u8, 513));
    assert_eq!(rig.t.counters().bytes_written, 0);
}

#[test]
fn sector_past_the_end_fails() {
    let mut rig = Rig::new(block(DISK_LEN));
    let last = (DISK_LEN as u64 / 512) - 1;
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, last, &[(BUF, 512, true)]).0, 0);
    let cases = [
        (last, 1024),
        (last + 1, 512),
        (u64::MAX, 512),
        (u64::MAX / 512, 512),
    ];
    for (sector, len) in cases {
        let got = rig.request(VIRTIO_BLK_T_IN, sector, &[(BUF, len, true)]);
        assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1), "sector {sector}");
    }
    assert_eq!(rig.t.counters().errors, 4);
}

#[test]
fn wrong_directions_fail() {
    let mut rig = Rig::new(block(DISK_LEN));
    // Data buffer the device would have to write but may only read.
    let got = rig.request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, false)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    let got = rig.request(VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    let got = rig.request(VIRTIO_BLK_T_GET_ID, 0, &[(BUF, 20, false)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    // Header in a write-only descriptor.
    rig.mem
        .write_obj(0xffu8, GuestAddress(STATUS))
        .expect("status");
    let got = rig.submit(&[(HEADER, 16, true), (BUF, 512, true), (STATUS, 1, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    // Short header.
    let got = rig.submit(&[(HEADER, 8, false), (STATUS, 1, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    // Status in a read-only descriptor: nowhere to report, chain dropped.
    rig.mem
        .write_obj(0xeeu8, GuestAddress(STATUS))
        .expect("status");
    let got = rig.submit(&[(HEADER, 16, false), (STATUS, 1, false)]);
    assert_eq!(got, (0xee, 0));
    // A lone header: dropped too.
    assert_eq!(rig.submit(&[(HEADER, 16, false)]).1, 0);
    assert_eq!(rig.t.counters().errors, 7);
    assert_eq!(rig.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn unknown_request_is_unsupported() {
    let mut rig = Rig::new(block(DISK_LEN));
    let got = rig.request(VIRTIO_BLK_T_DISCARD, 0, &[(BUF, 16, false)]);
    assert_eq!(got, (VIRTIO_BLK_S_UNSUPP as u8, 1));
    let got = rig.request(0xdead_beef, 0, &[]);
    assert_eq!(got, (VIRTIO_BLK_S_UNSUPP as u8, 1));
}

#[test]
fn host_io_error_is_ioerr_and_device_keeps_working() {
    // The image is open read-only although the device is not: pwrite fails.
    let mut rig = Rig::new(Block::new(image(DISK_LEN, false), false, "d").expect("block"));
    let got = rig.request(VIRTIO_BLK_T_OUT, 0, &[(BUF, 512, false)]);
    assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1));
    let got = rig.request(VIRTIO_BLK_T_IN, 0, &[(BUF, 512, true)]);
    assert_eq!(got, (VIRTIO_BLK_S_OK as u8, 513));
    assert_eq!(rig.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn config_space_reads_and_refuses_writes() {
    let (t, _mem, _irq) = transport(block(DISK_LEN + 100));
    let config = u64::from(VIRTIO_MMIO_CONFIG);
    let mut dword = [0u8; 4];
    t.read(config, &mut dword);
    assert_eq!(u32::from_le_bytes(dword), (DISK_LEN / 512) as u32);
    let mut byte = [0u8; 1];
    t.read(config + 1, &mut byte);
    assert_eq!(byte[0], ((DISK_LEN / 512) >> 8) as u8);
    let mut word = [0u8; 2];
    t.read(config + 20, &mut word);
    assert_eq!(u16::from_le_bytes(word), 512);
    t.read(config + 12, &mut dword);
    assert_eq!(u32::from_le_bytes(dword), BLOCK_SEG_MAX);
    assert_eq!(t.counters().invalid_accesses, 0);
    // Eight bytes at once, straddling the end, past the end.
    let mut qword = [0xffu8; 8];
    t.read(config, &mut qword);
    assert_eq!(qword, [0; 8]);
    t.read(config + 22, &mut dword);
    t.read(config + 0x100, &mut dword);
    assert_eq!(u32::from_le_bytes(dword), 0);
    // Writes: capacity is not the driver's to change.
    t.write(config, &[0xff; 4]);
    t.read(config, &mut dword);
    assert_eq!(u32::from_le_bytes(dword), (DISK_LEN / 512) as u32);
    assert_eq!(t.counters().invalid_accesses, 4);
}

#[test]
fn swapping_the_backing_file_updates_capacity_and_interrupts() {
    let rig = Rig::new(block(DISK_LEN));
    let d = rig.driver();
    let generation = d.read(VIRTIO_MMIO_CONFIG_GENERATION);
    rig.t
        .swap_backing_file(image(2 * DISK_LEN, true))
        .expect("swap");
    assert_eq!(d.read(VIRTIO_MMIO_CONFIG), (2 * DISK_LEN / 512) as u32);
    assert_ne!(d.read(VIRTIO_MMIO_CONFIG_GENERATION), generation);
    assert_eq!(d.take_interrupt(), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(rig.irq.count(), 1);
}
