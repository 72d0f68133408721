//! The vmlinux cache: one decompressed kernel per bzImage content, under the
//! user's cache directory, written atomically so concurrent sie processes
//! never see half a file.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::header::{Compression, find_payload};
use crate::{Error, MAX_VMLINUX_BYTES, decompress_payload, is_elf64_x86};

/// A kernel ready to boot as an ELF.
#[derive(Debug)]
pub struct CachedKernel {
    /// An open ELF file (in the cache, or anonymous when the cache failed).
    pub file: File,
    /// Where it lives, when it is in the cache.
    pub path: Option<PathBuf>,
    /// The payload's compression.
    pub compression: Compression,
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

    /// The decompressed kernel of the bzImage `image`: from the cache, or
    /// decompressed now and stored. When the cache cannot be used (no
    /// directory, disk full) the kernel is decompressed into an anonymous
    /// file instead; errors are only for images that cannot be decompressed.
    pub fn vmlinux_for(&self, image: &[u8]) -> Result<CachedKernel, Error> {
        let payload = find_payload(image)?;
        let key = format!("{:x}", Sha256::digest(image));
        let path = self.dir.join(format!("{key}.vmlinux"));
        if let Ok(mut file) = File::open(&path) {
            let mut magic = [0u8; 64];
            if std::io::Read::read_exact(&mut file, &mut magic).is_ok() && is_elf64_x86(&magic) {
                return Ok(CachedKernel {
                    file,
                    path: Some(path),
                    compression: payload.compression,
                    hit: true,
                });
            }
        }
        let bytes = &image[payload.offset..payload.offset + payload.length];
        let vmlinux = decompress_payload(payload.compression, bytes, MAX_VMLINUX_BYTES)?;
        if !is_elf64_x86(&vmlinux) {
            return Err(Error::NotElf);
        }
        match self.store(&path, &vmlinux) {
            Ok(file) => Ok(CachedKernel {
                file,
                path: Some(path),
                compression: payload.compression,
                hit: false,
            }),
            Err(_) => Ok(CachedKernel {
                file: anonymous_file(&vmlinux)?,
                path: None,
                compression: payload.compression,
                hit: false,
            }),
        }
    }

    fn store(&self, path: &Path, vmlinux: &[u8]) -> Result<File, Error> {
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
        if let Err(error) = written.and_then(|()| std::fs::rename(&temp, path)) {
            let _ = std::fs::remove_file(&temp);
            return Err(Error::Io(error));
        }
        File::open(path).map_err(Error::Io)
    }
}
