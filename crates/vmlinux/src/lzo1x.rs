//! A bounds-checked LZO1X decoder for one lzop block.
//!
//! Written here rather than taken from a crate: lzokay-native indexes and
//! subtracts unchecked (a hostile stream panics) and sizes its allocations
//! from the input, and the alternatives wrap C or c2rust code behind
//! `unsafe`. Every read and copy below is checked; output never grows past
//! the block's declared size.
//!
//! Format facts (LZO1X as described by the LZO distribution): a stream is a
//! sequence of instructions; the low two bits of a match's last opcode or
//! distance byte give how many literals (0–3) follow it, and that count
//! ("state") changes how the next opcode below 16 reads:
//!
//! | opcode       | meaning                                                            |
//! |--------------|--------------------------------------------------------------------|
//! | 64–255 (M2)  | length 3–8 = (op >> 5) + 1, distance = (next << 3) + ((op >> 2) & 7) + 1 |
//! | 32–63 (M3)   | length = (op & 31 or a run) + 2, distance = (LE16 >> 2) + 1         |
//! | 16–31 (M4)   | length = (op & 7 or a run) + 2, distance = 16384 + ((op & 8) << 11) + (LE16 >> 2); a distance of exactly 16384 ends the stream |
//! | 0–15, state 0| literal run of (op or a run of 15) + 3 bytes; state becomes 4     |
//! | 0–15, state 1–3 | 2-byte match, distance = (next << 2) + (op >> 2) + 1             |
//! | 0–15, state 4| 3-byte match, distance = (next << 2) + (op >> 2) + 2049            |
//!
//! A "run" is a zero opcode field followed by n zero bytes and one non-zero
//! byte b, worth base + 255·n + b. A first byte above 17 is special: it
//! copies (byte − 17) literals before the first instruction.

/// Why an LZO1X stream could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// The stream ends before its end marker.
    Truncated,
    /// The stream breaks the format's rules.
    Corrupt(String),
}

/// Decodes one LZO1X stream `input`, appending to `out`; the stream must
/// produce at most `max_len` bytes and use all of `input`.
pub(crate) fn decode(input: &[u8], out: &mut Vec<u8>, max_len: usize) -> Result<(), CodecError> {
    let mut input = Input {
        bytes: input,
        pos: 0,
    };
    let mut output = Output {
        out,
        start_len: 0,
        max_len,
    };
    output.start_len = output.out.len();
    let mut state = 0usize;
    if let Some(&first) = input.bytes.first()
        && first > 17
    {
        input.pos = 1;
        let count = usize::from(first - 17);
        output.literals(input.take(count)?)?;
        state = count.min(4);
    }
    loop {
        let op = input.byte()?;
        let (distance, length, trailing) = if op >= 64 {
            let distance = (usize::from(input.byte()?) << 3) + usize::from((op >> 2) & 7) + 1;
            (distance, usize::from(op >> 5) + 1, op & 3)
        } else if op >= 32 {
            let length = input.length(usize::from(op & 31), 31)? + 2;
            let word = input.le16()?;
            (usize::from(word >> 2) + 1, length, (word & 3) as u8)
        } else if op >= 16 {
            let length = input.length(usize::from(op & 7), 7)? + 2;
            let word = input.le16()?;
            let distance = (usize::from(op & 8) << 11) + usize::from(word >> 2);
            if distance == 0 {
                break;
            }
            (distance + 16384, length, (word & 3) as u8)
        } else if state == 0 {
            let count = input.length(usize::from(op), 15)? + 3;
            output.literals(input.take(count)?)?;
            state = 4;
            continue;
        } else if state < 4 {
            let distance = (usize::from(input.byte()?) << 2) + usize::from(op >> 2) + 1;
            (distance, 2, op & 3)
        } else {
            let distance = (usize::from(input.byte()?) << 2) + usize::from(op >> 2) + 2049;
            (distance, 3, op & 3)
        };
        output.copy_match(distance, length)?;
        output.literals(input.take(usize::from(trailing))?)?;
        state = usize::from(trailing);
    }
    if input.pos != input.bytes.len() {
        return Err(CodecError::Corrupt(format!(
            "{} bytes follow the LZO end marker",
            input.bytes.len() - input.pos
        )));
    }
    Ok(())
}

struct Input<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    fn byte(&mut self) -> Result<u8, CodecError> {
        let byte = *self.bytes.get(self.pos).ok_or(CodecError::Truncated)?;
        self.pos += 1;
        Ok(byte)
    }

    fn le16(&mut self) -> Result<u16, CodecError> {
        let bytes = self.take(2)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(count).ok_or(CodecError::Truncated)?;
        let bytes = self.bytes.get(self.pos..end).ok_or(CodecError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    /// An opcode's length field: itself when non-zero, else a run worth
    /// `base` + 255 per zero byte + the closing non-zero byte.
    fn length(&mut self, field: usize, base: usize) -> Result<usize, CodecError> {
        if field != 0 {
            return Ok(field);
        }
        let mut length = base;
        loop {
            match self.byte()? {
                // Bounded: each zero costs an input byte.
                0 => length += 255,
                last => return Ok(length + usize::from(last)),
            }
        }
    }
}

struct Output<'a> {
    out: &'a mut Vec<u8>,
    /// Where this block starts in `out`: matches may not reach before it.
    start_len: usize,
    max_len: usize,
}

impl Output<'_> {
    fn produced(&self) -> usize {
        self.out.len() - self.start_len
    }

    fn room_for(&self, count: usize) -> Result<(), CodecError> {
        if count > self.max_len - self.produced() {
            return Err(CodecError::Corrupt(format!(
                "block decodes past its declared {} bytes",
                self.max_len
            )));
        }
        Ok(())
    }

    fn literals(&mut self, bytes: &[u8]) -> Result<(), CodecError> {
        self.room_for(bytes.len())?;
        self.out.extend_from_slice(bytes);
        Ok(())
    }

    fn copy_match(&mut self, distance: usize, length: usize) -> Result<(), CodecError> {
        if distance > self.produced() {
            return Err(CodecError::Corrupt(format!(
                "match reaches {distance} bytes back, before the block's start"
            )));
        }
        self.room_for(length)?;
        let from = self.out.len() - distance;
        if distance >= length {
            self.out.extend_from_within(from..from + length);
        } else {
            // Overlapping copy: each byte may be one this copy just wrote.
            for at in from..from + length {
                let byte = self.out[at];
                self.out.push(byte);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random bytes (xorshift), so tests need no randomness crate.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state.to_le_bytes()[3]
            })
            .collect()
    }

    /// Compressible sample data shaped like the start of a kernel image.
    fn tiny_elf() -> Vec<u8> {
        let mut data = b"\x7fELF\x02\x01\x01".to_vec();
        data.extend((0..4000u32).map(|i| (i % 7) as u8));
        data
    }

    fn decode_all(input: &[u8], max_len: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = Vec::new();
        decode(input, &mut out, max_len).map(|()| out)
    }

    #[test]
    fn the_empty_stream_is_just_the_end_marker() {
        assert_eq!(decode_all(&[0x11, 0, 0], 0), Ok(vec![]));
    }

    #[test]
    fn a_hand_built_literal_only_stream_decodes() {
        // First byte 17 + 5 copies five literals; then the end marker.
        let mut stream = vec![17 + 5];
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x11, 0, 0]);
        assert_eq!(decode_all(&stream, 5), Ok(b"hello".to_vec()));
    }

    #[test]
    fn a_long_literal_run_uses_the_zero_byte_extension() {
        // Opcode 0 in state 0: 3 + 15 + 255 * 1 + 2 = 275 literals.
        let data = noise(275);
        let mut stream = vec![0, 0, 2];
        stream.extend_from_slice(&data);
        stream.extend_from_slice(&[0x11, 0, 0]);
        assert_eq!(decode_all(&stream, 275), Ok(data));
    }

    #[test]
    fn an_overlapping_match_repeats_bytes() {
        // 4 literals "abcd" (first byte 21), then M2: length 8, distance 4
        // (op = 0b111_011_00: L=7 → 8 bytes, D=3, next byte 0 → 4 back).
        let stream = [21, b'a', b'b', b'c', b'd', 0b1110_1100, 0, 0x11, 0, 0];
        assert_eq!(decode_all(&stream, 12), Ok(b"abcdabcdabcd".to_vec()));
    }

    #[test]
    fn lzokay_streams_decode_to_the_original() {
        for data in [tiny_elf(), noise(5000), vec![0u8; 100_000], b"x".to_vec()] {
            let compressed = lzokay_native::compress(&data).expect("compress");
            assert_eq!(decode_all(&compressed, data.len()), Ok(data.clone()));
        }
    }

    #[test]
    fn output_past_the_declared_size_is_corrupt() {
        let data = tiny_elf();
        let compressed = lzokay_native::compress(&data).expect("compress");
        let result = decode_all(&compressed, data.len() - 1);
        assert!(matches!(result, Err(CodecError::Corrupt(_))), "{result:?}");
    }

    #[test]
    fn a_match_before_the_block_start_is_corrupt() {
        // One literal (state 1), then a 2-byte match 6 bytes back.
        let stream = [18, b'a', 0b0000_0100, 1, 0x11, 0, 0];
        let result = decode_all(&stream, 100);
        assert!(matches!(result, Err(CodecError::Corrupt(_))), "{result:?}");
    }

    #[test]
    fn matches_do_not_reach_into_earlier_blocks() {
        // A 2-byte match 1 back is fine, 2 back reaches the earlier block.
        let mut out = b"earlier block".to_vec();
        assert_eq!(decode(&[18, b'a', 0, 0, 0x11, 0, 0], &mut out, 100), Ok(()));
        assert!(out.ends_with(b"aaa"));
        let stream = [18, b'a', 0b0000_0100, 0, 0x11, 0, 0];
        assert!(matches!(
            decode(&stream, &mut out, 100),
            Err(CodecError::Corrupt(_))
        ));
    }

    #[test]
    fn a_cut_stream_is_truncated() {
        let data = tiny_elf();
        let compressed = lzokay_native::compress(&data).expect("compress");
        for cut in [0, 1, compressed.len() / 2, compressed.len() - 1] {
            let result = decode_all(&compressed[..cut], data.len());
            assert_eq!(result, Err(CodecError::Truncated), "cut at {cut}");
        }
    }

    #[test]
    fn bytes_after_the_end_marker_are_corrupt() {
        let result = decode_all(&[0x11, 0, 0, 0xaa], 10);
        assert!(matches!(result, Err(CodecError::Corrupt(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Every prefix of noise and of a damaged real stream must return.
        let mut damaged = lzokay_native::compress(&tiny_elf()).expect("compress");
        for at in (0..damaged.len()).step_by(97) {
            damaged[at] ^= 0xa5;
        }
        for input in [noise(4096), damaged] {
            for end in (0..input.len()).step_by(13) {
                let _ = decode_all(&input[..end], 1 << 16);
            }
        }
    }
}
