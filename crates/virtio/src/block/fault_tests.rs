//! virtio-blk over backing files that fail underneath it, for real: a
//! small tmpfs that fills up (ENOSPC) and an image truncated by someone
//! else (reads past the new end fail). Each failure must reach the guest
//! as VIRTIO_BLK_S_IOERR, be counted, and leave the device serving. The
//! test machine runs tests as root, which mounting a tmpfs needs.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress};

use super::Block;
use crate::testing::{DATA, Driver, Ring, transport};

const HEADER: u64 = DATA;
const STATUS: u64 = DATA + 0x100;
const BUF: u64 = DATA + 0x1_0000;
const CHUNK: u32 = 64 * 1024;

/// A tmpfs of `size_kib` KiB mounted on a fresh directory, unmounted and
/// removed when dropped.
struct SmallFs {
    dir: PathBuf,
}

impl SmallFs {
    fn mount(name: &str, size_kib: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("sie-fault-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let c = |s: &str| CString::new(s).expect("no NUL");
        let target = c(dir.to_str().expect("UTF-8 path"));
        let (source, fstype, data) = (c("tmpfs"), c("tmpfs"), c(&format!("size={size_kib}k")));
        // SAFETY: every pointer is a live NUL-terminated string for the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: a live NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A sparse image of `len` bytes at `path`, opened read-write.
fn sparse_image(path: &Path, len: u64) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create image");
    file.set_len(len).expect("size image");
    file
}

/// The device under test over `file`. Kept in one place with [`settle`]:
/// how a device is made and how its requests finish are what the block
/// engine work changes.
fn device(file: File, id: &str) -> Block {
    super::tests::started(Block::new(file, id, super::tests::WRITEBACK).expect("block"))
}

/// Lets the device finish what the driver handed it (requests run on the
/// drive's engine; this waits for all of them).
fn settle(t: &crate::VirtioMmioTransport<Block>) {
    t.quiesce();
}

struct Rig {
    t: crate::VirtioMmioTransport<Block>,
    mem: crate::GuestMemory,
    ring: Ring,
    next: u16,
}

impl Rig {
    fn new(block: Block) -> Self {
        let (t, mem, _irq) = transport(block);
        let ring = Ring::new(0x1000, 16);
        Driver::new(&t).start(&[ring]);
        Self {
            t,
            mem,
            ring,
            next: 0,
        }
    }

    /// One request of `kind` at `sector` with a `len`-byte data buffer;
    /// returns the status byte.
    fn request(&mut self, kind: u32, sector: u64, len: u32) -> u8 {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem
            .write_slice(&header, GuestAddress(HEADER))
            .expect("header");
        self.mem
            .write_obj(0xffu8, GuestAddress(STATUS))
            .expect("status");
        let to_guest = kind == VIRTIO_BLK_T_IN;
        let mut chain = vec![(HEADER, 16, false)];
        if len > 0 {
            chain.push((BUF, len, to_guest));
        }
        chain.push((STATUS, 1, true));
        let head = self.next % 16;
        self.ring.set_chain(&self.mem, head, &chain);
        self.ring.publish(&self.mem, &[head]);
        Driver::new(&self.t).notify(0);
        settle(&self.t);
        assert_eq!(self.ring.used_idx(&self.mem), self.next.wrapping_add(1));
        self.next = self.next.wrapping_add(1);
        self.mem.read_obj(GuestAddress(STATUS)).expect("status")
    }

    fn errors(&self) -> u64 {
        self.t.counters().errors
    }
}

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

#[test]
fn a_full_filesystem_fails_writes_with_ioerr_and_the_disk_keeps_serving() {
    let fs = SmallFs::mount("enospc", 320);
    // Another file takes 128 KiB of the filesystem, to be removed later:
    // twice a write, so the room that comes back holds the failed write
    // with slack (with exactly one write's worth, the rewrite failed once
    // in a loaded CI run; the cause in tmpfs's accounting is not pinned).
    std::fs::write(fs.path("filler"), vec![1u8; 128 * 1024]).expect("filler");
    // A 1 MiB sparse image on a 320 KiB filesystem: it fills after about
    // a fifth of the disk has been written.
    let file = sparse_image(&fs.path("disk.img"), 1 << 20);
    let mut rig = Rig::new(device(file, "full"));
    let sector = |n: u64| n * u64::from(CHUNK) / 512;
    let mut first_failure = None;
    for n in 0..16u64 {
        let status = rig.request(VIRTIO_BLK_T_OUT, sector(n), CHUNK);
        if status == IOERR {
            first_failure = Some(n);
            break;
        }
        assert_eq!(status, OK, "write {n}");
    }
    let failed_at = first_failure.expect("the filesystem never filled up");
    assert!(
        failed_at >= 2,
        "writes failed before the filesystem was full"
    );
    assert_eq!(rig.errors(), 1, "the host error is counted");
    // What was written before the fault reads back, the device flushes,
    // and blocks already allocated can be rewritten on the full disk.
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, 0, CHUNK), OK);
    assert_eq!(rig.request(VIRTIO_BLK_T_FLUSH, 0, 0), OK);
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 0, CHUNK), OK);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_OUT, sector(failed_at), CHUNK),
        IOERR
    );
    assert_eq!(rig.errors(), 2);
    // Room comes back: the same write now succeeds, with no reset needed.
    std::fs::remove_file(fs.path("filler")).expect("remove filler");
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, sector(failed_at), CHUNK), OK);
    assert_eq!(rig.errors(), 2);
    assert_eq!(rig.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn an_image_truncated_underneath_fails_reads_with_ioerr() {
    let fs = SmallFs::mount("truncated", 1024);
    let path = fs.path("disk.img");
    let file = sparse_image(&path, 512 * 1024);
    let mut rig = Rig::new(device(file, "cut"));
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, 256, CHUNK), OK);
    // Someone else cuts the image to 64 KiB under the running device; the
    // device still believes in its old capacity.
    File::options()
        .write(true)
        .open(&path)
        .expect("open again")
        .set_len(64 * 1024)
        .expect("truncate");
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, 256, CHUNK), IOERR);
    assert_eq!(rig.errors(), 1);
    // What is left still reads; the device needs no reset.
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, 0, CHUNK), OK);
    assert_eq!(rig.errors(), 1);
    assert_eq!(rig.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

/// A loop device over `image`, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(image: &Path) -> Self {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .expect("run losetup (util-linux)");
        assert!(out.status.success(), "losetup: {out:?}");
        Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// A block device (here a loop device; a device-mapper volume alike) has
/// no length in its metadata: the drive must still get its full size, and
/// a failure of the device underneath still be an I/O error.
#[test]
fn a_block_device_backs_a_drive_at_its_full_size() {
    let fs = SmallFs::mount("loop", 1024);
    let image = fs.path("disk.img");
    drop(sparse_image(&image, 512 * 1024));
    let device_node = Loop::attach(&image);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&device_node.0)
        .expect("open the loop device");
    assert_eq!(file.metadata().expect("stat").len(), 0, "no length in stat");
    let mut rig = Rig::new(device(file, "loop"));
    // Capacity in sectors, the config space's first field (read as two
    // 32-bit halves, as drivers do).
    let config = u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_CONFIG);
    let (mut low, mut high) = ([0u8; 4], [0u8; 4]);
    sie_devices::BusDevice::read(&rig.t, config, &mut low);
    sie_devices::BusDevice::read(&rig.t, config + 4, &mut high);
    let capacity = u64::from(u32::from_le_bytes(low)) | u64::from(u32::from_le_bytes(high)) << 32;
    assert_eq!(capacity, 512 * 1024 / 512, "sectors");
    assert_eq!(rig.request(VIRTIO_BLK_T_OUT, 900, CHUNK / 4), OK);
    assert_eq!(rig.request(VIRTIO_BLK_T_IN, 900, CHUNK / 4), OK);
    assert_eq!(
        rig.request(VIRTIO_BLK_T_IN, 1024, 512),
        IOERR,
        "past the end"
    );
    assert_eq!(rig.errors(), 1);
}
