//! The root bus (segment 0, bus 0): 32 slots of one function each, the
//! host bridge in slot 0, BAR placement and the BAR routing table.
//!
//! The VMM acts as firmware: [`PciRoot::add_device`] asks the VMM's
//! allocator for each BAR's address, programs the BARs and enables
//! decoding and bus mastering, so a guest that keeps firmware assignments
//! (Linux does) finds them ready. After every guest configuration write
//! that touches the command register or a BAR, the root recomputes where
//! the device's BARs decode. A BAR decodes only while its kind's decode
//! bit is set and it lies wholly inside one of the root's windows of its
//! address space; anywhere else (address 0, the top of memory, across a
//! window's end, wrapping) it decodes nowhere, so a hostile guest cannot
//! put an ioeventfd or a memory slot over RAM or another device of the
//! VMM. BARs of two devices may overlap inside a window: the one mapped
//! last wins (see `routes`).

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use crate::address::{AddressRange, Bdf};
use crate::bar_window::PciBarWindow;
use crate::config_space::{BarInfo, BarKind, BarMove, affects_decoding, command, registers};
use crate::device::{AddressSpace, BarMapper, PciDevice};
use crate::host_bridge::HostBridge;
use crate::routes::{BarRoutes, Route};

/// Number of device slots on the bus.
pub const SLOTS: u8 = 32;

/// The guest address windows BARs may decode in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PciWindows {
    /// Memory window below 4 GiB.
    pub mmio32: Option<AddressRange>,
    /// Memory window above 4 GiB (64-bit BARs only).
    pub mmio64: Option<AddressRange>,
    /// I/O port window.
    pub io: Option<AddressRange>,
}

/// One of [`PciWindows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// [`PciWindows::mmio32`].
    Mmio32,
    /// [`PciWindows::mmio64`].
    Mmio64,
    /// [`PciWindows::io`].
    Io,
}

impl PciWindows {
    /// The window of `kind`.
    pub fn get(&self, kind: WindowKind) -> Option<AddressRange> {
        match kind {
            WindowKind::Mmio32 => self.mmio32,
            WindowKind::Mmio64 => self.mmio64,
            WindowKind::Io => self.io,
        }
    }

    /// Whether a BAR of `kind` may decode at `base..base + size`.
    pub fn admits(&self, kind: BarKind, base: u64, size: u64) -> bool {
        let fits =
            |window: Option<AddressRange>| window.is_some_and(|w| w.contains_range(base, size));
        match kind {
            BarKind::Io => fits(self.io),
            BarKind::Memory32 => {
                fits(self.mmio32) && base.checked_add(size).is_some_and(|end| end <= 1 << 32)
            }
            BarKind::Memory64 { .. } => fits(self.mmio32) || fits(self.mmio64),
        }
    }
}

/// A BAR [`PciRoot::add_device`] asks the VMM to place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRequest {
    /// The device it belongs to.
    pub bdf: Bdf,
    /// BAR index.
    pub index: u8,
    /// What it decodes: a 64-bit BAR may go in either memory window, a
    /// 32-bit one only below 4 GiB.
    pub kind: BarKind,
    /// Size in bytes; the address must be aligned to it.
    pub size: u64,
}

/// Why the VMM's allocator could not place a BAR.
pub type BarPlacementError = Box<dyn Error + Send + Sync>;

/// The VMM's allocator as [`PciRoot::add_device`] calls it: the guest
/// address for a BAR, aligned to its size, inside the root's windows.
pub type PlaceBar<'a> = dyn FnMut(&BarRequest) -> Result<u64, BarPlacementError> + 'a;

/// Why the root refused a device.
#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    /// All 31 device slots are taken.
    #[error("no free PCI slot")]
    NoFreeSlot,
    /// The slot asked for is taken or does not exist.
    #[error("PCI slot {0} is taken or out of range")]
    SlotUnavailable(u8),
    /// The VMM's allocator could not place a BAR.
    #[error("cannot place BAR {index} ({size:#x} bytes) of {bdf}")]
    BarPlacement {
        /// The device.
        bdf: Bdf,
        /// BAR index.
        index: u8,
        /// Its size.
        size: u64,
        /// The allocator's reason.
        #[source]
        source: BarPlacementError,
    },
    /// The allocator's address is misaligned or outside the root's windows.
    #[error("BAR {index} of {bdf} cannot decode at {address:#x}+{size:#x}")]
    BarAddress {
        /// The device.
        bdf: Bdf,
        /// BAR index.
        index: u8,
        /// The address given.
        address: u64,
        /// BAR size.
        size: u64,
    },
}

/// Per slot, where each BAR decodes now (`None`: nowhere).
type LiveBars = [[Option<u64>; registers::BAR_COUNT as usize]; SLOTS as usize];

/// The root bus.
pub struct PciRoot {
    slots: RwLock<Vec<Option<Arc<dyn PciDevice>>>>,
    /// The configuration-write lock (first in the lock order).
    live: Mutex<LiveBars>,
    routes: Arc<BarRoutes>,
    windows: PciWindows,
    mapper: Arc<dyn BarMapper>,
    rejected: AtomicU64,
    hook_errors: AtomicU64,
}

impl PciRoot {
    /// A bus with the host bridge in slot 0, BAR windows `windows`, and
    /// `mapper` doing the VMM's side of BAR moves.
    pub fn new(windows: PciWindows, mapper: Arc<dyn BarMapper>) -> Self {
        let mut slots: Vec<Option<Arc<dyn PciDevice>>> = vec![None; usize::from(SLOTS)];
        slots[0] = Some(Arc::new(HostBridge::new()));
        Self {
            slots: RwLock::new(slots),
            live: Mutex::new([[None; registers::BAR_COUNT as usize]; SLOTS as usize]),
            routes: Arc::default(),
            windows,
            mapper,
            rejected: AtomicU64::new(0),
            hook_errors: AtomicU64::new(0),
        }
    }

    /// The windows BARs may decode in.
    pub fn windows(&self) -> PciWindows {
        self.windows
    }

    /// A bus device covering window `kind` (to insert at the window's base
    /// for its size), or `None` if the root has no such window.
    pub fn bar_window(&self, kind: WindowKind) -> Option<Arc<PciBarWindow>> {
        let window = self.windows.get(kind)?;
        let space = match kind {
            WindowKind::Io => AddressSpace::Io,
            _ => AddressSpace::Memory,
        };
        Some(Arc::new(PciBarWindow::new(
            self.routes.clone(),
            space,
            window,
        )))
    }

    /// Adds `device` in the first free slot; see [`Self::add_device_at`].
    pub fn add_device(
        &self,
        device: Arc<dyn PciDevice>,
        place: &mut PlaceBar<'_>,
    ) -> Result<Bdf, PciRootError> {
        let free = {
            let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
            slots.iter().position(Option::is_none)
        };
        let slot = free.ok_or(PciRootError::NoFreeSlot)? as u8;
        self.add_device_at(slot, device, place)
    }

    /// Adds `device` in `slot` (1..32): asks `place` for each BAR's
    /// address, programs it, enables decoding and bus mastering, and maps
    /// the BARs (calling [`PciDevice::bar_moved`]). Addresses `place`
    /// handed out before an error stay the caller's to free.
    pub fn add_device_at(
        &self,
        slot: u8,
        device: Arc<dyn PciDevice>,
        place: &mut PlaceBar<'_>,
    ) -> Result<Bdf, PciRootError> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let bdf = Bdf::slot(slot);
        let taken = {
            let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
            slots.get(usize::from(slot)).is_none_or(Option::is_some)
        };
        if slot == 0 || taken {
            return Err(PciRootError::SlotUnavailable(slot));
        }
        let mut decode = command::BUS_MASTER;
        for bar in device.bars() {
            // Sizes come from the device (a passed-through one reports
            // what its hardware says): only a power of two can be placed.
            if !bar.size.is_power_of_two() {
                return Err(PciRootError::BarAddress {
                    bdf,
                    index: bar.index,
                    address: 0,
                    size: bar.size,
                });
            }
            let request = BarRequest {
                bdf,
                index: bar.index,
                kind: bar.kind,
                size: bar.size,
            };
            let address = place(&request).map_err(|source| PciRootError::BarPlacement {
                bdf,
                index: bar.index,
                size: bar.size,
                source,
            })?;
            if address % bar.size != 0 || !self.windows.admits(bar.kind, address, bar.size) {
                return Err(PciRootError::BarAddress {
                    bdf,
                    index: bar.index,
                    address,
                    size: bar.size,
                });
            }
            let register = registers::BAR0 + 4 * u16::from(bar.index);
            device.write_config(register, &(address as u32).to_le_bytes());
            if let BarKind::Memory64 { .. } = bar.kind {
                device.write_config(register + 4, &((address >> 32) as u32).to_le_bytes());
            }
            decode |= if bar.kind.is_memory() {
                command::MEMORY
            } else {
                command::IO
            };
        }
        let mut current = [0u8; 2];
        device.read_config(registers::COMMAND, &mut current);
        let enabled = u16::from_le_bytes(current) | decode;
        device.write_config(registers::COMMAND, &enabled.to_le_bytes());
        {
            let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
            slots[usize::from(slot)] = Some(device.clone());
        }
        self.refresh(slot, &device, &mut live[usize::from(slot)]);
        tracing::info!(%bdf, device = device.name(), "PCI device added");
        Ok(bdf)
    }

    /// Removes the device in `slot` (not the host bridge), unmapping its
    /// BARs first (its [`PciDevice::bar_moved`] sees each go to `None`).
    pub fn remove_device(&self, slot: u8) -> Option<Arc<dyn PciDevice>> {
        if slot == 0 {
            return None;
        }
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let device = {
            let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
            slots.get_mut(usize::from(slot))?.take()?
        };
        let bars = &mut live[usize::from(slot)];
        for bar in device.bars() {
            if let Some(from) = bars.get_mut(usize::from(bar.index)).and_then(Option::take) {
                self.routes.replace(slot, bar.index, None);
                self.moved(&device, bar, Some(from), None);
            }
        }
        *bars = Default::default();
        Some(device)
    }

    /// Every function on the bus (the host bridge first), for the VMM's
    /// descriptions of the bus (ACPI slots, `lspci`-like listings).
    pub fn devices(&self) -> Vec<(Bdf, Arc<dyn PciDevice>)> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        (0..SLOTS)
            .zip(slots.iter())
            .filter_map(|(slot, device)| Some((Bdf::slot(slot), device.clone()?)))
            .collect()
    }

    /// The device in `slot`.
    pub fn device(&self, slot: u8) -> Option<Arc<dyn PciDevice>> {
        let slots = self.slots.read().unwrap_or_else(PoisonError::into_inner);
        slots.get(usize::from(slot))?.clone()
    }

    /// The device a configuration access addresses, if the access is well
    /// formed (anything else is counted).
    fn target(&self, bdf: Bdf, offset: u16, len: usize) -> Option<Arc<dyn PciDevice>> {
        if !(1..=4).contains(&len)
            || usize::from(offset) + len > usize::from(registers::CONFIG_SPACE_SIZE)
        {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        // Other buses and functions are absent: reads of all ones are how
        // the guest learns that while it enumerates.
        if bdf.bus != 0 || bdf.function != 0 {
            return None;
        }
        self.device(bdf.device)
    }

    /// A guest configuration read; absent functions read all ones.
    pub fn read_config(&self, bdf: Bdf, offset: u16, data: &mut [u8]) {
        match self.target(bdf, offset, data.len()) {
            Some(device) => device.read_config(offset, data),
            None => crate::fill_ones(data),
        }
    }

    /// A guest configuration write; writes to absent functions are dropped.
    pub fn write_config(&self, bdf: Bdf, offset: u16, data: &[u8]) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(device) = self.target(bdf, offset, data.len()) else {
            return;
        };
        device.write_config(offset, data);
        if affects_decoding(offset, data.len()) {
            self.refresh(bdf.device, &device, &mut live[usize::from(bdf.device)]);
        }
    }

    /// Recomputes where `device`'s BARs decode and applies the changes.
    fn refresh(
        &self,
        slot: u8,
        device: &Arc<dyn PciDevice>,
        live: &mut [Option<u64>; registers::BAR_COUNT as usize],
    ) {
        for bar in device.bars() {
            let Some(current) = live.get_mut(usize::from(bar.index)) else {
                continue;
            };
            let wanted = bar
                .live_address()
                .filter(|&base| self.windows.admits(bar.kind, base, bar.size));
            if wanted == *current {
                continue;
            }
            let from = std::mem::replace(current, wanted);
            let space = if bar.kind.is_memory() {
                AddressSpace::Memory
            } else {
                AddressSpace::Io
            };
            self.routes.replace(
                slot,
                bar.index,
                wanted.map(|base| Route {
                    space,
                    base,
                    size: bar.size,
                    slot,
                    bar: bar.index,
                    device: device.clone(),
                }),
            );
            self.moved(device, bar, from, wanted);
        }
    }

    fn moved(&self, device: &Arc<dyn PciDevice>, bar: BarInfo, from: Option<u64>, to: Option<u64>) {
        let moved = BarMove {
            index: bar.index,
            kind: bar.kind,
            size: bar.size,
            from,
            to,
        };
        tracing::debug!(device = device.name(), ?moved, "PCI BAR moved");
        if let Err(e) = device.bar_moved(&moved, self.mapper.as_ref()) {
            self.hook_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                device = device.name(),
                bar = bar.index,
                "moving BAR failed: {e}"
            );
        }
    }

    /// Malformed configuration accesses (size or range) so far.
    pub fn rejected_accesses(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// BAR moves a device or the [`BarMapper`] failed to apply.
    pub fn bar_move_errors(&self) -> u64 {
        self.hook_errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
