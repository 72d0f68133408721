//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability in configuration
//! space, and the vector table and pending-bit array (PBA) a device keeps
//! in one of its BARs.
//!
//! The table decides, per vector, whether the VMM should route it: a
//! vector is *live* while MSI-X is enabled, the function is not masked and
//! the vector's own mask bit is clear. Each change of a vector's liveness
//! or message reaches [`MsiInterrupts::configure`] (`None` while not
//! live). [`MsixTable::trigger`] delivers a live vector and sets the
//! pending bit of a masked one; unmasking delivers and clears it. A source
//! that signals a vector's notifier itself (a passed-through device) while
//! the vector is masked has its interrupt latched too: the PBA and an
//! unmask collect it through [`MsiInterrupts::take_unrouted_signal`]. Guest
//! messages are passed on as written (the VMM checks them when it builds a
//! route); accesses that are not an aligned dword or qword are counted and
//! ignored.

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::config_space::{ConfigSpace, ConfigSpaceError};
use crate::fill_ones;

/// Capability ID of MSI-X.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per vector table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// The most vectors a function may have.
pub const MAX_VECTORS: u16 = 2048;

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// One MSI message: a write of `data` to `address`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    /// Message address (on x86, 0xfee0_0000 plus destination bits).
    pub address: u64,
    /// Message data (vector and delivery mode on x86).
    pub data: u32,
}

/// The VMM's side of a device's MSI vectors (KVM MSI routes and irqfds in
/// sie); devices never see KVM.
pub trait MsiInterrupts: Send + Sync {
    /// How many vectors exist (the table's size).
    fn vector_count(&self) -> u16;
    /// Routes `vector` to `message`, or stops routing it (`None`: disabled
    /// or masked).
    fn configure(&self, vector: u16, message: Option<MsiMessage>) -> io::Result<()>;
    /// Raises `vector` once.
    fn trigger(&self, vector: u16) -> io::Result<()>;
    /// The eventfd that raises `vector` when written (the irqfd), for
    /// sources that signal it directly (a VFIO device).
    fn notifier(&self, vector: u16) -> Option<&EventFd>;
    /// Whether `vector`'s notifier was signalled while the vector had no
    /// route, taking the signal: a source that signals the notifier
    /// directly does not know the guest masked the vector, and its
    /// interrupt belongs in the PBA. Only an outlet that detaches unrouted
    /// notifiers from the interrupt controller (so their signals wait in
    /// the eventfd) can tell; the others never lose such signals to a
    /// missing route because nothing but the table triggers them.
    fn take_unrouted_signal(&self, vector: u16) -> bool {
        let _ = vector;
        false
    }
}

/// Errors building MSI-X.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// Vector count not 1..=2048.
    #[error("{0} MSI-X vectors; 1 to 2048 are possible")]
    VectorCount(u16),
    /// Table or PBA offset not 8-byte aligned or BAR index above 5.
    #[error("MSI-X structure at BAR {bar} offset {offset:#x} is not valid")]
    Placement {
        /// BAR index.
        bar: u8,
        /// Offset within the BAR.
        offset: u32,
    },
    /// The interrupt outlet has fewer vectors than the table.
    #[error("the interrupt outlet has {have} vectors, the table needs {need}")]
    Outlet {
        /// Vectors the outlet has.
        have: u16,
        /// Vectors the table has.
        need: u16,
    },
    /// The capability did not fit.
    #[error(transparent)]
    Config(#[from] ConfigSpaceError),
}

/// The MSI-X capability of a configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    offset: u16,
    vectors: u16,
}

impl MsixCapability {
    /// Adds the capability for `vectors` vectors with the table at
    /// `table_offset` of BAR `table_bar` and the PBA at `pba_offset` of
    /// BAR `pba_bar` (offsets 8-byte aligned). Only the enable and
    /// function-mask bits are writable.
    pub fn add(
        config: &mut ConfigSpace,
        vectors: u16,
        (table_bar, table_offset): (u8, u32),
        (pba_bar, pba_offset): (u8, u32),
    ) -> Result<Self, MsixError> {
        if !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(MsixError::VectorCount(vectors));
        }
        for (bar, offset) in [(table_bar, table_offset), (pba_bar, pba_offset)] {
            if bar > 5 || offset % 8 != 0 {
                return Err(MsixError::Placement { bar, offset });
            }
        }
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(vectors - 1).to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        let offset = config.add_capability(MSIX_CAPABILITY_ID, &body)?;
        config.set_write_mask(
            offset + 2,
            &(CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes(),
        )?;
        Ok(Self { offset, vectors })
    }

    /// Offset of the capability in configuration space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.vectors
    }

    /// The message control register as the guest last wrote it.
    pub fn control(&self, config: &ConfigSpace) -> u16 {
        config.read_u16(self.offset + 2)
    }

    /// Bytes the vector table of `vectors` vectors takes in its BAR.
    pub fn table_len(vectors: u16) -> u64 {
        u64::from(vectors) * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA of `vectors` vectors takes in its BAR (whole qwords).
    pub fn pba_len(vectors: u16) -> u64 {
        u64::from(vectors).div_ceil(64) * 8
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    address_low: u32,
    address_high: u32,
    data: u32,
    control: u32,
}

impl Entry {
    const RESET: Self = Self {
        address_low: 0,
        address_high: 0,
        data: 0,
        control: VECTOR_MASKED,
    };

    fn message(&self) -> MsiMessage {
        MsiMessage {
            address: u64::from(self.address_high) << 32 | u64::from(self.address_low),
            data: self.data,
        }
    }

    fn dword(&self, index: u64) -> u32 {
        match index {
            0 => self.address_low,
            1 => self.address_high,
            2 => self.data,
            _ => self.control,
        }
    }

    fn set_dword(&mut self, index: u64, value: u32) {
        match index {
            // Bits 1:0 of the address are reserved: messages are dword writes.
            0 => self.address_low = value & !0b11,
            1 => self.address_high = value,
            2 => self.data = value,
            _ => self.control = value & VECTOR_MASKED,
        }
    }
}

/// A device's MSI-X vector table and PBA.
pub struct MsixTable {
    entries: Vec<Entry>,
    pending: Vec<u64>,
    /// What [`MsiInterrupts::configure`] was last told per vector.
    routed: Vec<Option<MsiMessage>>,
    enabled: bool,
    function_masked: bool,
    interrupts: Arc<dyn MsiInterrupts>,
    rejected: u64,
    dropped: u64,
    outlet_errors: u64,
}

impl std::fmt::Debug for MsixTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixTable")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .field("function_masked", &self.function_masked)
            .finish_non_exhaustive()
    }
}

impl MsixTable {
    /// A table of `vectors` vectors, all masked, MSI-X disabled, raising
    /// interrupts through `interrupts` (which needs at least as many).
    pub fn new(vectors: u16, interrupts: Arc<dyn MsiInterrupts>) -> Result<Self, MsixError> {
        if !(1..=MAX_VECTORS).contains(&vectors) {
            return Err(MsixError::VectorCount(vectors));
        }
        let have = interrupts.vector_count();
        if have < vectors {
            return Err(MsixError::Outlet {
                have,
                need: vectors,
            });
        }
        Ok(Self {
            entries: vec![Entry::RESET; usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            routed: vec![None; usize::from(vectors)],
            enabled: false,
            function_masked: false,
            interrupts,
            rejected: 0,
            dropped: 0,
            outlet_errors: 0,
        })
    }

    /// Number of vectors.
    pub fn vector_count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the guest masked the whole function.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector`'s own mask bit is set (true for a vector that does
    /// not exist).
    pub fn vector_masked(&self, vector: u16) -> bool {
        self.entries
            .get(usize::from(vector))
            .is_none_or(|entry| entry.control & VECTOR_MASKED != 0)
    }

    /// Whether `vector`'s pending bit is set.
    pub fn pending(&self, vector: u16) -> bool {
        let word = self
            .pending
            .get(usize::from(vector) / 64)
            .copied()
            .unwrap_or(0);
        word & (1 << (vector % 64)) != 0
    }

    /// The message in `vector`'s entry.
    pub fn message(&self, vector: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(vector)).map(Entry::message)
    }

    /// Guest table or PBA accesses refused so far (size, alignment, range).
    pub fn rejected_accesses(&self) -> u64 {
        self.rejected
    }

    /// Triggers dropped because MSI-X was disabled or the vector did not
    /// exist.
    pub fn dropped_interrupts(&self) -> u64 {
        self.dropped
    }

    /// Calls to the interrupt outlet that failed (logged).
    pub fn outlet_errors(&self) -> u64 {
        self.outlet_errors
    }

    fn live(&self, vector: usize) -> bool {
        self.enabled && !self.function_masked && self.entries[vector].control & VECTOR_MASKED == 0
    }

    fn set_pending(&mut self, vector: usize, on: bool) {
        let bit = 1u64 << (vector % 64);
        let word = &mut self.pending[vector / 64];
        if on {
            *word |= bit;
        } else {
            *word &= !bit;
        }
    }

    /// Tells the outlet about `vector`'s route if it changed, and delivers
    /// its pending interrupt once it is live.
    fn sync(&mut self, vector: usize) {
        let live = self.live(vector);
        let wanted = live.then(|| self.entries[vector].message());
        // Becoming live: what the source signalled while the vector was
        // masked is pending, delivered below once it is routed.
        if live
            && self.routed[vector].is_none()
            && self.interrupts.take_unrouted_signal(vector as u16)
        {
            self.set_pending(vector, true);
        }
        if wanted != self.routed[vector] {
            if let Err(e) = self.interrupts.configure(vector as u16, wanted) {
                self.outlet_errors += 1;
                // Guest-triggered (a message the VMM refuses): debug, so a
                // guest cannot flood the log.
                tracing::debug!(vector, "MSI-X route update failed: {e}");
            }
            self.routed[vector] = wanted;
        }
        if live && self.pending(vector as u16) {
            self.set_pending(vector, false);
            self.deliver(vector as u16);
        }
    }

    fn deliver(&mut self, vector: u16) {
        if let Err(e) = self.interrupts.trigger(vector) {
            self.outlet_errors += 1;
            tracing::warn!(vector, "MSI-X interrupt failed: {e}");
        }
    }

    /// Applies the message control register (`MsixCapability::control`)
    /// after a configuration write: enable and function mask.
    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for vector in 0..self.entries.len() {
            self.sync(vector);
        }
    }

    /// Raises `vector`: delivered if live, remembered in the PBA if masked,
    /// dropped (and counted) if MSI-X is disabled or the vector does not
    /// exist.
    pub fn trigger(&mut self, vector: u16) {
        let index = usize::from(vector);
        if index >= self.entries.len() || !self.enabled {
            self.dropped += 1;
            return;
        }
        if self.live(index) {
            self.deliver(vector);
        } else {
            self.set_pending(index, true);
        }
    }

    /// Puts the table back to its reset state (all masked, nothing
    /// pending, MSI-X disabled), as a function reset does.
    pub fn reset(&mut self) {
        self.entries.fill(Entry::RESET);
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
        for vector in 0..self.entries.len() {
            self.sync(vector);
        }
    }

    /// A guest read of the vector table at `offset`.
    pub fn read_table(&mut self, offset: u64, data: &mut [u8]) {
        let Some((entry, dword)) = self.table_index(offset, data.len()) else {
            fill_ones(data);
            return;
        };
        let entry = self.entries[entry];
        let low = entry.dword(dword);
        if data.len() == 8 {
            let high = entry.dword(dword + 1);
            data.copy_from_slice(&(u64::from(high) << 32 | u64::from(low)).to_le_bytes());
        } else {
            data.copy_from_slice(&low.to_le_bytes());
        }
    }

    /// A guest write of the vector table at `offset`.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let Some((entry, dword)) = self.table_index(offset, data.len()) else {
            return;
        };
        let mut value = [0u8; 8];
        value[..data.len()].copy_from_slice(data);
        let value = u64::from_le_bytes(value);
        self.entries[entry].set_dword(dword, value as u32);
        if data.len() == 8 {
            self.entries[entry].set_dword(dword + 1, (value >> 32) as u32);
        }
        self.sync(entry);
    }

    /// Entry and dword index of an aligned dword or qword table access.
    fn table_index(&mut self, offset: u64, len: usize) -> Option<(usize, u64)> {
        let len_ok = matches!(len, 4 | 8) && offset.is_multiple_of(len as u64);
        let entry = usize::try_from(offset / MSIX_ENTRY_SIZE).ok();
        match entry.filter(|entry| len_ok && *entry < self.entries.len()) {
            Some(entry) => Some((entry, (offset % MSIX_ENTRY_SIZE) / 4)),
            None => {
                self.rejected += 1;
                None
            }
        }
    }

    /// Latches the interrupts sources signalled straight at the notifiers
    /// of masked vectors (see [`MsiInterrupts::take_unrouted_signal`]).
    fn collect_unrouted_signals(&mut self) {
        if !self.enabled {
            return;
        }
        for vector in 0..self.entries.len() {
            if !self.live(vector) && self.interrupts.take_unrouted_signal(vector as u16) {
                self.set_pending(vector, true);
            }
        }
    }

    /// A guest read of the PBA at `offset`.
    pub fn read_pba(&mut self, offset: u64, data: &mut [u8]) {
        self.collect_unrouted_signals();
        let len_ok = matches!(data.len(), 4 | 8) && offset.is_multiple_of(data.len() as u64);
        let word = usize::try_from(offset / 8)
            .ok()
            .and_then(|word| self.pending.get(word).copied());
        let (true, Some(word)) = (len_ok, word) else {
            self.rejected += 1;
            fill_ones(data);
            return;
        };
        let bytes = word.to_le_bytes();
        let start = (offset % 8) as usize;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// A guest write of the PBA: read-only, so counted and ignored.
    pub fn write_pba(&mut self, _offset: u64, _data: &[u8]) {
        self.rejected += 1;
    }
}

#[cfg(test)]
#[path = "msix_tests.rs"]
mod tests;
