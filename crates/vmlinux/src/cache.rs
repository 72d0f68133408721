//! The vmlinux cache: one decompressed kernel per bzImage version, under the
//! user's cache directory.
//!
//! An entry is two files named by the bzImage's key (see [`key`]: the file's
//! identity and version, not a hash of its content, so that a hit costs an
//! `fstat` and two small reads): `<key>.vmlinux`, the ELF, and
//! `<key>.record`, one line `<compression> <vmlinux size in bytes>`.
//!
//! - Writes are atomic: each file is written under a temporary name and
//!   renamed into place, the record first, so concurrent sie processes never
//!   see half a file, and a vmlinux is never in place without its record.
//! - A lookup trusts an entry only when its record parses, the vmlinux has
//!   the recorded size and holds a complete x86_64 ELF; anything else (a
//!   file cut by a full disk, edited, or left by an older sie) is rebuilt.
//! - A hit sets the vmlinux's modification time to now: the last use that
//!   eviction goes by. Eviction ([`evict`]) runs after each new entry and
//!   keeps the [`MAX_ENTRIES`] most recently used, dropping any unused for
//!   [`MAX_IDLE`].

mod evict;
mod key;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

pub use evict::{MAX_ENTRIES, MAX_IDLE};

use crate::elf::is_complete_elf;
use crate::header::{Compression, HEADER_END, find_payload, is_bzimage};
use crate::{Error, MAX_VMLINUX_BYTES, decompress_payload, is_elf64_x86};

/// A kernel ready to boot as an ELF.
#[derive(Debug)]
pub struct CachedKernel {
    /// An open ELF file (in the cache, or anonymous when the cache failed),
    /// positioned at its start.
    pub file: File,
    /// Where it lives, when it is in the cache.
    pub path: Option<PathBuf>,
    /// The payload's compression; every entry records it, so it is always
    /// known (the `Option` is kept for callers).
    pub compression: Option<Compression>,
    /// Whether it was already cached.
    pub hit: bool,
}

/// The cache directory.
#[derive(Clone, Debug)]
pub struct KernelCache {
    dir: PathBuf,
}

fn anonymous_file(bytes: &[u8]) -> Result<File, Error> {
    // SAFETY: the name is a valid NUL-terminated string; flags are valid.
    let fd = unsafe { libc::memfd_create(c"sie-vmlinux".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: memfd_create returned a fresh descriptor nobody else owns.
    let mut file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    file.write_all(bytes).map_err(Error::Io)?;
    file.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
    Ok(file)
}

/// What `<key>.record` says about its vmlinux.
#[derive(Debug, PartialEq, Eq)]
struct Record {
    compression: Compression,
    size: u64,
}

impl Record {
    fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        let compression = Compression::from_name(words.next()?)?;
        let size = words.next()?.parse().ok()?;
        words
            .next()
            .is_none()
            .then_some(Record { compression, size })
    }

    fn line(&self) -> String {
        format!("{} {}\n", self.compression, self.size)
    }
}

impl KernelCache {
    /// `$XDG_CACHE_HOME/sie/vmlinux`, else `$HOME/.cache/sie/vmlinux`.
    pub fn default_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("sie").join("vmlinux"))
    }

    /// A cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vmlinux_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.vmlinux"))
    }

    fn record_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.record"))
    }

    /// The decompressed kernel of the bzImage open as `image`: from the
    /// cache, or decompressed now and stored. When the cache cannot be used
    /// (no directory, disk full) the kernel is decompressed into an anonymous
    /// file instead; errors are only for images that cannot be decompressed.
    pub fn vmlinux_for(&self, image: &mut File) -> Result<CachedKernel, Error> {
        let meta = image.metadata().map_err(Error::Io)?;
        let mut header = [0u8; HEADER_END];
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        image
            .read_exact(&mut header)
            .map_err(|_| Error::Truncated)?;
        if !is_bzimage(&header) {
            return Err(Error::NotBzImage);
        }
        let key = key::entry_key(image, &meta, &header);
        if let Some(kernel) = self.lookup(&key) {
            return Ok(kernel);
        }
        let mut whole = Vec::new();
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        image.read_to_end(&mut whole).map_err(Error::Io)?;
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        self.decompress_and_store(&whole, &key)
    }

    /// The entry `key`, when it is there and whole.
    fn lookup(&self, key: &str) -> Option<CachedKernel> {
        let record = Record::parse(&std::fs::read_to_string(self.record_path(key)).ok()?)?;
        let path = self.vmlinux_path(key);
        let file = File::open(&path).ok()?;
        let size = file.metadata().ok()?.len();
        if size != record.size || !is_complete_elf(&file, size) {
            return None;
        }
        // Marks the entry used, for eviction; a failure only makes it older.
        let _ = file.set_modified(SystemTime::now());
        Some(CachedKernel {
            file,
            path: Some(path),
            compression: Some(record.compression),
            hit: true,
        })
    }

    fn decompress_and_store(&self, image: &[u8], key: &str) -> Result<CachedKernel, Error> {
        let payload = find_payload(image)?;
        let bytes = &image[payload.offset..payload.offset + payload.length];
        let vmlinux = decompress_payload(payload.compression, bytes, MAX_VMLINUX_BYTES)?;
        if !is_elf64_x86(&vmlinux) {
            return Err(Error::NotElf);
        }
        let record = Record {
            compression: payload.compression,
            size: vmlinux.len() as u64,
        };
        match self.store(key, &vmlinux, &record) {
            Ok(file) => {
                evict::evict(&self.dir, key, SystemTime::now());
                Ok(CachedKernel {
                    file,
                    path: Some(self.vmlinux_path(key)),
                    compression: Some(payload.compression),
                    hit: false,
                })
            }
            Err(_) => Ok(CachedKernel {
                file: anonymous_file(&vmlinux)?,
                path: None,
                compression: Some(payload.compression),
                hit: false,
            }),
        }
    }

    /// Writes `bytes` to `path` through a temporary file renamed into place;
    /// returns the file, open for reading at its start.
    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<File, Error> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        // Unique among live writers (pid, then a per-process count): a file
        // already there is a dead process's leftover, safe to overwrite.
        let temp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temp)
            .and_then(|mut file| {
                file.write_all(bytes)?;
                file.sync_data()?;
                std::fs::rename(&temp, path)?;
                file.seek(SeekFrom::Start(0))?;
                Ok(file)
            });
        written.map_err(|error| {
            let _ = std::fs::remove_file(&temp);
            Error::Io(error)
        })
    }

    fn store(&self, key: &str, vmlinux: &[u8], record: &Record) -> Result<File, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Error::Io)?;
        self.write_atomically(&self.record_path(key), record.line().as_bytes())?;
        self.write_atomically(&self.vmlinux_path(key), vmlinux)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_anything_else_is_refused() {
        let record = Record {
            compression: Compression::Zstd,
            size: 52_428_800,
        };
        assert_eq!(record.line(), "zstd 52428800\n");
        assert_eq!(Record::parse(&record.line()), Some(record));
        for bad in [
            "", "zstd", "zstd x", "zstd 1 2", "brotli 1", "xz -1", "1 xz",
        ] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
    }
}
