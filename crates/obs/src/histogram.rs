//! A fixed-bucket latency histogram that one thread writes and any thread reads.
//!
//! Buckets are log-linear: every power of two of nanoseconds is split into
//! [`SUB_BUCKETS`] equal parts, so a percentile read from it is within 1/4 of the
//! true value, and recording is a handful of integer instructions with no lock.

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two.
const SUB_BUCKETS: usize = 4;
const SUB_BITS: u32 = 2;
/// Powers of two covered: 2^40 ns is about 18 minutes, far beyond any exit.
const POWERS: usize = 41;
/// Number of buckets in a histogram.
pub const BUCKETS: usize = POWERS * SUB_BUCKETS;

/// Latency histogram in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Bucket index of a value in nanoseconds.
fn bucket_of(ns: u64) -> usize {
    if ns < SUB_BUCKETS as u64 {
        return ns as usize;
    }
    let msb = 63 - ns.leading_zeros();
    let sub = ((ns >> (msb - SUB_BITS)) & (SUB_BUCKETS as u64 - 1)) as usize;
    let index = (msb - SUB_BITS + 1) as usize * SUB_BUCKETS + sub;
    index.min(BUCKETS - 1)
}

/// Smallest value that falls into bucket `index`.
fn bucket_floor(index: usize) -> u64 {
    if index < SUB_BUCKETS {
        return index as u64;
    }
    let power = (index / SUB_BUCKETS) as u32 + SUB_BITS - 1;
    let sub = (index % SUB_BUCKETS) as u64;
    (1u64 << power) + (sub << (power - SUB_BITS))
}

impl Histogram {
    /// Records one sample. Only one thread may record into a given histogram
    /// (each vCPU owns its own), which is why a plain load and store suffice.
    #[inline]
    pub fn record_single_writer(&self, ns: u64) {
        let bucket = &self.buckets[bucket_of(ns)];
        bucket.store(bucket.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Records one sample from any thread.
    #[inline]
    pub fn record_shared(&self, ns: u64) {
        self.buckets[bucket_of(ns)].fetch_add(1, Ordering::Relaxed);
    }

    /// A point-in-time copy of the bucket counts.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Bucket counts copied out of a [`Histogram`]; can be merged and queried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    buckets: Vec<u64>,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        Self {
            buckets: vec![0; BUCKETS],
        }
    }
}

impl HistogramSnapshot {
    /// Adds another snapshot's counts to this one.
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The value (ns) below which a fraction `q` (0.0..=1.0) of samples lie,
    /// reported as the middle of the bucket that holds it; `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let low = bucket_floor(index);
                let high = if index + 1 < BUCKETS {
                    bucket_floor(index + 1)
                } else {
                    low
                };
                return Some(low + (high - low) / 2);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_floor() {
        let mut last = 0;
        for index in 0..BUCKETS {
            let floor = bucket_floor(index);
            assert!(index == 0 || floor > last, "bucket {index} floor {floor}");
            assert_eq!(bucket_of(floor), index, "floor of bucket {index}");
            last = floor;
        }
    }

    #[test]
    fn quantiles_are_within_a_quarter_of_the_truth() {
        let h = Histogram::default();
        for ns in 1..=1000u64 {
            h.record_single_writer(ns * 100);
        }
        let s = h.snapshot();
        assert_eq!(s.count(), 1000);
        let median = s.quantile_ns(0.5).unwrap() as f64;
        assert!((median - 50_000.0).abs() / 50_000.0 < 0.25, "{median}");
        let p99 = s.quantile_ns(0.99).unwrap() as f64;
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.25, "{p99}");
    }

    #[test]
    fn empty_histogram_has_no_quantile() {
        assert_eq!(Histogram::default().snapshot().quantile_ns(0.5), None);
    }

    #[test]
    fn huge_values_land_in_the_last_bucket() {
        let h = Histogram::default();
        h.record_shared(u64::MAX);
        assert_eq!(h.snapshot().count(), 1);
    }

    #[test]
    fn merge_adds_counts() {
        let a = Histogram::default();
        let b = Histogram::default();
        a.record_single_writer(10);
        b.record_single_writer(10);
        b.record_single_writer(1_000_000);
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!(s.count(), 3);
    }
}
