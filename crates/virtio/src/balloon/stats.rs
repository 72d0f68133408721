//! The guest's memory statistics as the stats queue carries them: an
//! array of packed `(le16 tag, le64 value)` entries (virtio 1.2 §5.5.6.3),
//! named as Firecracker's `GET /balloon/statistics` names them.

/// Bytes of one entry on the wire.
pub const STAT_ENTRY_LEN: usize = 10;
/// Most bytes of a stats buffer read: Linux sends 16 entries; a larger
/// buffer is read up to here and the rest ignored.
pub const MAX_STATS_LEN: usize = 64 * STAT_ENTRY_LEN;

/// The latest statistics the driver sent; a tag it never sent is `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestStats {
    /// Values by tag (0..16: swap_in .. direct_reclaim).
    values: [Option<u64>; STAT_NAMES.len()],
}

/// Firecracker's field names, in virtio tag order.
pub const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

impl GuestStats {
    /// Takes every whole entry of `bytes` over the values held. Returns
    /// whether the buffer was well formed (a whole number of entries);
    /// unknown tags are skipped, as the spec asks.
    pub fn update(&mut self, bytes: &[u8]) -> bool {
        for entry in bytes.chunks_exact(STAT_ENTRY_LEN) {
            let tag = u16::from_le_bytes([entry[0], entry[1]]);
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            if let Some(slot) = self.values.get_mut(usize::from(tag)) {
                *slot = Some(u64::from_le_bytes(value));
            }
        }
        bytes.len().is_multiple_of(STAT_ENTRY_LEN)
    }

    /// `(name, value)` for each statistic the driver sent.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        STAT_NAMES
            .iter()
            .zip(self.values)
            .filter_map(|(name, value)| value.map(|v| (*name, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, value: u64) -> Vec<u8> {
        let mut out = tag.to_le_bytes().to_vec();
        out.extend(value.to_le_bytes());
        out
    }

    #[test]
    fn entries_are_named_and_unknown_tags_skipped() {
        let mut stats = GuestStats::default();
        let mut bytes = entry(4, 1 << 20);
        bytes.extend(entry(99, 7));
        bytes.extend(entry(15, 3));
        assert!(stats.update(&bytes));
        assert_eq!(
            stats.fields(),
            [("free_memory", 1 << 20), ("direct_reclaim", 3)]
        );
    }

    #[test]
    fn a_torn_entry_is_reported_and_ignored() {
        let mut stats = GuestStats::default();
        let mut bytes = entry(5, 9);
        bytes.extend([1, 2, 3]);
        assert!(!stats.update(&bytes));
        assert_eq!(stats.fields(), [("total_memory", 9)]);
    }
}
