//! The device manager: the one owner of the VM's device address space and
//! interrupt lines.
//!
//! Interrupt lines (GSIs) and the platform MMIO window are handed out by
//! rust-vmm's `vm-allocator`; legacy devices claim their conventional ISA
//! line or window by exact match, everything else takes the first free one.
//! Every device is put on its bus here (registered with the observatory on
//! the way), and described here for the guest ([`AcpiDevice`]); the DSDT
//! and the kernel command line's `virtio_mmio.device=` arguments are both
//! derived from that one list, so no address or line is written down twice.
//!
//! ```text
//!   platform.rs ─┐                      ┌─▶ Bus (ports), Bus (MMIO)  → exit dispatch
//!   virtio.rs  ──┼─▶ DeviceManager ─────┼─▶ Vec<AcpiDevice>         → DSDT
//!   pci.rs     ──┘   allocators, irqfds └─▶ virtio_mmio.device=…    → command line
//! ```
//!
//! With `pci` on, `pci.rs` adds the PCI root bus (0xCF8 ports, ECAM, BAR
//! windows, the host bridge in the DSDT); its devices' BARs come from the
//! 32-bit and 64-bit windows and their MSI-X vectors from GSIs 24 and up
//! (`msi.rs`: an irqfd per vector, its KVM route following the guest).
//! `finish` hands the bus, its hotplug controller and what is left of the
//! windows and MSI GSIs to `hotplug.rs`, which plugs and unplugs devices
//! while the VM runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use linux_loader::cmdline::Cmdline;
use sie_arch::acpi::AcpiDevice;
use sie_devices::{Bus, BusDevice, Interrupt};
use sie_hv::Vm;
use sie_obs::Observatory;
use vm_allocator::{AddressAllocator, AllocPolicy};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{Result, VmmError};

/// I/O APIC pins sie hands out: 0 to 22 (the in-kernel I/O APIC has 24).
const GSI_COUNT: u64 = 23;
/// Units of the GSI allocator per line. vm-allocator 0.1.4 refuses an
/// exact one-unit request that fills a one-unit hole (line 1 between the
/// reserved 0 and 2), so each line is a two-unit range: line N is
/// `2N..=2N+1`.
const GSI_UNITS: u64 = 2;
/// Lines no device may take: the PIT's timer (0) and the PIC cascade (2).
const RESERVED_GSIS: [u32; 2] = [0, 2];

/// GSIs for MSI vectors: from the first one past the I/O APIC's pins, 1000
/// of them (KVM's routing table holds 4096 entries, 40 of them the
/// interrupt controllers' own).
const MSI_GSI_COUNT: u64 = 1000;

/// Errors placing a device.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    /// No interrupt line is left (or the one asked for is taken).
    #[error("no free interrupt line (GSI {asked})")]
    NoGsi {
        /// The line asked for, or "any".
        asked: String,
    },
    /// The MMIO window is full, or the exact range asked for is taken.
    #[error("no room for {len:#x} bytes of MMIO{at}")]
    NoMmio {
        /// Length asked for.
        len: u64,
        /// " at 0x…" when an exact place was asked for.
        at: String,
    },
    /// No room is left for a device's MSI vectors.
    #[error("no {count} free MSI interrupts")]
    NoMsi {
        /// Vectors asked for.
        count: u16,
    },
    /// The bus refused the range.
    #[error(transparent)]
    Bus(#[from] sie_devices::BusError),
}

/// Everything the device manager placed, for the buses, the DSDT and the
/// command line.
pub struct DeviceLayout {
    /// Port bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// The devices the guest is told about, in order.
    pub acpi: Vec<AcpiDevice>,
    /// The PCI root bus, with `pci` on.
    pub pci: Option<Arc<sie_pci::PciRoot>>,
    /// Hotplug on it (the controller, BAR windows and MSI GSIs), with `pci` on.
    pub pci_hotplug: Option<Arc<hotplug::PciHotplug>>,
}

impl DeviceLayout {
    /// Adds a `virtio_mmio.device=` argument for each virtio-MMIO device to
    /// `cmdline`, for kernels without ACPI (stock distro kernels use the
    /// DSDT and ignore these).
    pub fn add_virtio_mmio_args(&self, cmdline: &mut Cmdline) -> linux_loader::cmdline::Result<()> {
        for device in &self.acpi {
            if let AcpiDevice::VirtioMmio { addr, len, irq } = *device {
                cmdline.add_virtio_mmio_device(len, GuestAddress(addr), irq, None)?;
            }
        }
        Ok(())
    }
}

/// Places devices while a VM is built.
pub struct DeviceManager<'a> {
    vm: &'a dyn Vm,
    obs: Arc<Observatory>,
    pio: Bus,
    mmio: Bus,
    gsis: AddressAllocator,
    mmio_window: AddressAllocator,
    /// GSIs for MSI vectors, 24 and up.
    msi_gsis: AddressAllocator,
    /// The PCI bus, once `add_pci_bus` created it.
    pci: Option<pci::PciBus>,
    /// One irqfd per line, shared by the devices on it (COM1 and COM3).
    lines: BTreeMap<u32, Arc<EventFd>>,
    acpi: Vec<AcpiDevice>,
    /// The device-memory window past RAM (virtio-pmem files), made when
    /// the first device asks for room in it.
    device_memory: Option<AddressAllocator>,
}

fn vm_allocator_error(error: vm_allocator::Error) -> VmmError {
    VmmError::Platform(Box::new(error))
}

impl<'a> DeviceManager<'a> {
    /// A manager for `vm` whose devices count their accesses in `obs`.
    pub fn new(vm: &'a dyn Vm, obs: Arc<Observatory>) -> Result<Self> {
        let mut gsis =
            AddressAllocator::new(0, GSI_COUNT * GSI_UNITS).map_err(vm_allocator_error)?;
        for gsi in RESERVED_GSIS {
            gsis.allocate(
                GSI_UNITS,
                GSI_UNITS,
                AllocPolicy::ExactMatch(u64::from(gsi) * GSI_UNITS),
            )
            .map_err(vm_allocator_error)?;
        }
        let mmio_window = AddressAllocator::new(
            sie_arch::layout::PLATFORM_MMIO_START,
            sie_arch::layout::PLATFORM_MMIO_SIZE,
        )
        .map_err(vm_allocator_error)?;
        let msi_gsis = AddressAllocator::new(u64::from(sie_hv::FIRST_MSI_GSI), MSI_GSI_COUNT)
            .map_err(vm_allocator_error)?;
        Ok(Self {
            vm,
            obs,
            pio: Bus::default(),
            mmio: Bus::default(),
            gsis,
            mmio_window,
            msi_gsis,
            pci: None,
            lines: BTreeMap::new(),
            acpi: Vec::new(),
            device_memory: None,
        })
    }

    fn place_error(name: &str, error: PlacementError) -> VmmError {
        VmmError::Device {
            name: name.to_string(),
            source: Box::new(error),
        }
    }

    /// Claims interrupt line `gsi` (an ISA device's fixed line) and returns
    /// it wired to the VM as an irqfd. Devices that share a line (COM1 and
    /// COM3) get the same one.
    pub fn fixed_line(&mut self, gsi: u32) -> Result<Arc<dyn Interrupt>> {
        if let Some(line) = self.lines.get(&gsi) {
            return Ok(line.clone());
        }
        self.reserve_gsi(gsi)?;
        self.wire(gsi)
    }

    /// Claims line `gsi` for a device that raises it by other means (the
    /// RTC's line 8, which Linux expects to own), so nothing else gets it.
    pub fn reserve_gsi(&mut self, gsi: u32) -> Result<()> {
        let at = u64::from(gsi) * GSI_UNITS;
        self.gsis
            .allocate(GSI_UNITS, GSI_UNITS, AllocPolicy::ExactMatch(at))
            .map(|_| ())
            .map_err(|_| {
                Self::place_error(
                    "an interrupt line",
                    PlacementError::NoGsi {
                        asked: gsi.to_string(),
                    },
                )
            })
    }

    /// Allocates the first free interrupt line and wires it as an irqfd.
    pub fn allocate_line(&mut self, name: &str) -> Result<(u32, Arc<dyn Interrupt>)> {
        let gsi = self.allocate_gsi(name)?;
        Ok((gsi, self.wire(gsi)?))
    }

    /// Allocates the first free interrupt line, left unwired (its user
    /// registers its own irqfd: a passed-through device's INTx).
    pub fn allocate_gsi(&mut self, name: &str) -> Result<u32> {
        let range = self
            .gsis
            .allocate(GSI_UNITS, GSI_UNITS, AllocPolicy::FirstMatch)
            .map_err(|_| {
                Self::place_error(
                    name,
                    PlacementError::NoGsi {
                        asked: "any".to_string(),
                    },
                )
            })?;
        // The allocator's range ends at GSI_COUNT lines, far below u32::MAX.
        Ok(u32::try_from(range.start() / GSI_UNITS).unwrap_or(u32::MAX))
    }

    /// Allocates `count` consecutive GSIs for a device's MSI vectors and
    /// returns the first (routes and irqfds come with [`msi::MsiVectors`]).
    pub fn allocate_msi_gsis(&mut self, name: &str, count: u16) -> Result<u32> {
        let range = self
            .msi_gsis
            .allocate(u64::from(count.max(1)), 1, AllocPolicy::FirstMatch)
            .map_err(|_| Self::place_error(name, PlacementError::NoMsi { count }))?;
        // The allocator's range ends at 24 + MSI_GSI_COUNT.
        Ok(u32::try_from(range.start()).unwrap_or(u32::MAX))
    }

    fn wire(&mut self, gsi: u32) -> Result<Arc<dyn Interrupt>> {
        let fd = EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::Host {
            what: "creating an interrupt eventfd",
            source,
        })?;
        self.vm.register_irqfd(&fd, gsi)?;
        let fd = Arc::new(fd);
        self.lines.insert(gsi, fd.clone());
        Ok(fd)
    }

    /// Puts `device` on the port bus at `base..base+len`.
    pub fn add_pio(
        &mut self,
        name: &str,
        base: u16,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<()> {
        let stats = self.obs.register_device(name);
        self.pio
            .insert(u64::from(base), len, device, stats)
            .map_err(|e| Self::place_error(name, e.into()))
    }

    /// Puts `device` on the MMIO bus: at `at` when given (a fixed address
    /// guests know), else in the first free `len`-aligned range of the
    /// platform window. Returns its base address.
    pub fn add_mmio(
        &mut self,
        name: &str,
        at: Option<u64>,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<u64> {
        let policy = at.map_or(AllocPolicy::FirstMatch, AllocPolicy::ExactMatch);
        let align = if len.is_power_of_two() { len } else { 1 };
        let range = self.mmio_window.allocate(len, align, policy).map_err(|_| {
            Self::place_error(
                name,
                PlacementError::NoMmio {
                    len,
                    at: at.map(|a| format!(" at {a:#x}")).unwrap_or_default(),
                },
            )
        })?;
        let base = range.start();
        let stats = self.obs.register_device(name);
        self.mmio
            .insert(base, len, device, stats)
            .map_err(|e| Self::place_error(name, e.into()))?;
        Ok(base)
    }

    /// Puts `device` on the MMIO bus at exactly `base..base+len`, outside
    /// the platform window (the PCI windows, which have their own
    /// allocators).
    fn insert_mmio(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<()> {
        let stats = self.obs.register_device(name);
        self.mmio
            .insert(base, len, device, stats)
            .map_err(|e| Self::place_error(name, e.into()))
    }

    /// Tells the guest about a device (DSDT and, for virtio-MMIO, the
    /// command line).
    pub fn describe(&mut self, device: AcpiDevice) {
        self.acpi.push(device);
    }

    /// Room for `len` bytes of device memory, `align`-aligned, in the
    /// window past RAM (which ends at `ram_end`): its guest address.
    pub fn allocate_device_memory(
        &mut self,
        name: &str,
        ram_end: u64,
        len: u64,
        align: u64,
    ) -> Result<u64> {
        if self.device_memory.is_none() {
            let (base, size) = sie_arch::layout::device_memory_window(ram_end)
                .ok_or_else(|| VmmError::Unsupported("device memory past this much RAM"))?;
            self.device_memory =
                Some(AddressAllocator::new(base, size).map_err(vm_allocator_error)?);
        }
        let Some(window) = self.device_memory.as_mut() else {
            return Err(VmmError::Unsupported("device memory"));
        };
        let range = window
            .allocate(len, align, AllocPolicy::FirstMatch)
            .map_err(|_| {
                Self::place_error(
                    name,
                    PlacementError::NoMmio {
                        len,
                        at: " in the device-memory window".to_string(),
                    },
                )
            })?;
        Ok(range.start())
    }

    /// The buses and descriptions, once every device is placed.
    pub fn finish(self) -> DeviceLayout {
        DeviceLayout {
            pio: self.pio,
            mmio: self.mmio,
            acpi: self.acpi,
            pci: self.pci.as_ref().map(|pci| pci.root().clone()),
            pci_hotplug: self.pci.map(|pci| {
                let (root, controller, windows) = pci.into_parts();
                Arc::new(hotplug::PciHotplug::new(
                    root,
                    controller,
                    windows,
                    self.msi_gsis,
                ))
            }),
        }
    }
}

pub mod hotplug;
pub mod msi;
pub mod pci;

#[cfg(test)]
mod tests;
