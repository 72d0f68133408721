//! The vmlinux cache: one decompressed kernel per bzImage, under the user's
//! cache directory, written atomically so concurrent sie processes never see
//! half a file.
//!
//! The key is the bzImage file's identity and version (device, inode, size,
//! modification and change times), not a hash of its content: a hit then
//! costs one `fstat` instead of reading and hashing megabytes, which matters
//! when the host is slow (a nested guest). The change time cannot be set by
//! users and moves on every write, so a rewritten file gets a new key.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use std::os::unix::fs::MetadataExt;

use sha2::{Digest, Sha256};

use crate::header::{Compression, find_payload, is_bzimage};
use crate::{Error, MAX_VMLINUX_BYTES, decompress_payload, is_elf64_x86};

/// A kernel ready to boot as an ELF.
#[derive(Debug)]
pub struct CachedKernel {
    /// An open ELF file (in the cache, or anonymous when the cache failed).
    pub file: File,
    /// Where it lives, when it is in the cache.
    pub path: Option<PathBuf>,
    /// The payload's compression (unknown for a cache entry whose record
    /// was lost).
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
    Ok(file)
}

/// The compression recorded beside a cached kernel.
fn recorded_compression(path: &Path) -> Option<Compression> {
    let name = std::fs::read_to_string(path.with_extension("compression")).ok()?;
    Compression::from_name(name.trim())
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

    /// The decompressed kernel of the bzImage open as `image`: from the
    /// cache, or decompressed now and stored. When the cache cannot be used
    /// (no directory, disk full) the kernel is decompressed into an anonymous
    /// file instead; errors are only for images that cannot be decompressed.
    pub fn vmlinux_for(&self, image: &mut File) -> Result<CachedKernel, Error> {
        use std::io::{Read, Seek, SeekFrom};
        let meta = image.metadata().map_err(Error::Io)?;
        let identity = format!(
            "{}:{}:{}:{}.{}:{}.{}",
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
            meta.ctime(),
            meta.ctime_nsec()
        );
        let key = format!("{:x}", Sha256::digest(identity.as_bytes()));
        let path = self.dir.join(format!("{key}.vmlinux"));
        let mut header = [0u8; 0x250];
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        image
            .read_exact(&mut header)
            .map_err(|_| Error::Truncated)?;
        if !is_bzimage(&header) {
            return Err(Error::NotBzImage);
        }
        if let Ok(mut file) = File::open(&path) {
            let mut magic = [0u8; 64];
            if file.read_exact(&mut magic).is_ok() && is_elf64_x86(&magic) {
                let compression = recorded_compression(&path);
                return Ok(CachedKernel {
                    file,
                    path: Some(path),
                    compression,
                    hit: true,
                });
            }
        }
        let mut whole = Vec::new();
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        image.read_to_end(&mut whole).map_err(Error::Io)?;
        image.seek(SeekFrom::Start(0)).map_err(Error::Io)?;
        self.decompress_and_store(&whole, &path)
    }

    fn decompress_and_store(&self, image: &[u8], path: &Path) -> Result<CachedKernel, Error> {
        let payload = find_payload(image)?;
        let path = path.to_path_buf();
        let bytes = &image[payload.offset..payload.offset + payload.length];
        let vmlinux = decompress_payload(payload.compression, bytes, MAX_VMLINUX_BYTES)?;
        if !is_elf64_x86(&vmlinux) {
            return Err(Error::NotElf);
        }
        match self.store(&path, &vmlinux, payload.compression) {
            Ok(file) => Ok(CachedKernel {
                file,
                path: Some(path),
                compression: Some(payload.compression),
                hit: false,
            }),
            Err(_) => Ok(CachedKernel {
                file: anonymous_file(&vmlinux)?,
                path: None,
                compression: Some(payload.compression),
                hit: false,
            }),
        }
    }

    fn store(&self, path: &Path, vmlinux: &[u8], compression: Compression) -> Result<File, Error> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(Error::Io)?;
        let temp = self.dir.join(format!(
            ".tmp-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(Error::Io)?;
        let written = file.write_all(vmlinux).and_then(|()| file.sync_data());
        // The compression is remembered beside the kernel, for reports.
        let _ = std::fs::write(path.with_extension("compression"), compression.to_string());
        if let Err(error) = written.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::Io(error));
        }
        File::open(path).map_err(Error::Io)
    }
}
