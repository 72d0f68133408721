//! A bounded byte queue that drops its oldest bytes when full: the console
//! output nobody has read yet.

use std::collections::VecDeque;

/// Bytes kept in order, at most `capacity`; the oldest go first.
#[derive(Debug)]
pub struct RingBuffer {
    data: VecDeque<u8>,
    capacity: usize,
    dropped: u64,
}

impl RingBuffer {
    /// An empty ring holding at most `capacity` bytes (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            data: VecDeque::with_capacity(capacity.min(64 << 10)),
            capacity,
            dropped: 0,
        }
    }

    /// Appends `bytes`, dropping the oldest bytes beyond the capacity.
    pub fn push(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(self.capacity)..];
        let overflow = (self.data.len() + keep.len()).saturating_sub(self.capacity);
        self.dropped += (bytes.len() - keep.len() + overflow) as u64;
        self.data.drain(..overflow);
        self.data.extend(keep);
    }

    /// The oldest bytes, as one contiguous slice (may be shorter than
    /// [`len`](Self::len); call again after [`consume`](Self::consume)).
    pub fn front(&self) -> &[u8] {
        self.data.as_slices().0
    }

    /// Forgets the `count` oldest bytes (they were delivered).
    pub fn consume(&mut self, count: usize) {
        let count = count.min(self.data.len());
        self.data.drain(..count);
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Bytes dropped so far because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(ring: &mut RingBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        while !ring.is_empty() {
            let front = ring.front().to_vec();
            out.extend_from_slice(&front);
            ring.consume(front.len());
        }
        out
    }

    #[test]
    fn keeps_the_newest_bytes_and_counts_the_dropped() {
        let mut ring = RingBuffer::new(8);
        ring.push(b"abcdef");
        ring.push(b"ghij");
        assert_eq!(ring.len(), 8);
        assert_eq!(ring.dropped(), 2);
        assert_eq!(contents(&mut ring), b"cdefghij");
        ring.push(b"0123456789xy");
        assert_eq!(ring.dropped(), 6);
        assert_eq!(contents(&mut ring), b"456789xy");
    }

    #[test]
    fn consume_delivers_in_order() {
        let mut ring = RingBuffer::new(4);
        ring.push(b"abc");
        ring.consume(2);
        ring.push(b"def");
        assert_eq!(contents(&mut ring), b"cdef");
        ring.consume(10);
        assert!(ring.is_empty());
    }
}
