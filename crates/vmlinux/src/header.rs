//! Where a bzImage keeps its compressed kernel, and how it is compressed.
//!
//! The setup header is read as linux-loader's `setup_header`, from where
//! the zero page (`boot_params`) keeps it: file offset 0x1f1. Boot protocol
//! 2.08 added `payload_offset` (relative to the protected-mode code, which
//! starts at `(setup_sects + 1) * 512`) and `payload_length` to it.

use std::fmt;
use std::mem::{offset_of, size_of};

use linux_loader::bootparam::{boot_params, setup_header};
use vm_memory::ByteValued;

use crate::Error;

/// Where the setup header starts in the file.
const HEADER_START: usize = offset_of!(boot_params, hdr);
/// Where the setup header ends in the file: a bzImage is at least this long.
pub(crate) const HEADER_END: usize = HEADER_START + size_of::<setup_header>();
// The boot protocol document puts the header at 0x1f1..0x26c.
const _: () = assert!(HEADER_START == 0x1f1 && HEADER_END == 0x26c);
/// `boot_flag`'s value in every bootable image.
const BOOT_FLAG: u16 = 0xaa55;
/// `header`'s value: "HdrS", little-endian.
const HDRS: u32 = u32::from_le_bytes(*b"HdrS");
/// Protocol 2.08 added the payload fields.
const PAYLOAD_PROTOCOL: u16 = 0x0208;

/// A compression the kernel's build can use for its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// gzip (`CONFIG_KERNEL_GZIP`).
    Gzip,
    /// bzip2.
    Bzip2,
    /// Legacy `.lzma` ("lzma_alone").
    Lzma,
    /// xz.
    Xz,
    /// lzop container with LZO1X blocks.
    Lzo,
    /// LZ4 legacy frames.
    Lz4,
    /// zstd.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
            Compression::Xz => "xz",
            Compression::Lzo => "lzo",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        })
    }
}

impl Compression {
    /// The compression named as [`fmt::Display`] prints it.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Compression::Gzip,
            Compression::Bzip2,
            Compression::Lzma,
            Compression::Xz,
            Compression::Lzo,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .find(|c| c.to_string() == name)
    }

    /// Recognises a payload by its first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        let starts = |magic: &[u8]| bytes.starts_with(magic);
        Some(if starts(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if starts(b"BZh") {
            Compression::Bzip2
        } else if starts(&[0x5d, 0x00, 0x00]) {
            Compression::Lzma
        } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if starts(&[0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a]) {
            Compression::Lzo
        } else if starts(&[0x02, 0x21, 0x4c, 0x18]) {
            Compression::Lz4
        } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            return None;
        })
    }
}

/// The compressed kernel inside a bzImage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Payload {
    /// How it is compressed.
    pub compression: Compression,
    /// Offset in the file.
    pub offset: usize,
    /// Length in bytes.
    pub length: usize,
}

/// The setup header of the bzImage that `image` starts with; `None` when
/// `image` is not one (no magic, or cut off inside its header).
pub(crate) fn bzimage_header(image: &[u8]) -> Option<setup_header> {
    let hdr = setup_header::read_exact_from(image.get(HEADER_START..)?).ok()?;
    ({ hdr.header } == HDRS && { hdr.boot_flag } == BOOT_FLAG).then_some(hdr)
}

/// True when `image` starts with a whole bzImage setup header.
pub fn is_bzimage(image: &[u8]) -> bool {
    bzimage_header(image).is_some()
}

/// Where the header says the payload is, as (file offset, length in bytes);
/// not yet checked against the file.
pub(crate) fn payload_span(hdr: &setup_header) -> Result<(usize, usize), Error> {
    let version = hdr.version;
    if version < PAYLOAD_PROTOCOL {
        return Err(Error::OldProtocol(version));
    }
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    // At most 128 KiB + 4 GiB: no overflow on a 64-bit host.
    let offset = protected_mode + hdr.payload_offset as usize;
    let length = hdr.payload_length as usize;
    if length == 0 {
        return Err(Error::NoPayload);
    }
    Ok((offset, length))
}

/// Finds the payload of a bzImage.
pub fn find_payload(image: &[u8]) -> Result<Payload, Error> {
    let hdr = bzimage_header(image).ok_or(Error::NotBzImage)?;
    let (offset, length) = payload_span(&hdr)?;
    let end = offset.checked_add(length).ok_or(Error::Truncated)?;
    let bytes = image.get(offset..end).ok_or(Error::Truncated)?;
    let compression = Compression::sniff(bytes).ok_or(Error::UnknownCompression)?;
    Ok(Payload {
        compression,
        offset,
        length,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_compression_is_recognised() {
        let cases: [(&[u8], Compression); 7] = [
            (&[0x1f, 0x8b, 8], Compression::Gzip),
            (b"BZh9", Compression::Bzip2),
            (&[0x5d, 0, 0, 0x80], Compression::Lzma),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (
                &[0x89, b'L', b'Z', b'O', 0, 0x0d, 0x0a, 0x1a, 0x0a],
                Compression::Lzo,
            ),
            (&[0x02, 0x21, 0x4c, 0x18], Compression::Lz4),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
        ];
        for (bytes, want) in cases {
            assert_eq!(Compression::sniff(bytes), Some(want));
        }
        assert_eq!(Compression::sniff(b"\x7fELF"), None);
    }
}
