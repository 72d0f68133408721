//! The host side of a passed-through device: its VFIO container, group and
//! device file, guest RAM mapped for the device's DMA (IOVA = guest
//! physical address), the BARs mmapped for KVM memory slots, and the
//! interrupt eventfds handed to VFIO. Reset at open and again when dropped,
//! after DMA is unmapped.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioError, VfioRegionInfoCap};
use vm_memory::{FileOffset, GuestMemoryBackend, GuestMemoryRegion, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::ConfigRegion;
use crate::sysfs::{PreflightError, check_device};

/// Errors opening or driving a passed-through device.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The device cannot be passed (the message says how to fix it).
    #[error(transparent)]
    Preflight(#[from] PreflightError),
    /// A VFIO call failed.
    #[error("vfio {path}: {op}")]
    Vfio {
        /// The device.
        path: PathBuf,
        /// What sie was doing.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: VfioError,
    },
    /// A BAR could not be mmapped.
    #[error("vfio {path}: cannot mmap BAR {bar}: {source}")]
    Mmap {
        /// The device.
        path: PathBuf,
        /// BAR number.
        bar: usize,
        /// Why.
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The device only has INTx and sie was asked for none of it.
    #[error("vfio {0}: the device's interrupt index is missing")]
    NoInterrupt(PathBuf),
}

/// A mmapped piece of a BAR the VMM maps into the guest as a memory slot.
#[derive(Debug, Clone)]
pub struct BarMapping {
    /// BAR number.
    pub bar: usize,
    /// Offset of the piece in the BAR.
    pub offset: u64,
    /// The host mapping (kept alive by whoever maps it into the guest).
    pub region: Arc<MmapRegion>,
}

/// An opened device with guest RAM mapped for its DMA.
pub struct HostDevice {
    path: PathBuf,
    device: VfioDevice,
    container: Arc<VfioContainer>,
    /// Guest RAM ranges mapped for DMA (IOVA, bytes), unmapped on drop.
    dma: Vec<(u64, usize)>,
}

impl std::fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDevice")
            .field("path", &self.path)
            .finish()
    }
}

impl HostDevice {
    /// Checks and opens the device at `path` (its sysfs directory), resets
    /// it, and maps every region of `memory` for its DMA at IOVA = guest
    /// physical address.
    pub fn open<M: GuestMemoryBackend>(path: &Path, memory: &M) -> Result<HostDevice, HostError> {
        check_device(path, Path::new("/dev/vfio"))?;
        let vfio = |op| {
            let path = path.to_path_buf();
            move |source| HostError::Vfio { path, op, source }
        };
        // No hypervisor VFIO device: KVM stays in sie-hv (without it KVM
        // cannot learn the device is coherent, which x86 hosts don't need).
        let container = Arc::new(VfioContainer::new(None).map_err(vfio("open the container"))?);
        let device =
            VfioDevice::new(path, container.clone(), false).map_err(vfio("open the device"))?;
        device.reset();
        let mut host = HostDevice {
            path: path.to_path_buf(),
            device,
            container,
            dma: Vec::new(),
        };
        for region in memory.iter() {
            let iova = region.start_addr().0;
            let len = usize::try_from(region.len()).unwrap_or(usize::MAX);
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|_| HostError::Vfio {
                    path: path.to_path_buf(),
                    op: "find guest RAM",
                    source: VfioError::GetHostAddress,
                })?;
            // SAFETY: `host_addr..+len` is guest RAM, which sie only ever
            // touches through vm-memory's volatile accessors (never through
            // Rust references) and which stays mapped until the VM ends,
            // after this device (and so the unmap in `drop`) is gone.
            unsafe { host.container.vfio_dma_map(iova, len, host_addr) }
                .map_err(vfio("map guest RAM for DMA"))?;
            host.dma.push((iova, len));
        }
        Ok(host)
    }

    /// The device's sysfs path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sizes of BARs 0..=5 as VFIO reports them.
    pub fn bar_sizes(&self) -> [u64; 6] {
        std::array::from_fn(|i| {
            self.device
                .get_region_size(VFIO_PCI_BAR0_REGION_INDEX + i as u32)
        })
    }

    /// Reads `data.len()` bytes at `offset` of BAR `bar`.
    pub fn read_bar(&self, bar: usize, offset: u64, data: &mut [u8]) {
        self.device
            .region_read(VFIO_PCI_BAR0_REGION_INDEX + bar as u32, data, offset);
    }

    /// Writes `data` at `offset` of BAR `bar`.
    pub fn write_bar(&self, bar: usize, offset: u64, data: &[u8]) {
        self.device
            .region_write(VFIO_PCI_BAR0_REGION_INDEX + bar as u32, data, offset);
    }

    /// Mmaps BAR `bar` except `hole` (the MSI-X table and PBA pages, which
    /// sie traps): the mmappable areas VFIO reports (sparse areas when it
    /// lists them), cut around the hole at page granularity.
    pub fn map_bar(
        &self,
        bar: usize,
        hole: Option<(u64, u64)>,
    ) -> Result<Vec<BarMapping>, HostError> {
        let index = VFIO_PCI_BAR0_REGION_INDEX + bar as u32;
        let size = self.device.get_region_size(index);
        if size == 0 || self.device.get_region_flags(index) & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Ok(Vec::new());
        }
        let mut areas = vec![(0, size)];
        for cap in self.device.get_region_caps(index) {
            if let VfioRegionInfoCap::SparseMmap(sparse) = cap {
                areas = sparse.areas.iter().map(|a| (a.offset, a.size)).collect();
            }
        }
        let pieces = cut_hole(&areas, hole);
        let base = self.device.get_region_offset(index);
        // SAFETY: the descriptor is the device's, open for as long as
        // `self.device` lives; it is only borrowed to duplicate it.
        let fd = unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) };
        let mut mappings = Vec::new();
        for (offset, len) in pieces {
            let file = fd
                .try_clone_to_owned()
                .map(File::from)
                .map_err(|e| HostError::Mmap {
                    path: self.path.clone(),
                    bar,
                    source: vm_memory::mmap::MmapRegionError::Mmap(e),
                })?;
            let region = MmapRegion::build(
                Some(FileOffset::new(file, base + offset)),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
            .map_err(|source| HostError::Mmap {
                path: self.path.clone(),
                bar,
                source,
            })?;
            mappings.push(BarMapping {
                bar,
                offset,
                region: Arc::new(region),
            });
        }
        Ok(mappings)
    }

    /// How many vectors the device has for `kind`.
    pub fn irq_count(&self, kind: IrqKind) -> u32 {
        self.device
            .get_irq_info(kind.index())
            .map_or(0, |irq| irq.count)
    }

    /// Hands `fds` to VFIO: the device's interrupts of `kind` signal them.
    pub fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), HostError> {
        self.device
            .enable_irq(kind.index(), fds.to_vec())
            .map_err(|source| HostError::Vfio {
                path: self.path.clone(),
                op: "enable interrupts",
                source,
            })
    }

    /// INTx is level-triggered: VFIO masks it when it fires and unmasks it
    /// when `resample` is signalled (KVM does that when the guest EOIs).
    pub fn set_intx_resample(&self, resample: &EventFd) -> Result<(), HostError> {
        self.device
            .set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![resample])
            .map_err(|source| HostError::Vfio {
                path: self.path.clone(),
                op: "set the INTx resample eventfd",
                source,
            })
    }

    /// Stops the interrupts of `kind`.
    pub fn disable_irq(&self, kind: IrqKind) {
        if self.irq_count(kind) > 0 {
            let _ = self.device.disable_irq(kind.index());
        }
    }
}

/// The device's configuration space through VFIO's config region.
impl ConfigRegion for HostDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.device
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
    }
    fn write(&self, offset: u64, data: &[u8]) {
        self.device
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, data, offset);
    }
}

impl Drop for HostDevice {
    fn drop(&mut self) {
        for kind in [IrqKind::Msix, IrqKind::Msi, IrqKind::Intx] {
            self.disable_irq(kind);
        }
        for &(iova, len) in &self.dma {
            if let Err(error) = self.container.vfio_dma_unmap(iova, len) {
                tracing::warn!(
                    "vfio {}: DMA unmap at {iova:#x}: {error}",
                    self.path.display()
                );
            }
        }
        self.device.reset();
    }
}

/// The three kinds of PCI interrupt VFIO exposes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqKind {
    /// The legacy level-triggered line.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

impl IrqKind {
    fn index(self) -> u32 {
        match self {
            IrqKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

const PAGE: u64 = 4096;

/// `areas` (offset, len) minus `hole` (offset, len) widened to whole pages.
pub fn cut_hole(areas: &[(u64, u64)], hole: Option<(u64, u64)>) -> Vec<(u64, u64)> {
    let Some((start, len)) = hole.filter(|&(_, len)| len > 0) else {
        return areas.to_vec();
    };
    let hole_start = start & !(PAGE - 1);
    let hole_end = start.saturating_add(len).saturating_add(PAGE - 1) & !(PAGE - 1);
    let mut out = Vec::new();
    for &(offset, size) in areas {
        let end = offset.saturating_add(size);
        if offset < hole_start {
            out.push((offset, end.min(hole_start) - offset));
        }
        if end > hole_end {
            let from = offset.max(hole_end);
            out.push((from, end - from));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msix_pages_are_cut_out_of_a_bar() {
        // Table at 0x2000 (64 entries = 1 KiB) and PBA right after: one page.
        assert_eq!(
            cut_hole(&[(0, 0x10000)], Some((0x2000, 0x408))),
            vec![(0, 0x2000), (0x3000, 0xd000)]
        );
        // A hole at the start or the end leaves one piece; none leaves all.
        assert_eq!(
            cut_hole(&[(0, 0x4000)], Some((0, 0x10))),
            vec![(0x1000, 0x3000)]
        );
        assert_eq!(
            cut_hole(&[(0, 0x4000)], Some((0x3ff0, 0x10))),
            vec![(0, 0x3000)]
        );
        assert_eq!(cut_hole(&[(0, 0x4000)], None), vec![(0, 0x4000)]);
        // Sparse areas around the hole stay as they are.
        assert_eq!(
            cut_hole(&[(0, 0x1000), (0x3000, 0x1000)], Some((0x1000, 0x800))),
            vec![(0, 0x1000), (0x3000, 0x1000)]
        );
    }
}
