//! [`VfioPciDevice`]: a passed-through device on sie's PCI bus. Guest
//! configuration accesses go through [`VirtualConfig`]; the BARs are host
//! mmaps the VMM maps into the guest (through [`BarMapper`]) wherever the
//! guest puts them, except the MSI-X table and PBA pages, whose accesses
//! trap here and reach sie-pci's MSI-X emulation. MSI and MSI-X vectors are
//! the VMM's irqfds ([`MsiInterrupts::notifier`]), which VFIO signals
//! directly: a device interrupt reaches the guest without passing through
//! sie. A vector the guest masked has its irqfd off KVM (the VMM's
//! outlet detaches it with the route), so its interrupt waits in the
//! eventfd: the emulated PBA shows it pending and the unmask delivers it.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sie_pci::{
    BarInfo, BarKind, BarMapper, BarMove, ConfigWriteOutcome, MsiInterrupts, MsiMessage, MsixTable,
    PciDevice, command,
};
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::config::{self, ConfigChange, ConfigRegion, MsiState, MsixInfo, VirtualConfig};
use crate::host::{BarMapping, HostDevice, HostError, IrqKind};

/// Errors building a [`VfioPciDevice`].
#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    /// Opening or mapping the device failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The VMM could not give the device its vectors.
    #[error("vfio {path}: interrupt vectors: {source}")]
    Vectors {
        /// The device.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The device's MSI-X table does not fit the vectors.
    #[error("vfio {path}: MSI-X: {source}")]
    Msix {
        /// The device.
        path: String,
        /// Why.
        source: sie_pci::MsixError,
    },
}

struct State {
    config: VirtualConfig,
    msix: Option<(MsixInfo, MsixTable)>,
    /// Vectors handed to VFIO for MSI (0: MSI off).
    msi_vectors: u32,
    /// Whether MSI-X is handed to VFIO.
    msix_on: bool,
    /// The interrupt line register as the guest sees it (the GSI).
    interrupt_line: u8,
}

/// A host PCI device passed through to the guest.
pub struct VfioPciDevice {
    name: String,
    host: HostDevice,
    /// The BARs' mmapped pieces (all but the MSI-X pages).
    mappings: Vec<BarMapping>,
    interrupts: Arc<dyn MsiInterrupts>,
    /// INTx, when the device has it: VFIO signals `trigger` when the line
    /// rises (and masks it); the VMM's resampling irqfd signals `resample`
    /// when the guest acknowledges it, which unmasks it.
    intx: Option<Intx>,
    state: Mutex<State>,
}

/// A device's INTx line as eventfds.
#[derive(Debug)]
pub struct Intx {
    /// The pin (1 = INTA .. 4 = INTD).
    pub pin: u8,
    /// Signalled by VFIO when the line rises.
    pub trigger: EventFd,
    /// Signalled by KVM when the guest acknowledged the line.
    pub resample: EventFd,
}

impl std::fmt::Debug for VfioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioPciDevice")
            .field("name", &self.name)
            .finish()
    }
}

/// The vectors a device needs from the VMM: its MSI-X table's size or the
/// MSI vectors it can use, whichever is more, and at least 1.
pub fn vectors_needed(config: &VirtualConfig) -> u16 {
    let msix = config.msix().map_or(0, |m| m.table_size);
    msix.max(config.msi_capable_vectors()).max(1)
}

impl VfioPciDevice {
    /// Opens the device at `path` (checked, reset, guest RAM mapped for
    /// its DMA), mmaps its BARs, and gets its vectors from `vectors` (the
    /// VMM's irqfds and MSI routes, for the count asked).
    pub fn open<M: GuestMemoryBackend>(
        path: &std::path::Path,
        memory: &M,
        vectors: impl FnOnce(u16) -> io::Result<Arc<dyn MsiInterrupts>>,
    ) -> Result<VfioPciDevice, VfioPciError> {
        let host = HostDevice::open(path, memory)?;
        let config = VirtualConfig::new(&host, host.bar_sizes());
        let msix_info = config.msix();
        let mut mappings = Vec::new();
        for &index in config.hidden_io_bars() {
            tracing::warn!(
                "vfio {}: BAR {index} decodes I/O ports, which sie does not pass through: hidden from the guest (it reads as 0)",
                path.display()
            );
        }
        for bar in config.bars() {
            let hole = msix_hole(msix_info, bar.index);
            mappings.extend(host.map_bar(bar.index, hole)?);
        }
        let display = path.display().to_string();
        let interrupts =
            vectors(vectors_needed(&config)).map_err(|source| VfioPciError::Vectors {
                path: display.clone(),
                source,
            })?;
        let msix = match msix_info {
            Some(info) => Some((
                info,
                MsixTable::new(info.table_size, interrupts.clone()).map_err(|source| {
                    VfioPciError::Msix {
                        path: display.clone(),
                        source,
                    }
                })?,
            )),
            None => None,
        };
        let intx = open_intx(&host, &config)?;
        let name = format!(
            "vfio {}",
            path.file_name()
                .map_or(display.clone(), |n| n.to_string_lossy().into_owned())
        );
        Ok(VfioPciDevice {
            name,
            host,
            mappings,
            interrupts,
            intx,
            state: Mutex::new(State {
                config,
                msix,
                msi_vectors: 0,
                msix_on: false,
                interrupt_line: 0xff,
            }),
        })
    }

    /// The device's INTx eventfds, for the VMM to wire to the pin's GSI.
    pub fn intx(&self) -> Option<&Intx> {
        self.intx.as_ref()
    }

    /// Sets the interrupt line register to the GSI the pin raises.
    pub fn set_interrupt_line(&self, gsi: u8) {
        self.state().interrupt_line = gsi;
    }

    /// Hands INTx back to VFIO (after MSI or MSI-X are turned off).
    fn restore_intx(&self) {
        if let Some(intx) = &self.intx
            && let Err(error) = enable_intx(&self.host, intx)
        {
            tracing::warn!("{}: {error}", self.name);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notifiers(&self, count: u32) -> Vec<&EventFd> {
        (0..count)
            .filter_map(|v| u16::try_from(v).ok())
            .filter_map(|v| self.interrupts.notifier(v))
            .collect()
    }

    /// The guest changed the MSI capability: route the enabled vectors
    /// and hand their irqfds to VFIO, or take them back.
    fn apply_msi(&self, state: &mut State, msi: MsiState) {
        let wanted = if msi.enabled() { msi.vectors() } else { 0 };
        for vector in 0..32u16 {
            let message = (u32::from(vector) < wanted).then_some(MsiMessage {
                address: msi.address,
                // Multiple-message MSI puts the vector number in the low bits.
                data: u32::from(msi.data) | u32::from(vector),
            });
            if self.interrupts.notifier(vector).is_some() {
                let _ = self.interrupts.configure(vector, message);
            }
        }
        if wanted == state.msi_vectors {
            return;
        }
        self.host.disable_irq(IrqKind::Msi);
        state.msi_vectors = 0;
        let count = wanted.min(self.host.irq_count(IrqKind::Msi));
        if count > 0 {
            // VFIO takes one kind of interrupt at a time.
            self.host.disable_irq(IrqKind::Intx);
            match self.host.enable_irq(IrqKind::Msi, &self.notifiers(count)) {
                Ok(()) => state.msi_vectors = count,
                Err(error) => tracing::warn!("{}: {error}", self.name),
            }
        }
        if state.msi_vectors == 0 && !state.msix_on {
            self.restore_intx();
        }
    }

    /// The guest changed MSI-X's enable or mask bit.
    fn apply_msix(&self, state: &mut State, enabled: bool, masked: bool) {
        let Some((info, table)) = state.msix.as_mut() else {
            return;
        };
        let control = (u16::from(enabled) << 15) | (u16::from(masked) << 14);
        table.set_control(control);
        if enabled == state.msix_on {
            return;
        }
        self.host.disable_irq(IrqKind::Msix);
        state.msix_on = false;
        if enabled {
            let count = u32::from(info.table_size).min(self.host.irq_count(IrqKind::Msix));
            self.host.disable_irq(IrqKind::Intx);
            match self.host.enable_irq(IrqKind::Msix, &self.notifiers(count)) {
                Ok(()) => state.msix_on = true,
                Err(error) => tracing::warn!("{}: {error}", self.name),
            }
        }
        if state.msi_vectors == 0 && !state.msix_on {
            self.restore_intx();
        }
    }

    fn command(&self) -> u16 {
        let mut data = [0u8; 2];
        ConfigRegion::read(&self.host, 4, &mut data);
        u16::from_le_bytes(data)
    }
}

const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

/// The device's INTx, handed to VFIO, if its config space names a pin and
/// VFIO offers the line.
fn open_intx(host: &HostDevice, config: &VirtualConfig) -> Result<Option<Intx>, VfioPciError> {
    let pin = (config.read(host, INTERRUPT_PIN & !3) >> 8) as u8;
    if !(1..=4).contains(&pin) || host.irq_count(IrqKind::Intx) != 1 {
        return Ok(None);
    }
    let eventfd = || {
        EventFd::new(EFD_NONBLOCK).map_err(|source| VfioPciError::Vectors {
            path: host.path().display().to_string(),
            source,
        })
    };
    let intx = Intx {
        pin,
        trigger: eventfd()?,
        resample: eventfd()?,
    };
    enable_intx(host, &intx)?;
    Ok(Some(intx))
}

fn enable_intx(host: &HostDevice, intx: &Intx) -> Result<(), HostError> {
    host.enable_irq(IrqKind::Intx, &[&intx.trigger])?;
    host.set_intx_resample(&intx.resample)
}

/// The page-aligned part of BAR `bar` that sie keeps trapped: the MSI-X
/// table and PBA, if they live there.
fn msix_hole(msix: Option<MsixInfo>, bar: usize) -> Option<(u64, u64)> {
    let info = msix?;
    let table = (
        info.table_offset,
        u64::from(info.table_size) * sie_pci::MSIX_ENTRY_SIZE,
    );
    let pba = (info.pba_offset, u64::from(info.table_size).div_ceil(64) * 8);
    let parts: Vec<(u64, u64)> = [(info.table_bar, table), (info.pba_bar, pba)]
        .into_iter()
        .filter(|&(b, _)| b == bar)
        .map(|(_, part)| part)
        .collect();
    let start = parts.iter().map(|p| p.0).min()?;
    let end = parts.iter().map(|p| p.0 + p.1).max()?;
    Some((start, end - start))
}

fn kind_of(bar: &config::BarInfo) -> BarKind {
    match bar.kind {
        config::BarKind::Io => BarKind::Io,
        config::BarKind::Mem32 => BarKind::Memory32,
        config::BarKind::Mem64 => BarKind::Memory64 {
            prefetchable: bar.prefetchable,
        },
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        let state = self.state();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::from(offset) + i;
            *byte = if at == INTERRUPT_LINE {
                state.interrupt_line
            } else {
                let dword = state.config.read(&self.host, at & !3);
                (dword >> (8 * (at & 3))) as u8
            };
        }
    }

    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        let mut state = self.state();
        if usize::from(offset) == INTERRUPT_LINE && data.len() == 1 {
            state.interrupt_line = data[0];
            return ConfigWriteOutcome::default();
        }
        let change = state.config.write(&self.host, usize::from(offset), data);
        match change {
            Some(ConfigChange::Msi(msi)) => self.apply_msi(&mut state, msi),
            Some(ConfigChange::Msix { enabled, masked }) => {
                self.apply_msix(&mut state, enabled, masked)
            }
            // The root finds BAR moves itself (through `bars`).
            Some(ConfigChange::BarMoved { .. }) | None => {}
        }
        ConfigWriteOutcome::default()
    }

    fn read_bar(&self, bar: u8, offset: u64, data: &mut [u8]) {
        let mut state = self.state();
        if let Some((info, table)) = state.msix.as_mut() {
            let bar = usize::from(bar);
            let table_len = u64::from(info.table_size) * sie_pci::MSIX_ENTRY_SIZE;
            if bar == info.table_bar
                && let Some(at) = offset
                    .checked_sub(info.table_offset)
                    .filter(|&at| at < table_len)
            {
                return table.read_table(at, data);
            }
            let pba_len = u64::from(info.table_size).div_ceil(64) * 8;
            if bar == info.pba_bar
                && let Some(at) = offset
                    .checked_sub(info.pba_offset)
                    .filter(|&at| at < pba_len)
            {
                return table.read_pba(at, data);
            }
        }
        drop(state);
        self.host.read_bar(usize::from(bar), offset, data);
    }

    fn write_bar(&self, bar: u8, offset: u64, data: &[u8]) {
        let mut state = self.state();
        if let Some((info, table)) = state.msix.as_mut() {
            let bar = usize::from(bar);
            let table_len = u64::from(info.table_size) * sie_pci::MSIX_ENTRY_SIZE;
            if bar == info.table_bar
                && let Some(at) = offset
                    .checked_sub(info.table_offset)
                    .filter(|&at| at < table_len)
            {
                return table.write_table(at, data);
            }
            let pba_len = u64::from(info.table_size).div_ceil(64) * 8;
            if bar == info.pba_bar
                && offset
                    .checked_sub(info.pba_offset)
                    .is_some_and(|at| at < pba_len)
            {
                return; // the PBA is read-only
            }
        }
        drop(state);
        self.host.write_bar(usize::from(bar), offset, data);
    }

    fn bars(&self) -> Vec<BarInfo> {
        let command = self.command();
        let state = self.state();
        state
            .config
            .bars()
            .map(|bar| BarInfo {
                index: bar.index as u8,
                kind: kind_of(bar),
                size: bar.size,
                address: state.config.bar_address(bar.index),
                decoding: command & command::MEMORY != 0,
            })
            .collect()
    }

    fn bar_moved(&self, moved: &BarMove, mapper: &dyn BarMapper) -> io::Result<()> {
        let mut result = Ok(());
        for piece in self
            .mappings
            .iter()
            .filter(|m| m.bar == usize::from(moved.index))
        {
            let len = piece.region.size() as u64;
            if let Some(from) = moved.from
                && let Err(e) = mapper.unmap_memory(from + piece.offset, len)
            {
                result = Err(e);
            }
            if let Some(to) = moved.to {
                let host = piece.region.as_ptr();
                // SAFETY: `piece.region` is an mmap of the device's BAR that
                // this device keeps (in `self.mappings`) until it is
                // dropped, and the root calls this hook with `to: None`
                // (unmapping it) when the device is removed.
                let mapped = unsafe { mapper.map_memory(to + piece.offset, len, host) };
                if let Err(e) = mapped {
                    result = Err(e);
                }
            }
        }
        result
    }

    fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msix(table_bar: usize, pba_bar: usize, pba_offset: u64) -> Option<MsixInfo> {
        Some(MsixInfo {
            offset: 0x50,
            table_size: 64,
            table_bar,
            table_offset: 0x2000,
            pba_bar,
            pba_offset,
        })
    }

    #[test]
    fn the_msix_hole_spans_table_and_pba_in_their_bar() {
        // 64 entries: a 1 KiB table at 0x2000, the PBA (8 bytes) at 0x3000.
        assert_eq!(msix_hole(msix(2, 2, 0x3000), 2), Some((0x2000, 0x1008)));
        // PBA in another BAR: each BAR keeps only its own part trapped.
        assert_eq!(msix_hole(msix(2, 4, 0), 2), Some((0x2000, 0x400)));
        assert_eq!(msix_hole(msix(2, 4, 0), 4), Some((0, 8)));
        assert_eq!(msix_hole(msix(2, 4, 0), 0), None);
        assert_eq!(msix_hole(None, 2), None);
    }

    #[test]
    fn bar_kinds_map_to_sie_pci() {
        let bar = |kind, prefetchable| config::BarInfo {
            index: 0,
            size: 4096,
            kind,
            prefetchable,
        };
        assert_eq!(
            kind_of(&bar(config::BarKind::Mem32, false)),
            BarKind::Memory32
        );
        assert_eq!(
            kind_of(&bar(config::BarKind::Mem64, true)),
            BarKind::Memory64 { prefetchable: true }
        );
        assert_eq!(kind_of(&bar(config::BarKind::Io, false)), BarKind::Io);
    }
}
