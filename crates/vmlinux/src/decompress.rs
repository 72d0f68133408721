//! Decompressing a kernel payload, in every format the kernel's build offers.
//!
//! The kernel appends the uncompressed size (u32 LE) to most payloads, so
//! each decoder reads exactly one stream and ignores what follows it.

use std::io::Read;

use crate::Error;
use crate::header::Compression;

/// Largest block an LZ4 legacy frame holds (8 MiB), by the format.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];

fn read_limited(mut reader: impl Read, limit: usize) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    (&mut reader)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    if out.len() > limit {
        return Err(Error::TooLarge(limit));
    }
    Ok(out)
}

/// Decompresses `payload`, producing at most `limit` bytes.
pub fn decompress_payload(
    compression: Compression,
    payload: &[u8],
    limit: usize,
) -> Result<Vec<u8>, Error> {
    let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
    match compression {
        Compression::Gzip => read_limited(flate2::read::GzDecoder::new(payload), limit),
        Compression::Bzip2 => read_limited(bzip2::read::BzDecoder::new(payload), limit),
        Compression::Xz => {
            // One stream only: the appended size would read as bad padding.
            let stream = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0)
                .map_err(|e| corrupt(&e))?;
            read_limited(liblzma::read::XzDecoder::new_stream(payload, stream), limit)
        }
        Compression::Lzma => {
            let stream =
                liblzma::stream::Stream::new_lzma_decoder(u64::MAX).map_err(|e| corrupt(&e))?;
            read_limited(liblzma::read::XzDecoder::new_stream(payload, stream), limit)
        }
        Compression::Zstd => {
            let decoder =
                ruzstd::decoding::StreamingDecoder::new(payload).map_err(|e| corrupt(&e))?;
            read_limited(decoder, limit)
        }
        Compression::Lz4 => lz4_legacy(payload, limit),
        Compression::Lzo => lzop(payload, limit),
    }
}

/// LZ4 legacy frames: the magic, then blocks of `[u32 LE size][data]`, each
/// decompressing to at most 8 MiB; the kernel's appended size ends it.
fn lz4_legacy(payload: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    let mut rest = payload
        .strip_prefix(&LZ4_LEGACY_MAGIC)
        .ok_or_else(|| Error::Corrupt("lz4: no legacy frame magic".into()))?;
    let mut out = Vec::new();
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK];
    while rest.len() > 4 {
        let (size, after) = rest.split_at(4);
        let size = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
        if size.to_le_bytes()[..4] == LZ4_LEGACY_MAGIC {
            rest = after;
            continue;
        }
        let data = after
            .get(..size)
            .ok_or_else(|| Error::Corrupt("lz4: block runs past the payload".into()))?;
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| Error::Corrupt(format!("lz4: {e}")))?;
        if out.len() + n > limit {
            return Err(Error::TooLarge(limit));
        }
        out.extend_from_slice(&block[..n]);
        rest = &after[size..];
    }
    Ok(out)
}

/// The lzop container: a header, then blocks of `[u32 BE out][u32 BE in]
/// [checksums][data]`, ending with a zero out-length.
fn lzop(payload: &[u8], limit: usize) -> Result<Vec<u8>, Error> {
    const F_ADLER32_D: u32 = 0x1;
    const F_ADLER32_C: u32 = 0x2;
    const F_H_FILTER: u32 = 0x800;
    const F_CRC32_D: u32 = 0x100;
    const F_CRC32_C: u32 = 0x200;
    let bad = |what: &str| Error::Corrupt(format!("lzo: {what}"));
    let mut at = 9usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], Error> {
        let bytes = payload.get(*at..*at + n).ok_or_else(|| bad("truncated"))?;
        *at += n;
        Ok(bytes)
    };
    let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let version = be16(take(&mut at, 2)?);
    take(&mut at, 2)?; // library version
    if version >= 0x0940 {
        take(&mut at, 2)?; // version needed to extract
    }
    take(&mut at, 1)?; // method
    if version >= 0x0940 {
        take(&mut at, 1)?; // level
    }
    let flags = be32(take(&mut at, 4)?);
    if flags & F_H_FILTER != 0 {
        take(&mut at, 4)?;
    }
    take(&mut at, 4)?; // mode
    take(&mut at, 4)?; // mtime low
    if version >= 0x0940 {
        take(&mut at, 4)?; // mtime high
    }
    let name_len = usize::from(take(&mut at, 1)?[0]);
    take(&mut at, name_len)?;
    take(&mut at, 4)?; // header checksum
    let mut out = Vec::new();
    loop {
        let out_len = be32(take(&mut at, 4)?) as usize;
        if out_len == 0 {
            return Ok(out);
        }
        let in_len = be32(take(&mut at, 4)?) as usize;
        if out_len > LZ4_LEGACY_BLOCK * 8 || out.len() + out_len > limit {
            return Err(Error::TooLarge(limit));
        }
        let mut skip = 0;
        skip += if flags & F_ADLER32_D != 0 { 4 } else { 0 };
        skip += if flags & F_CRC32_D != 0 { 4 } else { 0 };
        if in_len < out_len {
            skip += if flags & F_ADLER32_C != 0 { 4 } else { 0 };
            skip += if flags & F_CRC32_C != 0 { 4 } else { 0 };
        }
        take(&mut at, skip)?;
        let data = take(&mut at, in_len)?;
        if in_len == out_len {
            out.extend_from_slice(data);
        } else {
            let mut block = Vec::with_capacity(out_len);
            crate::lzo1x::decode(data, &mut block, out_len).map_err(|e| bad(&format!("{e:?}")))?;
            if block.len() != out_len {
                return Err(bad("block length differs from its header"));
            }
            out.extend_from_slice(&block);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect()
    }

    fn appended(mut bytes: Vec<u8>, size: usize) -> Vec<u8> {
        bytes.extend_from_slice(&(size as u32).to_le_bytes());
        bytes
    }

    #[test]
    fn gzip_bzip2_xz_lzma_round_trip_with_the_size_appended() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = appended(gz.finish().unwrap(), data.len());
        assert_eq!(
            decompress_payload(Compression::Gzip, &gz, 1 << 20).unwrap(),
            data
        );

        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        bz.write_all(&data).unwrap();
        let bz = appended(bz.finish().unwrap(), data.len());
        assert_eq!(
            decompress_payload(Compression::Bzip2, &bz, 1 << 20).unwrap(),
            data
        );

        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(&data).unwrap();
        let xz = appended(xz.finish().unwrap(), data.len());
        assert_eq!(
            decompress_payload(Compression::Xz, &xz, 1 << 20).unwrap(),
            data
        );

        let options = liblzma::stream::LzmaOptions::new_preset(1).unwrap();
        let stream = liblzma::stream::Stream::new_lzma_encoder(&options).unwrap();
        let mut lzma = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
        lzma.write_all(&data).unwrap();
        let lzma = appended(lzma.finish().unwrap(), data.len());
        assert_eq!(Compression::sniff(&lzma), Some(Compression::Lzma));
        assert_eq!(
            decompress_payload(Compression::Lzma, &lzma, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn lz4_legacy_frames_decode_block_by_block() {
        let data = sample();
        let mut frame = LZ4_LEGACY_MAGIC.to_vec();
        for chunk in data.chunks(70_000) {
            let block = lz4_flex::block::compress(chunk);
            frame.extend_from_slice(&(block.len() as u32).to_le_bytes());
            frame.extend_from_slice(&block);
        }
        let frame = appended(frame, data.len());
        assert_eq!(
            decompress_payload(Compression::Lz4, &frame, 1 << 20).unwrap(),
            data
        );
        assert!(matches!(
            decompress_payload(Compression::Lz4, &frame[..frame.len() - 100], 1 << 20),
            Err(Error::Corrupt(_))
        ));
    }

    #[test]
    fn lzop_with_stored_blocks_decodes() {
        let data = b"a kernel that did not compress".to_vec();
        let mut lzo = vec![0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
        lzo.extend_from_slice(&0x1030u16.to_be_bytes()); // version
        lzo.extend_from_slice(&0x2080u16.to_be_bytes()); // library version
        lzo.extend_from_slice(&0x0940u16.to_be_bytes()); // version needed
        lzo.push(1); // method
        lzo.push(5); // level
        lzo.extend_from_slice(&0u32.to_be_bytes()); // flags
        lzo.extend_from_slice(&0u32.to_be_bytes()); // mode
        lzo.extend_from_slice(&0u32.to_be_bytes()); // mtime low
        lzo.extend_from_slice(&0u32.to_be_bytes()); // mtime high
        lzo.push(0); // name length
        lzo.extend_from_slice(&0u32.to_be_bytes()); // header checksum
        lzo.extend_from_slice(&(data.len() as u32).to_be_bytes());
        lzo.extend_from_slice(&(data.len() as u32).to_be_bytes());
        lzo.extend_from_slice(&data);
        lzo.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            decompress_payload(Compression::Lzo, &lzo, 1 << 20).unwrap(),
            data
        );
        assert!(decompress_payload(Compression::Lzo, &lzo[..20], 1 << 20).is_err());
    }

    #[test]
    fn zstd_frames_decode_with_the_size_appended() {
        let data = sample();
        let mut frame = Vec::new();
        ruzstd::encoding::compress(
            &data[..],
            &mut frame,
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let frame = appended(frame, data.len());
        assert_eq!(
            decompress_payload(Compression::Zstd, &frame, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn lzop_with_compressed_blocks_decodes() {
        let data = sample();
        let mut lzo = vec![0x89, b'L', b'Z', b'O', 0x00, 0x0d, 0x0a, 0x1a, 0x0a];
        lzo.extend_from_slice(&0x1030u16.to_be_bytes());
        lzo.extend_from_slice(&0x2080u16.to_be_bytes());
        lzo.extend_from_slice(&0x0940u16.to_be_bytes());
        lzo.push(1);
        lzo.push(5);
        lzo.extend_from_slice(&0x3u32.to_be_bytes()); // adler32 of data and of compressed
        lzo.extend_from_slice(&[0; 12]); // mode, mtime low, mtime high
        lzo.push(0);
        lzo.extend_from_slice(&0u32.to_be_bytes());
        for chunk in data.chunks(65536) {
            let packed = lzokay_native::compress(chunk).unwrap();
            assert!(packed.len() < chunk.len());
            lzo.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            lzo.extend_from_slice(&(packed.len() as u32).to_be_bytes());
            lzo.extend_from_slice(&[0; 8]); // the two checksums, not checked
            lzo.extend_from_slice(&packed);
        }
        lzo.extend_from_slice(&0u32.to_be_bytes());
        let lzo = appended(lzo, data.len());
        assert_eq!(
            decompress_payload(Compression::Lzo, &lzo, 1 << 20).unwrap(),
            data
        );
    }

    #[test]
    fn output_beyond_the_limit_is_refused() {
        let data = vec![0u8; 100_000];
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        assert!(matches!(
            decompress_payload(Compression::Gzip, &gz, 1000),
            Err(Error::TooLarge(1000))
        ));
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        let garbage = [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
        for compression in [
            Compression::Gzip,
            Compression::Bzip2,
            Compression::Xz,
            Compression::Lzma,
            Compression::Zstd,
            Compression::Lz4,
            Compression::Lzo,
        ] {
            assert!(decompress_payload(compression, &garbage, 1 << 20).is_err());
        }
    }
}
