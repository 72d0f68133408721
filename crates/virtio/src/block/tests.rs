//! virtio-blk through the transport's registers and real rings, on each
//! engine; `engine_tests.rs` has what is particular to the engines and the
//! cache types.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

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

pub(super) use crate::testing::disk_image as image;

struct Rig {
    t: crate::VirtioMmioTransport<Block>,
    mem: crate::GuestMemory,
    irq: std::sync::Arc<CountingIrq>,
    ring: Ring,
    next: u16,
}

/// `block` with its worker started (no filter in tests).
pub(super) fn started(mut block: Block) -> Block {
    block
        .start_worker("test-blk".into(), Box::new(|| Ok(())))
        .expect("worker");
    block
}

impl Rig {
    fn new(block: Block) -> Self {
        let (t, mem, irq) = transport(started(block));
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
        // Let the engine finish (what a snapshot does; the eventfd path
        // has its own tests).
        self.t.quiesce();
        let (id, len) = self.ring.used(&self.mem, self.next);
        self.next += 1;
        assert_eq!(id, 0);
        (
            self.mem.read_obj(GuestAddress(STATUS)).expect("status"),
            len,
        )
    }
}

/// Writeback, so flushes are served.
pub(super) const WRITEBACK: BlockOptions = BlockOptions {
    read_only: false,
    cache: CacheType::Writeback,
    engine: IoEngine::Sync,
};

fn block(len: usize) -> Block {
    Block::new(image(len, true), "drive0", WRITEBACK).expect("block")
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
    let mut rig = Rig::new(Block::new(file, "d", WRITEBACK).expect("block"));
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
    let options = BlockOptions {
        read_only: true,
        ..WRITEBACK
    };
    let b = Block::new(image(DISK_LEN, false), "ro", options).expect("block");
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
    let mut rig = Rig::new(Block::new(image(DISK_LEN, false), "d", WRITEBACK).expect("block"));
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

// The engines and the cache types.

const ENGINES: [IoEngine; 2] = [IoEngine::Sync, IoEngine::Async];

fn options(engine: IoEngine, cache: CacheType) -> BlockOptions {
    BlockOptions {
        read_only: false,
        cache,
        engine,
    }
}

/// Waits (up to 5 s) until `fd` is readable.
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call.
    unsafe { libc::poll(&mut poll, 1, 5000) > 0 }
}

/// A write end of a pipe as a drive's file: any fsync of it fails
/// (EINVAL), so a test sees whether a flush reached the file.
fn pipe_file() -> File {
    let (_reader, writer) = std::io::pipe().expect("pipe");
    File::from(std::os::fd::OwnedFd::from(writer))
}

/// `count` requests of `kind` on 4 KiB at sector `8 * i` (request i),
/// offered at once, data buffers at [`many_data`].
const MANY_RING: u16 = 128;

fn many_data(i: u64) -> u64 {
    DATA + 0x1000 + i * 0x1000
}

fn many_status(i: u64) -> u64 {
    DATA + i * 0x20 + 0x10
}

fn offer_many(
    t: &crate::VirtioMmioTransport<Block>,
    mem: &crate::GuestMemory,
    ring: &Ring,
    first: u16,
    count: u16,
    kind: u32,
) {
    let mut heads = Vec::new();
    for i in 0..u64::from(count) {
        let at = DATA + i * 0x20;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&(8 * i).to_le_bytes());
        mem.write_slice(&header, GuestAddress(at)).expect("header");
        mem.write_obj(0xffu8, GuestAddress(many_status(i)))
            .expect("status");
        let head = first + 3 * i as u16;
        let writable = kind == VIRTIO_BLK_T_IN;
        ring.set_chain(
            mem,
            head,
            &[
                (at, 16, false),
                (many_data(i), 4096, writable),
                (many_status(i), 1, true),
            ],
        );
        heads.push(head);
    }
    ring.publish(mem, &heads);
    Driver::new(t).notify(0);
}

/// Serves the engine's completions as the event loop does (its eventfd
/// fires, the transport serves the queue) until `want` chains are used.
fn complete_through_the_eventfd(
    t: &crate::VirtioMmioTransport<Block>,
    mem: &crate::GuestMemory,
    ring: &Ring,
    want: u16,
) {
    let fds = t.timer_fds();
    let index = fds.len() - 1;
    while ring.used_idx(mem) != want {
        assert!(
            readable(fds[index]),
            "no completion within 5 s ({} used)",
            ring.used_idx(mem)
        );
        t.timer_event(index);
    }
}

#[test]
fn many_requests_are_in_flight_at_once_on_each_engine() {
    const COUNT: u16 = 32;
    for engine in ENGINES {
        let file = image(usize::from(COUNT) * 4096, true);
        let check = file.try_clone().expect("clone");
        let b = Block::new(file, "d", options(engine, CacheType::Unsafe)).expect("block");
        assert_eq!(b.io_engine(), engine);
        // The Sync worker is not started yet: nothing can complete.
        let (t, mem, irq) = transport(b);
        let ring = Ring::new(0x1000, MANY_RING);
        Driver::new(&t).start(&[ring]);
        for i in 0..u64::from(COUNT) {
            mem.write_slice(&[i as u8 + 1; 4096], GuestAddress(many_data(i)))
                .expect("data");
        }
        offer_many(&t, &mem, &ring, 0, COUNT, VIRTIO_BLK_T_OUT);
        // Every write was taken off the ring and handed to the engine;
        // the event thread answered none of them itself.
        assert_eq!(
            t.with_device(|b| b.in_flight()),
            usize::from(COUNT),
            "{engine:?}"
        );
        assert_eq!(ring.used_idx(&mem), 0, "{engine:?}");
        if engine == IoEngine::Sync {
            t.with_device(|b| b.start_worker("test-blk".into(), Box::new(|| Ok(()))))
                .expect("worker");
        }
        complete_through_the_eventfd(&t, &mem, &ring, COUNT);
        assert_eq!(t.with_device(|b| b.in_flight()), 0);
        for i in 0..u64::from(COUNT) {
            let status: u8 = mem.read_obj(GuestAddress(many_status(i))).expect("status");
            assert_eq!(status, VIRTIO_BLK_S_OK as u8, "{engine:?} write {i}");
            let mut sector = [0u8; 4096];
            check.read_exact_at(&mut sector, i * 4096).expect("image");
            assert!(
                sector.iter().all(|&b| b == i as u8 + 1),
                "{engine:?} write {i} landed"
            );
        }
        assert!(irq.count() >= 1);
        // And back: zeroed buffers, 32 reads at once.
        for i in 0..u64::from(COUNT) {
            mem.write_slice(&[0u8; 4096], GuestAddress(many_data(i)))
                .expect("data");
        }
        offer_many(&t, &mem, &ring, 0, COUNT, VIRTIO_BLK_T_IN);
        complete_through_the_eventfd(&t, &mem, &ring, 2 * COUNT);
        for i in 0..u64::from(COUNT) {
            let mut back = [0u8; 4096];
            mem.read_slice(&mut back, GuestAddress(many_data(i)))
                .expect("read");
            assert!(
                back.iter().all(|&b| b == i as u8 + 1),
                "{engine:?} read {i}"
            );
            let (_, len) = ring.used(&mem, COUNT + i as u16);
            assert_eq!(len, 4097, "{engine:?} read {i}");
        }
        let c = t.counters();
        let total = u64::from(COUNT) * 4096;
        assert_eq!(
            (c.bytes_written, c.bytes_read, c.errors),
            (total, total, 0),
            "{engine:?}"
        );
    }
}

#[test]
fn reads_writes_and_errors_match_on_both_engines() {
    for engine in ENGINES {
        let mut rig = Rig::new(block_with(engine, CacheType::Writeback));
        let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        rig.mem
            .write_slice(&pattern, GuestAddress(BUF))
            .expect("data");
        let out = rig.request(
            VIRTIO_BLK_T_OUT,
            3,
            &[(BUF, 512, false), (BUF + 512, 512, false)],
        );
        assert_eq!(out, (VIRTIO_BLK_S_OK as u8, 1), "{engine:?}");
        let dest = BUF + 0x8000;
        let got = rig.request(VIRTIO_BLK_T_IN, 3, &[(dest, 1024, true)]);
        assert_eq!(got, (VIRTIO_BLK_S_OK as u8, 1025), "{engine:?}");
        let mut back = vec![0u8; 1024];
        rig.mem
            .read_slice(&mut back, GuestAddress(dest))
            .expect("read");
        assert_eq!(back, pattern, "{engine:?}");
        // Past the end: refused before any engine sees it.
        let last = DISK_LEN as u64 / 512;
        let got = rig.request(VIRTIO_BLK_T_IN, last, &[(BUF, 512, true)]);
        assert_eq!(got, (VIRTIO_BLK_S_IOERR as u8, 1), "{engine:?}");
        assert_eq!(
            rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
            (0, 1),
            "{engine:?}"
        );
    }
}

fn block_with(engine: IoEngine, cache: CacheType) -> Block {
    Block::new(image(DISK_LEN, true), "drive0", options(engine, cache)).expect("block")
}

#[test]
fn a_writeback_drive_offers_flush_and_a_flush_is_an_fsync() {
    for engine in ENGINES {
        let b = block_with(engine, CacheType::Writeback);
        assert_ne!(b.features() & (1 << VIRTIO_BLK_F_FLUSH), 0, "{engine:?}");
        assert_eq!(b.cache_type(), CacheType::Writeback);
        let mut rig = Rig::new(b);
        assert_eq!(
            rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
            (VIRTIO_BLK_S_OK as u8, 1)
        );
        // On a file fsync refuses, the flush fails: it did reach fsync.
        let pipe =
            Block::new(pipe_file(), "p", options(engine, CacheType::Writeback)).expect("block");
        let mut rig = Rig::new(pipe);
        assert_eq!(
            rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
            (VIRTIO_BLK_S_IOERR as u8, 1),
            "{engine:?}"
        );
    }
}

#[test]
fn an_unsafe_drive_offers_no_flush_and_answers_one_unsupp() {
    for engine in ENGINES {
        let b = Block::new(pipe_file(), "p", options(engine, CacheType::Unsafe)).expect("block");
        assert_eq!(b.features() & (1 << VIRTIO_BLK_F_FLUSH), 0, "{engine:?}");
        assert_eq!(b.cache_type(), CacheType::Unsafe);
        let mut rig = Rig::new(b);
        // A driver that flushes anyway is told the request is not
        // supported; fsync (which fails on this file) was never called.
        assert_eq!(
            rig.request(VIRTIO_BLK_T_FLUSH, 0, &[]),
            (VIRTIO_BLK_S_UNSUPP as u8, 1),
            "{engine:?}"
        );
        assert_eq!(rig.t.with_device(|b| b.in_flight()), 0);
    }
    // The default is Firecracker's: Unsafe, on the Sync engine.
    let default = BlockOptions::default();
    assert_eq!(
        (default.cache, default.engine),
        (CacheType::Unsafe, IoEngine::Sync)
    );
}

#[test]
fn a_reset_leaves_requests_in_flight_to_finish_unanswered() {
    for engine in ENGINES {
        let b = started(block_with(engine, CacheType::Unsafe));
        let (t, mem, _irq) = transport(b);
        let ring = Ring::new(0x1000, MANY_RING);
        let driver = Driver::new(&t);
        driver.start(&[ring]);
        offer_many(&t, &mem, &ring, 0, 8, VIRTIO_BLK_T_IN);
        driver.write(VIRTIO_MMIO_STATUS, 0);
        assert_eq!(ring.used_idx(&mem), 0, "{engine:?}");
        // The driver starts again on fresh rings elsewhere; the old
        // requests finish and answer nobody, in either ring.
        let fresh = Ring::new(0x2_0000, 16);
        driver.start(&[fresh]);
        let fds = t.timer_fds();
        while t.with_device(|b| b.in_flight()) > 0 {
            assert!(readable(fds[fds.len() - 1]), "{engine:?}: no completion");
            t.timer_event(fds.len() - 1);
        }
        assert_eq!(ring.used_idx(&mem), 0, "{engine:?}");
        assert_eq!(fresh.used_idx(&mem), 0, "{engine:?}");
        // And the device serves the new rings.
        mem.write_obj(0xffu8, GuestAddress(STATUS)).expect("status");
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        mem.write_slice(&header, GuestAddress(HEADER))
            .expect("header");
        fresh.set_chain(
            &mem,
            0,
            &[(HEADER, 16, false), (BUF, 512, true), (STATUS, 1, true)],
        );
        fresh.publish(&mem, &[0]);
        driver.notify(0);
        t.quiesce();
        assert_eq!(fresh.used(&mem, 0), (0, 513), "{engine:?}");
    }
}

/// Makes io_uring_setup fail with ENOSYS on the calling thread, as on a
/// kernel built without io_uring (a seccomp filter, like a container
/// runtime's that refuses io_uring).
fn refuse_io_uring_on_this_thread() {
    let code = |code: u32, k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let mut program = [
        // The system call number (x86_64; this test's host).
        code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0, 0, 0),
        code(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_io_uring_setup as u32,
            0,
            1,
        ),
        code(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
            0,
            0,
        ),
        code(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW, 0, 0),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: plain prctl calls; `prog` points at a valid filter that
    // outlives the call (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ),
            0
        );
    }
}

#[test]
fn an_async_drive_where_io_uring_is_missing_is_refused_in_one_line() {
    let message = std::thread::spawn(|| {
        refuse_io_uring_on_this_thread();
        let options = options(IoEngine::Async, CacheType::Unsafe);
        match Block::new(image(DISK_LEN, true), "d", options) {
            Ok(_) => panic!("an Async drive without io_uring was created"),
            Err(error) => error.to_string(),
        }
    })
    .join()
    .expect("test thread");
    assert!(
        message.contains("io_engine Async needs io_uring"),
        "{message}"
    );
    assert!(message.contains("io_uring_setup"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    // A Sync drive needs no io_uring.
    let sync = std::thread::spawn(|| {
        refuse_io_uring_on_this_thread();
        Block::new(image(DISK_LEN, true), "d", BlockOptions::default()).is_ok()
    })
    .join()
    .expect("test thread");
    assert!(sync);
}
