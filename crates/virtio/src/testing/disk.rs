//! Scratch disk images for block devices in tests.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A scratch image of `len` bytes of 0xa5, unlinked at once so nothing is
/// left behind; opened read-write unless `writable` is false.
pub fn disk_image(len: usize, writable: bool) -> File {
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
