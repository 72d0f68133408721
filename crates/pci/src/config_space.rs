//! A PCI function's 4 KiB configuration space (PCI Local Bus 3.0 §6,
//! PCIe's extended space above 0x100): bytes plus a per-byte write mask.
//!
//! The mask is the whole register model: a guest write changes only the
//! writable bits, so BAR sizing (write all ones, read back the size mask)
//! needs no special case, and read-only fields stay as the device set them.
//! Accesses of 1, 2 or 4 bytes must be naturally aligned and inside the
//! space; others read all ones, are ignored when written, and are counted.

use crate::fill_ones;

/// Offsets of the type-0 header registers.
pub mod registers {
    /// Vendor ID (16 bits).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device ID (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits, see [`super::command`]).
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits).
    pub const STATUS: u16 = 0x06;
    /// Revision ID.
    pub const REVISION_ID: u16 = 0x08;
    /// Programming interface.
    pub const PROG_IF: u16 = 0x09;
    /// Subclass code.
    pub const SUBCLASS: u16 = 0x0a;
    /// Base class code.
    pub const CLASS: u16 = 0x0b;
    /// Header type (bit 7: multi-function).
    pub const HEADER_TYPE: u16 = 0x0e;
    /// BAR 0; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: u16 = 0x10;
    /// One past BAR 5.
    pub const BAR_END: u16 = 0x28;
    /// Subsystem vendor ID (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Subsystem ID (16 bits).
    pub const SUBSYSTEM_ID: u16 = 0x2e;
    /// Expansion ROM BAR (read-only zero here: no ROM).
    pub const ROM_BAR: u16 = 0x30;
    /// Capabilities pointer.
    pub const CAPABILITIES_POINTER: u16 = 0x34;
    /// Interrupt line (written by the guest, unused by sie).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (0: none, 1..=4: INTA#..INTD#).
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// Size of the configuration space in bytes.
    pub const CONFIG_SPACE_SIZE: u16 = 4096;
    /// Number of BAR registers in a type-0 header.
    pub const BAR_COUNT: u8 = 6;
    /// Where capabilities start (after the header).
    pub const FIRST_CAPABILITY: u16 = 0x40;
    /// End of the conventional space where capabilities live.
    pub const CAPABILITIES_END: u16 = 0x100;
}

/// Bits of the command register.
pub mod command {
    /// I/O space decoding.
    pub const IO: u16 = 1 << 0;
    /// Memory space decoding.
    pub const MEMORY: u16 = 1 << 1;
    /// Bus master (DMA and MSI).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity error response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// INTx emulation disabled.
    pub const INTX_DISABLE: u16 = 1 << 10;
    /// Every bit a guest may change.
    pub const WRITABLE: u16 = IO | MEMORY | BUS_MASTER | PARITY | SERR | INTX_DISABLE;
}

use registers::*;

/// Status register bit 4: a capability list is present.
const STATUS_CAPABILITIES: u16 = 1 << 4;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory space (below 4 GiB), not prefetchable.
    Memory32,
    /// 64-bit memory space; uses two BAR registers.
    Memory64 {
        /// Whether reads have no side effects (the prefetchable bit).
        prefetchable: bool,
    },
    /// I/O port space.
    Io,
}

impl BarKind {
    /// The register's low flag bits.
    fn flags(self) -> u32 {
        match self {
            Self::Memory32 => 0,
            Self::Memory64 { prefetchable } => 0b100 | if prefetchable { 0b1000 } else { 0 },
            Self::Io => 1,
        }
    }

    /// The address bits of the low register (the rest are flags).
    fn address_mask(self) -> u32 {
        match self {
            Self::Io => !0b11,
            _ => !0b1111,
        }
    }

    /// Whether this BAR is in memory space (as opposed to ports).
    pub fn is_memory(self) -> bool {
        !matches!(self, Self::Io)
    }
}

/// One BAR as the configuration space describes it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0..6; a 64-bit BAR has the lower of its two indices).
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// The address programmed in the register(s).
    pub address: u64,
    /// Whether the command register enables decoding for its kind.
    pub decoding: bool,
}

impl BarInfo {
    /// Where the BAR decodes: its address if decoding is enabled.
    pub fn live_address(&self) -> Option<u64> {
        self.decoding.then_some(self.address)
    }
}

/// A change of where a BAR decodes (`None`: not decoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarMove {
    /// BAR index.
    pub index: u8,
    /// What it decodes.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
    /// Where it decoded before.
    pub from: Option<u64>,
    /// Where it decodes now.
    pub to: Option<u64>,
}

/// What a guest configuration write changed that a device may act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConfigWriteOutcome {
    /// BARs whose decoded address changed (programmed address or the
    /// decode-enable bit of their kind). Writes while decoding is off
    /// (the guest sizing a BAR) move nothing until decoding is enabled.
    pub bar_moves: Vec<BarMove>,
    /// The command register before and after, if it changed.
    pub command_changed: Option<(u16, u16)>,
}

/// The identity fields of a type-0 header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciHeader {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision_id: u8,
    /// Base class code.
    pub class: u8,
    /// Subclass code.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor_id: u16,
    /// Subsystem ID.
    pub subsystem_id: u16,
    /// Interrupt pin (0: no INTx).
    pub interrupt_pin: u8,
}

/// Errors while a device builds its configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigSpaceError {
    /// The BAR index is not 0..6 (or 0..5 for a 64-bit BAR).
    #[error("BAR index {0} is out of range")]
    BarIndex(u8),
    /// The BAR register (or its upper half) is already in use.
    #[error("BAR {0} is already in use")]
    BarInUse(u8),
    /// The size is not a power of two within the kind's limits.
    #[error("BAR size {size:#x} is not valid for {kind:?}")]
    BarSize {
        /// What the BAR decodes.
        kind: BarKind,
        /// The refused size.
        size: u64,
    },
    /// The capability does not fit below 0x100.
    #[error("no room for a {0}-byte capability")]
    CapabilityTooLarge(usize),
    /// A write mask outside the configuration space.
    #[error("write mask at {offset:#x}+{len} is outside the configuration space")]
    MaskOutOfRange {
        /// Offset of the mask.
        offset: u16,
        /// Its length in bytes.
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BarSlot {
    Free,
    Bar {
        kind: BarKind,
        size: u64,
    },
    /// The upper register of the 64-bit BAR one below.
    Upper,
}

const SIZE: usize = CONFIG_SPACE_SIZE as usize;

/// A function's configuration space.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; SIZE]>,
    write_mask: Box<[u8; SIZE]>,
    bars: [BarSlot; BAR_COUNT as usize],
    next_capability: u16,
    last_capability: Option<u16>,
    rejected: u64,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor_id", &self.read_u16(VENDOR_ID))
            .field("device_id", &self.read_u16(DEVICE_ID))
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

/// Whether `offset..offset + len` is a valid guest access.
fn access_ok(offset: u16, len: usize) -> bool {
    matches!(len, 1 | 2 | 4) && usize::from(offset) % len == 0 && usize::from(offset) + len <= SIZE
}

impl ConfigSpace {
    /// A type-0 header with `header`'s identity, no BARs and no
    /// capabilities; the command register starts at 0 (nothing decoded).
    pub fn new(header: PciHeader) -> Self {
        let mut space = Self {
            bytes: Box::new([0; SIZE]),
            write_mask: Box::new([0; SIZE]),
            bars: [BarSlot::Free; BAR_COUNT as usize],
            next_capability: FIRST_CAPABILITY,
            last_capability: None,
            rejected: 0,
        };
        space.set_u16(VENDOR_ID, header.vendor_id);
        space.set_u16(DEVICE_ID, header.device_id);
        space.set_u8(REVISION_ID, header.revision_id);
        space.set_u8(PROG_IF, header.prog_if);
        space.set_u8(SUBCLASS, header.subclass);
        space.set_u8(CLASS, header.class);
        space.set_u16(SUBSYSTEM_VENDOR_ID, header.subsystem_vendor_id);
        space.set_u16(SUBSYSTEM_ID, header.subsystem_id);
        space.set_u8(INTERRUPT_PIN, header.interrupt_pin);
        space.mask_bytes(COMMAND, &command::WRITABLE.to_le_bytes());
        // Cache line size, latency timer, interrupt line: plain storage.
        space.mask_bytes(0x0c, &[0xff, 0xff]);
        space.mask_bytes(INTERRUPT_LINE, &[0xff]);
        space
    }

    /// Declares BAR `index` of `kind` and `size` bytes (a power of two: at
    /// least 16 for memory, 4..=256 for ports, at most 2 GiB for a 32-bit
    /// BAR). It starts at address 0; the guest sizes it by writing all
    /// ones and reading back.
    pub fn add_bar(&mut self, index: u8, kind: BarKind, size: u64) -> Result<(), ConfigSpaceError> {
        let wide = matches!(kind, BarKind::Memory64 { .. });
        let last = if wide {
            index.checked_add(1)
        } else {
            Some(index)
        };
        if last.is_none_or(|last| last >= BAR_COUNT) {
            return Err(ConfigSpaceError::BarIndex(index));
        }
        let valid_size = size.is_power_of_two()
            && match kind {
                BarKind::Memory32 => (16..=1 << 31).contains(&size),
                BarKind::Memory64 { .. } => size >= 16,
                BarKind::Io => (4..=256).contains(&size),
            };
        if !valid_size {
            return Err(ConfigSpaceError::BarSize { kind, size });
        }
        let i = usize::from(index);
        let used = |slot: &BarSlot| *slot != BarSlot::Free;
        if used(&self.bars[i]) || (wide && used(&self.bars[i + 1])) {
            return Err(ConfigSpaceError::BarInUse(index));
        }
        self.bars[i] = BarSlot::Bar { kind, size };
        let register = bar_register(index);
        let address_bits = !(size - 1);
        self.set_u32(register, kind.flags());
        self.mask_bytes(
            register,
            &((address_bits as u32) & kind.address_mask()).to_le_bytes(),
        );
        if wide {
            self.bars[i + 1] = BarSlot::Upper;
            self.set_u32(register + 4, 0);
            self.mask_bytes(register + 4, &((address_bits >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    /// Appends a capability with ID `id` and `body` (the bytes after the
    /// ID and next pointer), links it into the list and sets the status
    /// register's capability bit. Returns its offset. The body is
    /// read-only until [`Self::set_write_mask`] opens bits of it.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u16, ConfigSpaceError> {
        let len = body.len() + 2;
        let offset = self.next_capability;
        let end = usize::from(offset) + len;
        if end > usize::from(CAPABILITIES_END) {
            return Err(ConfigSpaceError::CapabilityTooLarge(len));
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        self.bytes[usize::from(offset) + 2..end].copy_from_slice(body);
        let pointer = self
            .last_capability
            .map_or(CAPABILITIES_POINTER, |last| last + 1);
        // Capability offsets are below 0x100, so they fit the 8-bit pointer.
        self.set_u8(pointer, offset as u8);
        self.last_capability = Some(offset);
        self.next_capability = (end as u16).next_multiple_of(4);
        let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
        self.set_u16(STATUS, status);
        Ok(offset)
    }

    /// Makes the bits set in `mask` writable by the guest at `offset`
    /// (and the others read-only).
    pub fn set_write_mask(&mut self, offset: u16, mask: &[u8]) -> Result<(), ConfigSpaceError> {
        if usize::from(offset) + mask.len() > SIZE {
            return Err(ConfigSpaceError::MaskOutOfRange {
                offset,
                len: mask.len(),
            });
        }
        self.mask_bytes(offset, mask);
        Ok(())
    }

    fn mask_bytes(&mut self, offset: u16, mask: &[u8]) {
        let start = usize::from(offset);
        self.write_mask[start..start + mask.len()].copy_from_slice(mask);
    }

    /// A guest read of 1, 2 or 4 bytes at `offset`.
    pub fn read(&mut self, offset: u16, data: &mut [u8]) {
        if !access_ok(offset, data.len()) {
            self.rejected += 1;
            fill_ones(data);
            return;
        }
        let start = usize::from(offset);
        data.copy_from_slice(&self.bytes[start..start + data.len()]);
    }

    /// A guest write of 1, 2 or 4 bytes at `offset`: only writable bits
    /// change. Reports BARs whose decoded address changed.
    pub fn write(&mut self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        if !access_ok(offset, data.len()) {
            self.rejected += 1;
            return ConfigWriteOutcome::default();
        }
        let before = affects_decoding(offset, data.len()).then(|| (self.command(), self.bars()));
        let start = usize::from(offset);
        for (i, byte) in data.iter().enumerate() {
            let mask = self.write_mask[start + i];
            let old = &mut self.bytes[start + i];
            *old = (*old & !mask) | (byte & mask);
        }
        let Some((old_command, old_bars)) = before else {
            return ConfigWriteOutcome::default();
        };
        let new_command = self.command();
        let bar_moves = old_bars
            .iter()
            .zip(self.bars())
            .filter(|(old, new)| old.live_address() != new.live_address())
            .map(|(old, new)| BarMove {
                index: new.index,
                kind: new.kind,
                size: new.size,
                from: old.live_address(),
                to: new.live_address(),
            })
            .collect();
        ConfigWriteOutcome {
            bar_moves,
            command_changed: (old_command != new_command).then_some((old_command, new_command)),
        }
    }

    /// The BARs this space declares, as programmed now.
    pub fn bars(&self) -> Vec<BarInfo> {
        let command = self.command();
        (0..BAR_COUNT)
            .filter_map(|index| match self.bars[usize::from(index)] {
                BarSlot::Bar { kind, size } => Some(BarInfo {
                    index,
                    kind,
                    size,
                    address: self.bar_address(index, kind),
                    decoding: command
                        & if kind.is_memory() {
                            command::MEMORY
                        } else {
                            command::IO
                        }
                        != 0,
                }),
                _ => None,
            })
            .collect()
    }

    fn bar_address(&self, index: u8, kind: BarKind) -> u64 {
        let register = bar_register(index);
        let low = u64::from(self.read_u32(register) & kind.address_mask());
        match kind {
            BarKind::Memory64 { .. } => low | u64::from(self.read_u32(register + 4)) << 32,
            _ => low,
        }
    }

    /// The BAR with register `index`, if one is declared there.
    pub fn bar(&self, index: u8) -> Option<BarInfo> {
        self.bars().into_iter().find(|bar| bar.index == index)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Whether the guest allows the function to master the bus (DMA, MSI).
    pub fn bus_master(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }

    /// Guest accesses refused so far (bad size, alignment or offset).
    pub fn rejected_accesses(&self) -> u64 {
        self.rejected
    }

    /// The byte at `offset` (0xff outside the space).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0xff)
    }

    /// The little-endian word at `offset` (all ones outside the space).
    pub fn read_u16(&self, offset: u16) -> u16 {
        u16::from_le_bytes([self.read_u8(offset), self.read_u8(offset.wrapping_add(1))])
    }

    /// The little-endian dword at `offset` (all ones outside the space).
    pub fn read_u32(&self, offset: u16) -> u32 {
        let low = u32::from(self.read_u16(offset));
        low | u32::from(self.read_u16(offset.wrapping_add(2))) << 16
    }

    /// Device-side store of a byte, ignoring the write mask (ignored
    /// outside the space).
    pub fn set_u8(&mut self, offset: u16, value: u8) {
        if let Some(byte) = self.bytes.get_mut(usize::from(offset)) {
            *byte = value;
        }
    }

    /// Device-side store of a little-endian word, ignoring the mask.
    pub fn set_u16(&mut self, offset: u16, value: u16) {
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset.wrapping_add(i as u16), byte);
        }
    }

    /// Device-side store of a little-endian dword, ignoring the mask.
    pub fn set_u32(&mut self, offset: u16, value: u32) {
        for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset.wrapping_add(i as u16), byte);
        }
    }
}

/// Whether a configuration write of `len` bytes at `offset` touches the
/// command register or a BAR: what can change where BARs decode.
pub fn affects_decoding(offset: u16, len: usize) -> bool {
    let end = usize::from(offset) + len;
    let touches = |lo: u16, hi: u16| usize::from(offset) < usize::from(hi) && end > usize::from(lo);
    touches(COMMAND, COMMAND + 2) || touches(BAR0, BAR_END)
}

/// Offset of BAR register `index`.
fn bar_register(index: u8) -> u16 {
    BAR0 + 4 * u16::from(index)
}

#[cfg(test)]
#[path = "config_space_tests.rs"]
mod tests;
