//! Host-side bzImage decompression.
//!
//! A distro kernel ships as a bzImage whose payload the kernel decompresses
//! itself at boot, inside the guest: for Debian's XZ kernel that costs far
//! more than the host needs to do the same, and it is paid at every boot.
//! sie instead reads the bzImage's setup header (as linux-loader's
//! `setup_header`), decompresses the payload on the host once (gzip, bzip2,
//! lzma, xz, lzo, lz4 or zstd), caches the resulting vmlinux under the
//! user's cache directory, and boots the ELF directly. The cache is keyed by
//! the bzImage file's identity and version (device, inode, size, times) plus
//! its setup header and payload end, not by a hash of its content, so a hit
//! costs no read of the whole file; it checks each entry before trusting it
//! and keeps the [`MAX_ENTRIES`] most recently used (see [`KernelCache`]).
//!
//! When it falls back to the classic path (the guest decompresses): only
//! for images whose header predates boot protocol 2.08 (no payload fields),
//! where nothing is known to be wrong. A truncated or corrupt payload is an
//! error instead: the guest's own decompressor would stop with the machine
//! halted, which is worse than a clear message.
//!
//! ```no_run
//! let mut image = std::fs::File::open("/boot/vmlinuz")?;
//! let cache = sie_vmlinux::KernelCache::new("/tmp/sie-cache");
//! let kernel = cache.vmlinux_for(&mut image)?;
//! println!("{:?} kernel, cache hit: {}", kernel.compression, kernel.hit);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod cache;
mod decompress;
mod elf;
mod header;
mod lzo1x;

pub use cache::{CachedKernel, KernelCache, MAX_ENTRIES, MAX_IDLE};
pub use decompress::decompress_payload;
pub use elf::is_elf64_x86;
pub use header::{Compression, Payload, find_payload, is_bzimage};

/// Largest vmlinux sie will produce: a guard against decompression bombs.
pub const MAX_VMLINUX_BYTES: usize = 512 << 20;

/// Why a bzImage could not be decompressed on the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a bzImage.
    #[error("not a bzImage")]
    NotBzImage,
    /// Boot protocol older than 2.08: no payload fields to go by.
    #[error("boot protocol {0:#06x} is older than 2.08 and does not say where its payload is")]
    OldProtocol(u16),
    /// The header says the bzImage carries no payload (length 0).
    #[error("the bzImage has no payload")]
    NoPayload,
    /// The payload lies beyond the end of the file.
    #[error("the bzImage is truncated: its payload runs past the end of the file")]
    Truncated,
    /// The payload's compression is not one the kernel uses.
    #[error("the payload's compression is not recognised")]
    UnknownCompression,
    /// The payload does not decompress.
    #[error("the payload is corrupt: {0}")]
    Corrupt(String),
    /// It decompresses to more than allowed.
    #[error("the payload decompresses to more than {0} bytes")]
    TooLarge(usize),
    /// It decompresses to something other than an x86_64 ELF.
    #[error("the payload is not an x86_64 ELF kernel")]
    NotElf,
    /// A host I/O error.
    #[error("host I/O")]
    Io(#[source] std::io::Error),
}

impl Error {
    /// True when booting the bzImage the classic way (the guest decompresses
    /// itself) is safe: nothing is known to be wrong with the image.
    pub fn classic_boot_is_safe(&self) -> bool {
        matches!(
            self,
            Error::OldProtocol(_) | Error::UnknownCompression | Error::NoPayload
        )
    }
}

#[cfg(test)]
mod tests;
