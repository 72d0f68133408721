//! An address bus: non-overlapping ranges, each owned by one device.
//!
//! Built before the vCPUs start and never changed afterwards, so lookups take
//! no lock: a binary search over a sorted vector. Each range carries the
//! device's statistics from the observatory, so the exit dispatch records an
//! access without looking anything up.

use std::sync::Arc;

use sie_obs::DeviceStats;

/// A device reachable through guest port or MMIO accesses. `offset` is
/// relative to the start of the range the device was inserted at; `data` is
/// 1 to 8 bytes, little endian.
pub trait BusDevice: Send + Sync {
    /// Guest read: fill `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Guest write of `data`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// A zero-length or wrapping range.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<dyn BusDevice>,
    stats: Arc<DeviceStats>,
}

/// The device found at an address.
pub struct BusHit<'a> {
    /// The device.
    pub device: &'a dyn BusDevice,
    /// Offset of the address within the device's range.
    pub offset: u64,
    /// Where the device's accesses are counted.
    pub stats: &'a DeviceStats,
}

/// One address space (ports or MMIO).
#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|e| (e.base, e.len)))
            .finish()
    }
}

impl Bus {
    /// Puts `device` at `base..base+len`; its accesses are counted in `stats`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<dyn BusDevice>,
        stats: Arc<DeviceStats>,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let position = self.entries.partition_point(|e| e.base < base);
        let overlaps_prev = position
            .checked_sub(1)
            .and_then(|p| self.entries.get(p))
            .is_some_and(|prev| prev.base + prev.len > base);
        let overlaps_next = self
            .entries
            .get(position)
            .is_some_and(|next| next.base < end);
        if overlaps_prev || overlaps_next {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(
            position,
            Entry {
                base,
                len,
                device,
                stats,
            },
        );
        Ok(())
    }

    /// The device whose range holds `addr`.
    #[inline]
    pub fn find(&self, addr: u64) -> Option<BusHit<'_>> {
        let position = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(position.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset < entry.len).then_some(BusHit {
            device: entry.device.as_ref(),
            offset,
            stats: &entry.stats,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn stats() -> Arc<DeviceStats> {
        Arc::new(DeviceStats::default())
    }

    #[derive(Default)]
    struct Recorder {
        writes: Mutex<Vec<(u64, Vec<u8>)>>,
    }

    impl BusDevice for Recorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.writes.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn find_routes_to_the_owning_range_with_offset() {
        let mut bus = Bus::default();
        let a = Arc::new(Recorder::default());
        let b = Arc::new(Recorder::default());
        let (a_stats, b_stats) = (stats(), stats());
        bus.insert(0x3f8, 8, a.clone(), a_stats.clone()).unwrap();
        bus.insert(0x60, 1, b.clone(), b_stats.clone()).unwrap();
        let hit = bus.find(0x3fd).unwrap();
        assert_eq!(hit.offset, 5);
        assert!(std::ptr::eq(hit.stats, a_stats.as_ref()));
        hit.device.write(hit.offset, &[7]);
        assert_eq!(a.writes.lock().unwrap()[0], (5, vec![7]));
        assert!(std::ptr::eq(
            bus.find(0x60).unwrap().stats,
            b_stats.as_ref()
        ));
        assert!(bus.find(0x61).is_none());
        assert!(bus.find(0x3f7).is_none());
        assert!(bus.find(0x400).is_none());
        assert!(bus.find(0).is_none());
        assert!(bus.find(u64::MAX).is_none());
    }

    #[test]
    fn overlapping_and_invalid_ranges_are_refused() {
        let mut bus = Bus::default();
        let dev = Arc::new(Recorder::default());
        bus.insert(0x100, 0x10, dev.clone(), stats()).unwrap();
        for (base, len) in [(0x108, 0x10), (0xf8, 0x10), (0x100, 1), (0xf0, 0x100)] {
            assert_eq!(
                bus.insert(base, len, dev.clone(), stats()),
                Err(BusError::Overlap { base, len })
            );
        }
        assert!(bus.insert(0x110, 1, dev.clone(), stats()).is_ok());
        assert!(matches!(
            bus.insert(u64::MAX, 2, dev.clone(), stats()),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(0x200, 0, dev, stats()),
            Err(BusError::InvalidRange { .. })
        ));
    }
}
