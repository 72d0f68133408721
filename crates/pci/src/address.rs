//! Addresses on PCI: a function's bus/device/function triple and a guest
//! address range.

use std::fmt;

/// Bus, device and function of a PCI function (segment 0). Displayed the
/// way Linux names it: `0000:00:05.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device (slot) number, 0..32.
    pub device: u8,
    /// Function number, 0..8.
    pub function: u8,
}

impl Bdf {
    /// Function 0 of `device` on bus 0.
    pub fn slot(device: u8) -> Self {
        Self {
            bus: 0,
            device,
            function: 0,
        }
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "0000:{:02x}:{:02x}.{}",
            self.bus, self.device, self.function
        )
    }
}

/// A range of guest addresses `base..base + size` (size in bytes, never
/// wrapping past the top of the address space).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl AddressRange {
    /// The range `base..base + size`.
    pub const fn new(base: u64, size: u64) -> Self {
        Self { base, size }
    }

    /// One past the last address, or `None` if the range wraps or is empty.
    pub fn end(&self) -> Option<u64> {
        self.base.checked_add(self.size).filter(|_| self.size > 0)
    }

    /// Whether all of `base..base + size` lies inside this range (false
    /// for empty or wrapping ranges).
    pub fn contains_range(&self, base: u64, size: u64) -> bool {
        let (Some(end), Some(other_end)) = (self.end(), AddressRange::new(base, size).end()) else {
            return false;
        };
        base >= self.base && other_end <= end
    }

    /// Whether `addr` lies inside this range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_displays_like_linux() {
        assert_eq!(Bdf::slot(5).to_string(), "0000:00:05.0");
        let bdf = Bdf {
            bus: 0x12,
            device: 0x1f,
            function: 7,
        };
        assert_eq!(bdf.to_string(), "0000:12:1f.7");
    }

    #[test]
    fn ranges_refuse_wrapping_and_empty() {
        let window = AddressRange::new(0x1000, 0x1000);
        assert!(window.contains_range(0x1000, 0x1000));
        assert!(window.contains_range(0x1800, 0x800));
        assert!(!window.contains_range(0x1800, 0x801));
        assert!(!window.contains_range(0xfff, 2));
        assert!(!window.contains_range(0x1000, 0));
        assert!(!window.contains_range(u64::MAX, 2));
        assert!(!AddressRange::new(u64::MAX, 2).contains_range(u64::MAX, 1));
        assert!(window.contains(0x1fff));
        assert!(!window.contains(0x2000));
        assert!(!window.contains(0));
    }
}
