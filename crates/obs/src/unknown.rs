//! Accesses to addresses no device claims, counted per address.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Address space of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressSpace {
    /// I/O ports.
    Pio,
    /// Memory-mapped I/O.
    Mmio,
}

/// Counts of unclaimed accesses at one address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnknownCounts {
    /// Reads (answered with all ones).
    pub reads: u64,
    /// Writes (dropped).
    pub writes: u64,
}

/// Distinct addresses tracked; beyond this, accesses are summed into one
/// overflow count so a guest sweeping the address space cannot grow the map.
pub const MAX_TRACKED_ADDRESSES: usize = 1024;

/// Per-address counters of unclaimed accesses. Only the slow path (no device
/// at the address) takes the lock.
#[derive(Debug, Default)]
pub struct UnknownAccesses {
    inner: Mutex<UnknownInner>,
}

#[derive(Debug, Default)]
struct UnknownInner {
    by_address: BTreeMap<(AddressSpace, u64), UnknownCounts>,
    overflow: u64,
}

impl UnknownAccesses {
    /// Counts one access and returns how many accesses this address has now
    /// seen in total (so callers can log only the first few).
    pub fn record(&self, space: AddressSpace, addr: u64, is_write: bool) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let tracked = inner.by_address.len();
        let key = (space, addr);
        if tracked >= MAX_TRACKED_ADDRESSES && !inner.by_address.contains_key(&key) {
            inner.overflow += 1;
            return u64::MAX;
        }
        let counts = inner.by_address.entry(key).or_default();
        if is_write {
            counts.writes += 1;
        } else {
            counts.reads += 1;
        }
        counts.reads + counts.writes
    }

    /// Copy of all counts, sorted by address, and the overflow count.
    pub fn snapshot(&self) -> (Vec<(AddressSpace, u64, UnknownCounts)>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let rows = inner
            .by_address
            .iter()
            .map(|(&(space, addr), &counts)| (space, addr, counts))
            .collect();
        (rows, inner.overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_kind() {
        let unknown = UnknownAccesses::default();
        assert_eq!(unknown.record(AddressSpace::Pio, 0x99, false), 1);
        assert_eq!(unknown.record(AddressSpace::Pio, 0x99, true), 2);
        assert_eq!(unknown.record(AddressSpace::Mmio, 0x99, false), 1);
        let (rows, overflow) = unknown.snapshot();
        assert_eq!(overflow, 0);
        assert_eq!(
            rows[0],
            (
                AddressSpace::Pio,
                0x99,
                UnknownCounts {
                    reads: 1,
                    writes: 1
                }
            )
        );
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn address_sweep_is_bounded() {
        let unknown = UnknownAccesses::default();
        for addr in 0..(MAX_TRACKED_ADDRESSES as u64 + 10) {
            unknown.record(AddressSpace::Mmio, addr, true);
        }
        let (rows, overflow) = unknown.snapshot();
        assert_eq!(rows.len(), MAX_TRACKED_ADDRESSES);
        assert_eq!(overflow, 10);
    }
}
