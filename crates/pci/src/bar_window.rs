//! A bus device covering a whole BAR window (the 32-bit or 64-bit MMIO
//! window, or the port window): each access goes to the device whose BAR
//! holds it, at the offset within that BAR.
//!
//! BARs move at run time (the guest reprograms them), so the window asks
//! the root's routing table on every access instead of the VMM inserting
//! each BAR on its bus. An access no BAR holds whole reads all ones, is
//! dropped when written, and is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sie_devices::BusDevice;

use crate::address::AddressRange;
use crate::device::AddressSpace;
use crate::routes::BarRoutes;

/// One BAR window on the VMM's MMIO or port bus.
pub struct PciBarWindow {
    routes: Arc<BarRoutes>,
    space: AddressSpace,
    window: AddressRange,
    misses: AtomicU64,
}

impl PciBarWindow {
    pub(crate) fn new(routes: Arc<BarRoutes>, space: AddressSpace, window: AddressRange) -> Self {
        Self {
            routes,
            space,
            window,
            misses: AtomicU64::new(0),
        }
    }

    /// The guest addresses this window covers (insert it there).
    pub fn range(&self) -> AddressRange {
        self.window
    }

    /// Accesses that hit no BAR so far.
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    fn address(&self, offset: u64) -> Option<u64> {
        (offset < self.window.size).then(|| self.window.base + offset)
    }
}

impl BusDevice for PciBarWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let hit = self
            .address(offset)
            .and_then(|addr| self.routes.find(self.space, addr, data.len()));
        match hit {
            Some(hit) => hit.device.read_bar(hit.bar, hit.offset, data),
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                crate::fill_ones(data);
            }
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let hit = self
            .address(offset)
            .and_then(|addr| self.routes.find(self.space, addr, data.len()));
        match hit {
            Some(hit) => hit.device.write_bar(hit.bar, hit.offset, data),
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
