//! The seven kernel payload decompressors of `sie_vmlinux`, each through
//! its public entry point `decompress_payload`, one target per codec.
//!
//! Input: three bytes choosing the output limit (up to 4 MiB: a bomb must
//! be stopped by the limit, not by the fuzzer's memory cap), then the
//! payload. Checked: output never exceeds the limit, and the limit is
//! exact: a payload that decompresses to `n` bytes does so again with a
//! limit of exactly `n`, and is refused as too large with `n - 1`.

use sie_vmlinux::{Compression, Error, decompress_payload};

use crate::input::Input;

/// Largest limit a run asks for.
const MAX_LIMIT: u32 = 4 << 20;

pub fn gzip(data: &[u8]) {
    run(Compression::Gzip, data);
}

pub fn bzip2(data: &[u8]) {
    run(Compression::Bzip2, data);
}

pub fn lzma(data: &[u8]) {
    run(Compression::Lzma, data);
}

pub fn xz(data: &[u8]) {
    run(Compression::Xz, data);
}

pub fn lzo(data: &[u8]) {
    run(Compression::Lzo, data);
}

pub fn lz4(data: &[u8]) {
    run(Compression::Lz4, data);
}

pub fn zstd(data: &[u8]) {
    run(Compression::Zstd, data);
}

fn run(codec: Compression, data: &[u8]) {
    let mut input = Input::new(data);
    let raw = u32::from_le_bytes([input.u8(), input.u8(), input.u8(), 0]);
    // Mostly generous, sometimes tight enough to cut the output.
    let limit = if raw & 1 == 0 {
        MAX_LIMIT
    } else {
        (raw >> 1) % MAX_LIMIT
    } as usize;
    let payload = input.rest();
    let Ok(out) = decompress_payload(codec, payload, limit) else {
        return;
    };
    let n = out.len();
    assert!(
        n <= limit,
        "{codec}: {n} bytes out past a {limit}-byte limit"
    );
    let again = decompress_payload(codec, payload, n)
        .unwrap_or_else(|e| panic!("{codec}: {n} bytes, then refused with a limit of {n}: {e}"));
    assert!(again == out, "{codec}: decompressed differently");
    if n > 0 {
        match decompress_payload(codec, payload, n - 1) {
            Err(Error::TooLarge(_)) => {}
            other => panic!(
                "{codec}: {n} bytes, but with a limit of {} got {:?}",
                n - 1,
                other.map(|o| o.len())
            ),
        }
    }
}
