//! The device's configuration space as the guest sees it: most registers
//! pass through to the real device (VFIO's config region), but the BARs
//! hold the addresses sie assigns (with the usual all-ones sizing), the
//! expansion ROM and any I/O-port BAR are hidden (sie passes through no
//! port I/O: such a BAR reads 0 and sizes to 0, so the guest never
//! programs ports that would reach nothing, and the command register's
//! I/O enable reads 0 and never reaches the device), and the MSI and MSI-X capabilities are
//! emulated: the guest's message addresses and enable bits stay in sie,
//! which turns them into VFIO interrupt settings and KVM MSI routes.
//!
//! ```
//! use sie_vfio::config::{ConfigRegion, VirtualConfig};
//! struct Zeros;
//! impl ConfigRegion for Zeros {
//!     fn read(&self, _offset: u64, data: &mut [u8]) { data.fill(0) }
//!     fn write(&self, _offset: u64, _data: &[u8]) {}
//! }
//! let config = VirtualConfig::new(&Zeros, [0; 6]);
//! assert_eq!(config.read(&Zeros, 0x10), 0); // no BAR 0
//! ```

/// Raw access to the real device's configuration space.
pub trait ConfigRegion {
    /// Reads `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

const COMMAND: usize = 0x04;
const STATUS_CAP_LIST: u32 = 1 << 20;
const BAR0: usize = 0x10;
const ROM: usize = 0x30;
const CAP_PTR: usize = 0x34;
const CAP_MSI: u8 = 0x05;
const CAP_MSIX: u8 = 0x11;
const CONFIG_SIZE: usize = 256;
/// The command register's memory enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// The command register's I/O-space enable: virtualized as always off,
/// since no I/O BAR reaches the guest (a device decoding ports would
/// answer at the host's port addresses, not the guest's).
const COMMAND_IO: u8 = 1 << 0;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// Memory below 4 GiB.
    Mem32,
    /// Memory anywhere (takes this BAR and the next).
    Mem64,
}

/// One BAR of the device, as VFIO and the real BAR describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR number (0..=5).
    pub index: usize,
    /// Bytes (a power of two).
    pub size: u64,
    /// What it decodes.
    pub kind: BarKind,
    /// The prefetchable bit.
    pub prefetchable: bool,
}

impl BarInfo {
    fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => 1,
            BarKind::Mem32 => u32::from(self.prefetchable) << 3,
            BarKind::Mem64 => 0b100 | u32::from(self.prefetchable) << 3,
        }
    }
}

/// The emulated MSI capability's registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiState {
    /// Message control (enable bit 0, multiple-message enable bits 6:4).
    pub control: u16,
    /// Message address (64-bit when the capability says so).
    pub address: u64,
    /// Message data.
    pub data: u16,
}

impl MsiState {
    /// Whether the guest enabled MSI.
    pub fn enabled(&self) -> bool {
        self.control & 1 != 0
    }
    /// How many vectors the guest enabled (1, 2, 4 ... 32).
    pub fn vectors(&self) -> u32 {
        1 << ((self.control >> 4) & 0x7).min(5)
    }
}

#[derive(Clone, Copy, Debug)]
struct MsiCap {
    offset: usize,
    is_64bit: bool,
    /// The capability's read-only bits (64-bit, per-vector masking, multiple message capable).
    capable: u16,
    state: MsiState,
}

/// The MSI-X capability as the real device has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    /// Capability offset in config space.
    pub offset: usize,
    /// Table entries.
    pub table_size: u16,
    /// BAR holding the table, and the table's offset in it.
    pub table_bar: usize,
    /// Table offset in its BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// PBA offset in its BAR.
    pub pba_offset: u64,
}

/// A change the guest made that the device owner must act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// A memory BAR moved (or was placed); `from` is the old guest address
    /// (0 when it had none).
    BarMoved {
        /// BAR number.
        index: usize,
        /// Old guest address.
        from: u64,
        /// New guest address.
        to: u64,
    },
    /// The MSI capability changed (enable, address or data).
    Msi(MsiState),
    /// MSI-X's enable or function-mask bit changed.
    Msix {
        /// MSI-X enable.
        enabled: bool,
        /// Function mask.
        masked: bool,
    },
}

/// The guest's view of the device's configuration space.
#[derive(Debug)]
pub struct VirtualConfig {
    bars: [Option<BarInfo>; 6],
    /// I/O-port BARs the device has, hidden from the guest.
    hidden_io: Vec<usize>,
    /// The BAR registers as the guest wrote them (low dword per index).
    bar_regs: [u32; 6],
    msi: Option<MsiCap>,
    msix: Option<MsixInfo>,
    msix_control: u16,
}

fn read_u32(region: &dyn ConfigRegion, offset: usize) -> u32 {
    let mut data = [0u8; 4];
    region.read(offset as u64, &mut data);
    u32::from_le_bytes(data)
}

impl VirtualConfig {
    /// Reads the real BARs' kinds (sizes come from VFIO's region sizes,
    /// per BAR) and finds the MSI and MSI-X capabilities.
    pub fn new(region: &dyn ConfigRegion, region_sizes: [u64; 6]) -> VirtualConfig {
        let mut bars = [None; 6];
        let mut hidden_io = Vec::new();
        let mut index = 0;
        while index < 6 {
            let raw = read_u32(region, BAR0 + 4 * index);
            let size = region_sizes[index];
            let kind = if raw & 1 == 1 {
                BarKind::Io
            } else if raw & 0b110 == 0b100 && index < 5 {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            if kind == BarKind::Io {
                if size != 0 {
                    hidden_io.push(index);
                }
            } else if size != 0 && size.is_power_of_two() {
                bars[index] = Some(BarInfo {
                    index,
                    size,
                    kind,
                    prefetchable: raw & 0b1000 != 0,
                });
            }
            index += if kind == BarKind::Mem64 { 2 } else { 1 };
        }
        let mut config = VirtualConfig {
            bars,
            hidden_io,
            bar_regs: [0; 6],
            msi: None,
            msix: None,
            msix_control: 0,
        };
        for bar in bars.iter().flatten() {
            config.bar_regs[bar.index] = bar.flags();
        }
        config.find_capabilities(region);
        config
    }

    fn find_capabilities(&mut self, region: &dyn ConfigRegion) {
        if read_u32(region, COMMAND) & STATUS_CAP_LIST == 0 {
            return;
        }
        let mut next = (read_u32(region, CAP_PTR) & 0xfc) as usize;
        // A loop in a broken list ends after at most 48 capabilities.
        for _ in 0..48 {
            if next < 0x40 || next + 4 > CONFIG_SIZE {
                break;
            }
            let header = read_u32(region, next);
            let control = (header >> 16) as u16;
            match header as u8 {
                CAP_MSI => {
                    self.msi = Some(MsiCap {
                        offset: next,
                        is_64bit: control & (1 << 7) != 0,
                        capable: control & !0x71,
                        state: MsiState::default(),
                    })
                }
                CAP_MSIX if next + 12 <= CONFIG_SIZE => {
                    let table = read_u32(region, next + 4);
                    let pba = read_u32(region, next + 8);
                    self.msix = Some(MsixInfo {
                        offset: next,
                        table_size: (control & 0x7ff) + 1,
                        table_bar: (table & 7) as usize,
                        table_offset: u64::from(table & !7),
                        pba_bar: (pba & 7) as usize,
                        pba_offset: u64::from(pba & !7),
                    })
                }
                _ => {}
            }
            next = ((header >> 8) & 0xfc) as usize;
        }
    }

    /// The device's memory BARs (the ones the guest sees).
    pub fn bars(&self) -> impl Iterator<Item = &BarInfo> {
        self.bars.iter().flatten()
    }

    /// The device's I/O-port BARs, hidden from the guest.
    pub fn hidden_io_bars(&self) -> &[usize] {
        &self.hidden_io
    }

    /// The MSI-X capability, if the device has one.
    pub fn msix(&self) -> Option<MsixInfo> {
        self.msix
    }

    /// Whether the device has an MSI capability.
    pub fn has_msi(&self) -> bool {
        self.msi.is_some()
    }

    /// The most MSI vectors the device can use (its Multiple Message
    /// Capable field), 0 without MSI.
    pub fn msi_capable_vectors(&self) -> u16 {
        self.msi
            .map_or(0, |msi| 1 << ((msi.capable >> 1) & 0x7).min(5))
    }

    /// The guest address of BAR `index` (0 until the guest or sie places it).
    pub fn bar_address(&self, index: usize) -> u64 {
        let Some(bar) = self.bars.get(index).copied().flatten() else {
            return 0;
        };
        let mask = if bar.kind == BarKind::Io { !3 } else { !0xf };
        let low = u64::from(self.bar_regs[index] & mask);
        let high = match bar.kind {
            BarKind::Mem64 => u64::from(self.bar_regs[index + 1]) << 32,
            _ => 0,
        };
        (high | low) & !(bar.size - 1)
    }

    /// Places BAR `index` at `address` (sie's own allocation at boot).
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        if let Some(bar) = self.bars.get(index).copied().flatten() {
            self.bar_regs[index] = (address as u32 & !0xf) | bar.flags();
            if bar.kind == BarKind::Mem64 {
                self.bar_regs[index + 1] = (address >> 32) as u32;
            }
        }
    }

    /// The BAR whose register (low or high half) is at `offset`.
    fn bar_at(&self, offset: usize) -> Option<(usize, bool)> {
        if !(BAR0..BAR0 + 24).contains(&offset) {
            return None;
        }
        let slot = (offset - BAR0) / 4;
        if self.bars[slot].is_some() {
            return Some((slot, false));
        }
        match slot.checked_sub(1).and_then(|low| self.bars[low]) {
            Some(bar) if bar.kind == BarKind::Mem64 => Some((slot - 1, true)),
            _ => None,
        }
    }

    /// The emulated value of the dword at `offset`, or `None` where the
    /// real device answers.
    fn virtual_dword(&self, offset: usize) -> Option<u32> {
        if (BAR0..BAR0 + 24).contains(&offset) {
            return Some(match self.bar_at(offset) {
                Some((index, false)) => self.bar_regs[index],
                Some((index, true)) => self.bar_regs[index + 1],
                None => 0,
            });
        }
        if offset == ROM {
            return Some(0);
        }
        if let Some(msi) = &self.msi {
            let state = &msi.state;
            let data_at = if msi.is_64bit { 12 } else { 8 };
            match offset.checked_sub(msi.offset) {
                Some(0) => return None, // header: merged in `read`
                Some(4) => return Some(state.address as u32),
                Some(8) if msi.is_64bit => return Some((state.address >> 32) as u32),
                Some(o) if o == data_at => return Some(u32::from(state.data)),
                _ => {}
            }
        }
        None
    }

    /// The guest's read of the dword at `offset` (4-aligned; other sizes
    /// are cut from it by the caller).
    pub fn read(&self, region: &dyn ConfigRegion, offset: usize) -> u32 {
        let offset = offset & !3;
        if offset >= CONFIG_SIZE {
            // Extended config space of a conventional device: nothing.
            return 0;
        }
        if let Some(value) = self.virtual_dword(offset) {
            return value;
        }
        let real = read_u32(region, offset);
        if offset == COMMAND {
            return real & !u32::from(COMMAND_IO);
        }
        if let Some(msi) = &self.msi
            && offset == msi.offset
        {
            let control = msi.capable | (msi.state.control & 0x71);
            return (real & 0xffff) | u32::from(control) << 16;
        }
        if let Some(msix) = &self.msix
            && offset == msix.offset
        {
            return (real & 0x07ff_ffff) | u32::from(self.msix_control & 0xc000) << 16;
        }
        real
    }

    /// The guest's write of `data` (1, 2 or 4 bytes) at `offset`; returns
    /// what the owner must act on.
    pub fn write(
        &mut self,
        region: &dyn ConfigRegion,
        offset: usize,
        data: &[u8],
    ) -> Option<ConfigChange> {
        let len = data.len();
        if !matches!(len, 1 | 2 | 4) || !offset.is_multiple_of(len) || offset + len > CONFIG_SIZE {
            return None;
        }
        let dword = offset & !3;
        let shift = (offset - dword) * 8;
        let mask = if len == 4 {
            u32::MAX
        } else {
            ((1u32 << (len * 8)) - 1) << shift
        };
        let mut raw = [0u8; 4];
        raw[..len].copy_from_slice(data);
        let value = u32::from_le_bytes(raw) << shift;
        let merged = |old: u32| (old & !mask) | (value & mask);

        if (BAR0..BAR0 + 24).contains(&dword) {
            return self.write_bar(dword, merged(self.virtual_dword(dword).unwrap_or(0)));
        }
        if dword == ROM {
            return None;
        }
        if let Some(change) = self.write_msi(region, dword, mask, value) {
            return change;
        }
        if let Some(msix) = self.msix
            && dword == msix.offset
        {
            if mask & 0xffff_0000 == 0 {
                return None; // the header is read-only
            }
            let before = self.msix_control;
            self.msix_control = (merged(u32::from(before) << 16) >> 16) as u16 & 0xc000;
            return (before != self.msix_control).then_some(ConfigChange::Msix {
                enabled: self.msix_control & 0x8000 != 0,
                masked: self.msix_control & 0x4000 != 0,
            });
        }
        // Everything else (command, status, latency, other capabilities)
        // is the real device's, written with exactly the bytes the guest
        // wrote so write-one-to-clear status bits next to them stay alone;
        // but the command register's I/O enable stays off.
        if offset == COMMAND && data[0] & COMMAND_IO != 0 {
            let mut data = data.to_vec();
            data[0] &= !COMMAND_IO;
            region.write(offset as u64, &data);
            return None;
        }
        region.write(offset as u64, data);
        None
    }

    fn write_bar(&mut self, dword: usize, value: u32) -> Option<ConfigChange> {
        let (index, high) = self.bar_at(dword)?;
        let bar = self.bars[index]?;
        let from = self.bar_address(index);
        let size_mask = !(bar.size - 1);
        if high {
            self.bar_regs[index + 1] = value & (size_mask >> 32) as u32;
        } else {
            let low_mask = if bar.kind == BarKind::Io {
                size_mask as u32 & !3
            } else {
                size_mask as u32 & !0xf
            };
            self.bar_regs[index] = (value & low_mask) | bar.flags();
        }
        let to = self.bar_address(index);
        // All-ones (sizing) is not a placement: no move until a real address.
        let sizing = value == u32::MAX || to == size_mask || to == size_mask & 0xffff_ffff;
        (bar.kind != BarKind::Io && from != to && !sizing).then_some(ConfigChange::BarMoved {
            index,
            from,
            to,
        })
    }

    fn write_msi(
        &mut self,
        _region: &dyn ConfigRegion,
        dword: usize,
        mask: u32,
        value: u32,
    ) -> Option<Option<ConfigChange>> {
        let msi = self.msi.as_mut()?;
        let data_at = if msi.is_64bit { 12 } else { 8 };
        let end = msi.offset + data_at + 4;
        if !(msi.offset..end).contains(&dword) {
            return None;
        }
        let before = msi.state;
        let merge = |old: u32| (old & !mask) | (value & mask);
        let state = &mut msi.state;
        match dword - msi.offset {
            0 => {
                let control = (merge(u32::from(state.control) << 16) >> 16) as u16;
                state.control = control & 0x71;
            }
            4 => {
                let low = merge(state.address as u32) & !3;
                state.address = (state.address & !0xffff_ffff) | u64::from(low);
            }
            8 if msi.is_64bit => {
                let high = merge((state.address >> 32) as u32);
                state.address = (state.address & 0xffff_ffff) | u64::from(high) << 32;
            }
            o if o == data_at => state.data = merge(u32::from(state.data)) as u16,
            _ => {}
        }
        let after = *state;
        Some(
            (after != before && (after.enabled() || before.enabled()))
                .then_some(ConfigChange::Msi(after)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// An edu-like device: 1234:11e8, BAR0 32-bit memory 1 MiB, BAR2 a
    /// 64-bit prefetchable BAR, an MSI capability (64-bit) at 0x40 and an
    /// MSI-X capability at 0x50 (table in BAR2 at 0, PBA at 0x800).
    struct FakeRegion {
        bytes: RefCell<Vec<u8>>,
        writes: RefCell<Vec<(u64, Vec<u8>)>>,
    }

    impl FakeRegion {
        fn edu() -> FakeRegion {
            let mut b = vec![0u8; 256];
            b[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
            b[4..8].copy_from_slice(&(STATUS_CAP_LIST | 0x0006).to_le_bytes());
            b[0x10..0x14].copy_from_slice(&0xfea0_0000u32.to_le_bytes());
            b[0x18..0x1c].copy_from_slice(&0xc000_000cu32.to_le_bytes());
            b[0x30..0x34].copy_from_slice(&0xfeb0_0001u32.to_le_bytes());
            b[0x34] = 0x40;
            // MSI: id 5, next 0x50, control 64-bit (bit 7).
            b[0x40..0x44].copy_from_slice(&0x0080_5005u32.to_le_bytes());
            // MSI-X: id 0x11, next 0, 4 entries; table BAR2+0, PBA BAR2+0x800.
            b[0x50..0x54].copy_from_slice(&0x0003_0011u32.to_le_bytes());
            b[0x54..0x58].copy_from_slice(&2u32.to_le_bytes());
            b[0x58..0x5c].copy_from_slice(&0x802u32.to_le_bytes());
            FakeRegion {
                bytes: RefCell::new(b),
                writes: RefCell::new(Vec::new()),
            }
        }
    }

    impl ConfigRegion for FakeRegion {
        fn read(&self, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.bytes.borrow()[o..o + data.len()]);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.writes.borrow_mut().push((offset, data.to_vec()));
        }
    }

    fn edu() -> (FakeRegion, VirtualConfig) {
        let region = FakeRegion::edu();
        let config = VirtualConfig::new(&region, [1 << 20, 0, 1 << 14, 0, 0, 0]);
        (region, config)
    }

    #[test]
    fn bars_come_from_vfio_sizes_and_the_real_bar_kinds() {
        let (_, config) = edu();
        let bars: Vec<_> = config.bars().copied().collect();
        assert_eq!(
            bars,
            vec![
                BarInfo {
                    index: 0,
                    size: 1 << 20,
                    kind: BarKind::Mem32,
                    prefetchable: false
                },
                BarInfo {
                    index: 2,
                    size: 1 << 14,
                    kind: BarKind::Mem64,
                    prefetchable: true
                },
            ]
        );
    }

    #[test]
    fn bars_read_the_vmm_addresses_not_the_hosts() {
        let (region, mut config) = edu();
        assert_eq!(
            config.read(&region, 0x10),
            0,
            "unplaced BAR 0 reads 0, not the host's"
        );
        config.set_bar_address(0, 0xe000_0000);
        config.set_bar_address(2, 0x1_0000_4000);
        assert_eq!(config.read(&region, 0x10), 0xe000_0000);
        assert_eq!(config.read(&region, 0x18), 0x0000_400c);
        assert_eq!(config.read(&region, 0x1c), 1);
        assert_eq!(config.read(&region, 0x14), 0, "absent BAR 1");
        assert_eq!(config.bar_address(2), 0x1_0000_4000);
    }

    #[test]
    fn bar_sizing_returns_the_size_mask_and_moves_are_reported() {
        let (region, mut config) = edu();
        config.set_bar_address(0, 0xe000_0000);
        assert_eq!(config.write(&region, 0x10, &u32::MAX.to_le_bytes()), None);
        assert_eq!(config.read(&region, 0x10), 0xfff0_0000);
        let moved = config.write(&region, 0x10, &0xd010_0000u32.to_le_bytes());
        assert_eq!(
            moved,
            Some(ConfigChange::BarMoved {
                index: 0,
                from: 0xfff0_0000,
                to: 0xd010_0000
            })
        );
        // A silly unaligned address is truncated to the BAR's alignment.
        config.write(&region, 0x10, &0xd012_3456u32.to_le_bytes());
        assert_eq!(config.bar_address(0), 0xd010_0000);
        // 64-bit sizing: high half all-ones.
        config.write(&region, 0x1c, &u32::MAX.to_le_bytes());
        config.write(&region, 0x18, &u32::MAX.to_le_bytes());
        assert_eq!(config.read(&region, 0x18), 0xffff_c00c);
        assert_eq!(config.read(&region, 0x1c), u32::MAX);
        assert!(
            region.writes.borrow().is_empty(),
            "BAR writes never reach the device"
        );
    }

    #[test]
    fn an_io_bar_is_hidden_reads_zero_and_sizes_to_zero() {
        let region = FakeRegion::edu();
        // BAR 1: I/O ports (bit 0 set), 256 bytes by VFIO's region size.
        region.bytes.borrow_mut()[0x14..0x18].copy_from_slice(&0xc001u32.to_le_bytes());
        let mut config = VirtualConfig::new(&region, [1 << 20, 256, 1 << 14, 0, 0, 0]);
        assert_eq!(config.hidden_io_bars(), [1]);
        assert!(config.bars().all(|bar| bar.index != 1), "not a guest BAR");
        assert_eq!(config.read(&region, 0x14), 0);
        // Sizing: all ones written, 0 read back; an address is ignored.
        assert_eq!(config.write(&region, 0x14, &u32::MAX.to_le_bytes()), None);
        assert_eq!(config.read(&region, 0x14), 0);
        assert_eq!(config.write(&region, 0x14, &0xc101u32.to_le_bytes()), None);
        assert_eq!(config.read(&region, 0x14), 0);
        assert_eq!(config.bar_address(1), 0);
        // Nothing reached the real BAR, and the memory BARs are untouched.
        assert!(region.writes.borrow().is_empty());
        assert_eq!(config.bars().count(), 2);
    }

    #[test]
    fn the_rom_is_hidden_and_other_registers_pass_through() {
        let (region, mut config) = edu();
        assert_eq!(config.read(&region, 0x30), 0);
        assert_eq!(config.read(&region, 0x00), 0x11e8_1234);
        config.write(&region, 0x30, &u32::MAX.to_le_bytes());
        config.write(&region, 0x04, &0x0006u16.to_le_bytes());
        assert_eq!(*region.writes.borrow(), vec![(4, vec![6, 0])]);
        assert_eq!(config.read(&region, 0x1000), 0, "no extended config space");
    }

    #[test]
    fn the_command_registers_io_enable_is_never_set_on_the_device() {
        let (region, mut config) = edu();
        // Memory, bus master and I/O asked for: the device gets the first two.
        config.write(&region, 0x04, &0x0007u16.to_le_bytes());
        config.write(&region, 0x04, &[0x05]);
        config.write(&region, 0x04, &0x0010_0003u32.to_le_bytes());
        assert_eq!(
            *region.writes.borrow(),
            vec![(4, vec![6, 0]), (4, vec![4]), (4, vec![2, 0, 0x10, 0])]
        );
        // The high byte alone passes as written.
        config.write(&region, 0x05, &[0x04]);
        assert_eq!(region.writes.borrow().last(), Some(&(5, vec![4])));
    }

    #[test]
    fn msi_is_emulated_and_its_enable_is_reported() {
        let (region, mut config) = edu();
        assert!(config.has_msi());
        assert_eq!(config.msi_capable_vectors(), 1);
        config.write(&region, 0x44, &0xfee0_1000u32.to_le_bytes());
        config.write(&region, 0x48, &0u32.to_le_bytes());
        config.write(&region, 0x4c, &0x4041u16.to_le_bytes());
        assert_eq!(config.read(&region, 0x44), 0xfee0_1000);
        let change = config.write(&region, 0x42, &1u16.to_le_bytes());
        let Some(ConfigChange::Msi(state)) = change else {
            panic!("{change:?}")
        };
        assert!(state.enabled());
        assert_eq!(
            (state.address, state.data, state.vectors()),
            (0xfee0_1000, 0x4041, 1)
        );
        assert_eq!(
            config.read(&region, 0x40) >> 16,
            0x81,
            "64-bit capable and enabled"
        );
        assert!(region.writes.borrow().is_empty(), "MSI writes stay in sie");
    }

    #[test]
    fn msi_changes_are_reported_only_around_an_enabled_capability() {
        let (region, mut config) = edu();
        // Programming a disabled capability is nothing to act on yet.
        assert_eq!(
            config.write(&region, 0x44, &0xfee0_0000u32.to_le_bytes()),
            None
        );
        assert_eq!(config.write(&region, 0x4c, &0xd3u16.to_le_bytes()), None);
        // Enabling through a whole-dword write of header and control keeps
        // the header (read-only) and the 64-bit flag.
        let change = config.write(&region, 0x40, &0x0001_0000u32.to_le_bytes());
        assert!(matches!(change, Some(ConfigChange::Msi(s)) if s.enabled() && s.data == 0xd3));
        assert_eq!(config.read(&region, 0x40), 0x0081_5005);
        // A new vector while enabled: the route must follow.
        let change = config.write(&region, 0x4c, &0xd4u16.to_le_bytes());
        assert!(matches!(change, Some(ConfigChange::Msi(s)) if s.enabled() && s.data == 0xd4));
        // Disabling is reported (sie takes the vectors back from VFIO).
        let change = config.write(&region, 0x42, &0x0080u16.to_le_bytes());
        assert!(matches!(change, Some(ConfigChange::Msi(s)) if !s.enabled()));
        assert_eq!(config.read(&region, 0x40) >> 16, 0x80);
        assert_eq!(config.read(&region, 0x4c), 0xd4, "the data stays");
        assert!(region.writes.borrow().is_empty());
    }

    #[test]
    fn msix_enable_and_mask_are_emulated() {
        let (region, mut config) = edu();
        let msix = config.msix().unwrap();
        assert_eq!(
            (
                msix.table_size,
                msix.table_bar,
                msix.pba_bar,
                msix.pba_offset
            ),
            (4, 2, 2, 0x800)
        );
        let change = config.write(&region, 0x52, &0xc000u16.to_le_bytes());
        assert_eq!(
            change,
            Some(ConfigChange::Msix {
                enabled: true,
                masked: true
            })
        );
        assert_eq!(config.read(&region, 0x50) >> 16, 0xc003);
        assert_eq!(config.write(&region, 0x52, &0xc000u16.to_le_bytes()), None);
        assert!(region.writes.borrow().is_empty());
    }

    #[test]
    fn hostile_accesses_are_ignored() {
        let (region, mut config) = edu();
        assert_eq!(config.write(&region, 0x11, &[1, 2]), None, "misaligned");
        assert_eq!(
            config.write(&region, 0xff, &[1, 2, 3, 4]),
            None,
            "past the end"
        );
        assert_eq!(config.write(&region, 0x10, &[1, 2, 3]), None, "3 bytes");
        assert!(region.writes.borrow().is_empty());
    }

    #[test]
    fn a_looping_capability_list_ends() {
        let region = FakeRegion::edu();
        region.bytes.borrow_mut()[0x41] = 0x40; // MSI points at itself
        let config = VirtualConfig::new(&region, [0; 6]);
        assert!(config.has_msi());
        assert!(config.msix().is_none());
    }
}
