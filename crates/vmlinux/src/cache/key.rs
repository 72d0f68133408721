//! The cache key of a bzImage: SHA-256 over the entry format, the file's
//! identity and version (device, inode, size, modification and change times
//! to the nanosecond), its setup header and the last bytes of its payload.
//!
//! Not a hash of the whole file: a hit then costs one `fstat` and two small
//! reads instead of reading and hashing the whole bzImage (8 MiB for
//! Debian's), which took seconds on a slow host (nested TCG).
//!
//! Why identity is enough: the change time cannot be set by users and moves
//! on every write, so a rewritten file gets a new key. The header and the
//! payload's end (which records the uncompressed size for every compression
//! the kernel uses) also tell apart two kernels that share an identity on a
//! filesystem with coarse timestamps. What it cannot see: a file changed in
//! place on a filesystem that keeps neither time (some network filesystems)
//! with the same size, header and payload end; delete the cache directory
//! or use `--no-host-decompress` there.

use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};

use sha2::{Digest, Sha256};

use crate::header::{bzimage_header, payload_span};

/// Names what an entry holds; a new sie version or entry layout never
/// reuses an older one's entries (eviction removes them).
const FORMAT: &str = concat!("sie-vmlinux ", env!("CARGO_PKG_VERSION"), " entry 2");
/// How many bytes of the payload's end go into the key.
const TAIL_BYTES: usize = 64;

/// The key (64 hex digits) of the bzImage open as `image`, whose metadata is
/// `meta` and whose first bytes are `header`.
pub(super) fn entry_key(image: &File, meta: &Metadata, header: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(FORMAT.as_bytes());
    for field in [
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime() as u64,
        meta.mtime_nsec() as u64,
        meta.ctime() as u64,
        meta.ctime_nsec() as u64,
    ] {
        hash.update(field.to_le_bytes());
    }
    hash.update(header);
    hash.update(payload_tail(image, header));
    format!("{:x}", hash.finalize())
}

/// The last bytes of the payload, as far as the header says where it is and
/// the file holds them; empty otherwise (decompression reports why).
fn payload_tail(image: &File, header: &[u8]) -> Vec<u8> {
    let Some((offset, length)) = bzimage_header(header).and_then(|h| payload_span(&h).ok()) else {
        return Vec::new();
    };
    let take = length.min(TAIL_BYTES);
    let mut tail = vec![0u8; take];
    let start = (offset + length - take) as u64;
    match image.read_exact_at(&mut tail, start) {
        Ok(()) => tail,
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_header_and_the_payload_end() {
        let path = std::env::temp_dir().join(format!("sie-vmlinux-key-{}", std::process::id()));
        // Protocol 2.15, one setup sector, a 100-byte payload right after it.
        let mut image = vec![0u8; 1024 + 100];
        image[0x1f1] = 1;
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&100u32.to_le_bytes());
        std::fs::write(&path, &image).unwrap();
        let file = File::open(&path).unwrap();
        let meta = file.metadata().unwrap();
        let header = &image[..0x26c];
        let key = entry_key(&file, &meta, header);
        assert_eq!(key.len(), 64);
        assert_eq!(key, entry_key(&file, &meta, header), "not deterministic");
        let mut other = header.to_vec();
        other[0x210] = 0xff;
        assert_ne!(key, entry_key(&file, &meta, &other));
        assert_eq!(payload_tail(&file, header), image[1024 + 36..]);
        let _ = std::fs::remove_file(&path);
    }
}
