//! Where a bzImage keeps its compressed kernel, and how it is compressed.
//!
//! Boot protocol 2.08 added `payload_offset` (u32 at 0x248, relative to the
//! protected-mode code, which starts at `(setup_sects + 1) * 512`) and
//! `payload_length` (u32 at 0x24c) to the setup header.

use std::fmt;

use crate::Error;

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

fn u16_at(image: &[u8], at: usize) -> u16 {
    image
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(image: &[u8], at: usize) -> u32 {
    image
        .get(at..at + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// True when `image` starts with a bzImage setup header.
pub fn is_bzimage(image: &[u8]) -> bool {
    image.get(0x202..0x206) == Some(b"HdrS") && u16_at(image, 0x1fe) == 0xaa55
}

/// Finds the payload of a bzImage.
pub fn find_payload(image: &[u8]) -> Result<Payload, Error> {
    if !is_bzimage(image) {
        return Err(Error::NotBzImage);
    }
    let version = u16_at(image, 0x206);
    if version < 0x0208 {
        return Err(Error::OldProtocol(version));
    }
    let setup_sects = match image.get(0x1f1).copied().unwrap_or(0) {
        0 => 4,
        n => usize::from(n),
    };
    let protected_mode = (setup_sects + 1) * 512;
    let offset = protected_mode + u32_at(image, 0x248) as usize;
    let length = u32_at(image, 0x24c) as usize;
    if length == 0 {
        return Err(Error::NoPayload);
    }
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
