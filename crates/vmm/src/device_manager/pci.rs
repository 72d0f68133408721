//! The VM's PCI bus (with `pci` on): the root bus with its host bridge,
//! reached through the 0xCF8 ports and the ECAM window, BAR windows on the
//! MMIO bus, and the allocators of the 32-bit and 64-bit windows from which
//! the VMM, acting as firmware, gives each BAR its address before boot.
//!
//! The bus comes with a hotplug controller (`sie_pci::HotplugController`
//! on ports 0xAE00-0xAE0F, an interrupt line for the ACPI event device that
//! tells the guest to read it) and every slot 1-31 described as
//! hotpluggable in the DSDT.
//!
//! When the guest moves a BAR, the root calls the device's hook with
//! [`VmBarMapper`], which moves its ioeventfds in KVM.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use sie_arch::acpi::{AcpiDevice, PciHostBridge};
use sie_arch::layout;
use sie_hv::{IoEventAddress, Vm};
use sie_pci::{
    AddressRange, AddressSpace, BarKind, BarMapper, BarRequest, Bdf, HOTPLUG_PORT,
    HOTPLUG_REGISTERS_LEN, HotplugController, PciConfigIo, PciDevice, PciEcam, PciRoot, PciWindows,
    WindowKind,
};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};
use vm_memory::MmapRegion;
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceManager, PlacementError, vm_allocator_error};
use crate::error::{Result, VmmError};

/// The root bus, its hotplug controller and the BAR windows' allocators.
pub struct PciBus {
    root: Arc<PciRoot>,
    /// The lines INTx pins are swizzled onto (the DSDT's `_PRT`), if any.
    intx_gsis: Option<[u32; 4]>,
    hotplug: Arc<HotplugController>,
    pub(super) windows: BarWindows,
}

/// The BAR windows' allocators and which ranges each slot holds (so a
/// device unplugged gives its ranges back).
pub(super) struct BarWindows {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    held: BTreeMap<u8, Vec<(WindowKind, RangeInclusive)>>,
}

impl BarWindows {
    /// Gives each BAR of a device an address: a 64-bit BAR above 4 GiB, a
    /// 32-bit one in the window below.
    pub(super) fn place(
        &mut self,
        request: &BarRequest,
    ) -> std::result::Result<u64, vm_allocator::Error> {
        let (kind, window) = match request.kind {
            BarKind::Memory64 { .. } => (WindowKind::Mmio64, &mut self.mmio64),
            BarKind::Memory32 => (WindowKind::Mmio32, &mut self.mmio32),
            // No I/O window: sie's PCI devices have memory BARs only.
            BarKind::Io => return Err(vm_allocator::Error::ResourceNotAvailable),
        };
        let range = window.allocate(request.size, request.size, AllocPolicy::FirstMatch)?;
        self.held
            .entry(request.bdf.device)
            .or_default()
            .push((kind, range));
        Ok(range.start())
    }

    /// Gives back every range `slot` holds.
    pub(super) fn free_slot(&mut self, slot: u8) {
        for (kind, range) in self.held.remove(&slot).unwrap_or_default() {
            let window = match kind {
                WindowKind::Mmio64 => &mut self.mmio64,
                _ => &mut self.mmio32,
            };
            if let Err(error) = window.free(&range) {
                tracing::warn!(slot, %error, "freeing a BAR range");
            }
        }
    }
}

impl PciBus {
    /// The root bus.
    pub fn root(&self) -> &Arc<PciRoot> {
        &self.root
    }

    /// The GSI INTx pin `pin` (0 = INTA) of `bdf` raises, when INTx is routed.
    pub fn intx_gsi(&self, bdf: Bdf, pin: u8) -> Option<u32> {
        Some(sie_arch::acpi::intx_gsi(self.intx_gsis?, bdf.device, pin))
    }

    /// The hotplug controller (its registers at [`sie_pci::HOTPLUG_PORT`]).
    pub fn hotplug(&self) -> &Arc<HotplugController> {
        &self.hotplug
    }

    /// The root, the controller and the windows, for run-time hotplug.
    pub(super) fn into_parts(self) -> (Arc<PciRoot>, Arc<HotplugController>, BarWindows) {
        (self.root, self.hotplug, self.windows)
    }
}

/// KVM's side of a BAR move: ioeventfds at the BAR's new address, and a
/// passed-through device's BAR pages as memory slots.
pub struct VmBarMapper {
    vm: Arc<dyn Vm>,
    /// Device memory placed in the guest: guest address → KVM slot.
    slots: Mutex<HashMap<u64, u32>>,
}

impl VmBarMapper {
    /// A mapper registering in `vm`.
    pub fn new(vm: Arc<dyn Vm>) -> Self {
        Self {
            vm,
            slots: Mutex::new(HashMap::new()),
        }
    }
}

fn event_address(space: AddressSpace, addr: u64) -> IoEventAddress {
    match space {
        AddressSpace::Memory => IoEventAddress::Mmio(addr),
        AddressSpace::Io => IoEventAddress::Pio(addr),
    }
}

impl BarMapper for VmBarMapper {
    // Any width matches (no datamatch): virtio-PCI gives each queue its own
    // notify address, and drivers write it with 16 bits.
    fn register_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        _len: u32,
    ) -> io::Result<()> {
        self.vm
            .register_ioevent(fd, event_address(space, addr), None)
            .map_err(|e| io::Error::other(crate::error::error_chain(&e)))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        _len: u32,
    ) -> io::Result<()> {
        self.vm
            .unregister_ioevent(fd, event_address(space, addr), None)
            .map_err(|e| io::Error::other(crate::error::error_chain(&e)))
    }

    unsafe fn map_memory(&self, guest_addr: u64, size: u64, host_addr: *mut u8) -> io::Result<()> {
        let len = usize::try_from(size).map_err(|_| io::ErrorKind::InvalidInput)?;
        // SAFETY: the caller keeps `host_addr..+size` mapped until
        // `unmap_memory(guest_addr)` (BarMapper's contract); the region
        // built here does not own the mapping and never unmaps it.
        let region = unsafe {
            MmapRegion::build_raw(
                host_addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
            )
        }
        .map_err(io::Error::other)?;
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.contains_key(&guest_addr) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("device memory already mapped at {guest_addr:#x}"),
            ));
        }
        let slot = self
            .vm
            .map_device_memory(guest_addr, Arc::new(region))
            .map_err(|e| io::Error::other(crate::error::error_chain(&e)))?;
        slots.insert(guest_addr, slot);
        Ok(())
    }

    fn unmap_memory(&self, guest_addr: u64, _size: u64) -> io::Result<()> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = slots.remove(&guest_addr).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no device memory at {guest_addr:#x}"),
            )
        })?;
        self.vm
            .unmap_device_memory(slot)
            .map_err(|e| io::Error::other(crate::error::error_chain(&e)))
    }
}

impl DeviceManager<'_> {
    /// Creates the PCI bus for a VM with `mem_size_bytes` of RAM: the root
    /// (with its host bridge), the 0xCF8 ports, the ECAM window and both
    /// BAR windows on the buses, and the host bridge in the DSDT (with
    /// the MCFG it implies). `vm` is kept for BAR moves at run time. With
    /// `intx`, four interrupt lines carry INTx (described by a `_PRT`), for
    /// passed-through devices.
    pub fn add_pci_bus(&mut self, vm: Arc<dyn Vm>, mem_size_bytes: u64, intx: bool) -> Result<()> {
        let name = "pci";
        let (m64_base, m64_size) = layout::pci_mmio64_window(mem_size_bytes).ok_or_else(|| {
            Self::place_error(
                name,
                PlacementError::NoMmio {
                    len: layout::PCI_MMIO64_SIZE,
                    at: " above RAM".to_string(),
                },
            )
        })?;
        let windows = PciWindows {
            mmio32: Some(AddressRange::new(
                layout::PCI_MMIO32_START,
                layout::PCI_MMIO32_SIZE,
            )),
            mmio64: Some(AddressRange::new(m64_base, m64_size)),
            io: None,
        };
        let root = Arc::new(PciRoot::new(windows, Arc::new(VmBarMapper::new(vm))));
        self.add_pio(
            "pci-config-io",
            sie_pci::CONFIG_ADDRESS_PORT,
            sie_pci::CONFIG_IO_PORTS,
            Arc::new(PciConfigIo::new(root.clone())),
        )?;
        self.insert_mmio(
            "pci-ecam",
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_SIZE,
            Arc::new(PciEcam::new(root.clone())),
        )?;
        for (kind, bus_name) in [
            (WindowKind::Mmio32, "pci-mmio32"),
            (WindowKind::Mmio64, "pci-mmio64"),
        ] {
            if let (Some(window), Some(device)) = (windows.get(kind), root.bar_window(kind)) {
                self.insert_mmio(bus_name, window.base, window.size, device)?;
            }
        }
        let mmio32 = AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE)
            .map_err(vm_allocator_error)?;
        let mmio64 = AddressAllocator::new(m64_base, m64_size).map_err(vm_allocator_error)?;
        let intx_gsis = if intx {
            let mut gsis = [0; 4];
            for gsi in &mut gsis {
                *gsi = self.allocate_gsi("pci-intx")?;
            }
            Some(gsis)
        } else {
            None
        };
        self.describe(AcpiDevice::PciHostBridge(PciHostBridge {
            ecam_base: layout::PCI_ECAM_START,
            last_bus: 0,
            mmio32: (layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE),
            mmio64: (m64_base, m64_size),
            intx_gsis,
        }));
        // Hotplug: the controller's registers on the port bus and the
        // event device's line; the DSDT gets the slots and `GED1`.
        let (irq, line) = self.allocate_line("pci-hotplug")?;
        let hotplug = Arc::new(HotplugController::new(line));
        self.add_pio(
            "pci-hotplug",
            HOTPLUG_PORT,
            HOTPLUG_REGISTERS_LEN,
            hotplug.clone(),
        )?;
        self.describe(AcpiDevice::PciHotplug {
            port: HOTPLUG_PORT,
            irq,
        });
        self.pci = Some(PciBus {
            root,
            intx_gsis,
            hotplug,
            windows: BarWindows {
                mmio32,
                mmio64,
                held: BTreeMap::new(),
            },
        });
        Ok(())
    }

    /// The GSI INTx pin `pin` (0 = INTA) of `bdf` raises, when the bus
    /// routes INTx.
    pub fn pci_intx_gsi(&self, bdf: Bdf, pin: u8) -> Option<u32> {
        self.pci.as_ref()?.intx_gsi(bdf, pin)
    }

    /// Whether the VM has a PCI bus (`add_pci_bus` ran).
    pub fn has_pci(&self) -> bool {
        self.pci.is_some()
    }

    /// Puts `device` in the first free slot of the PCI bus, its BARs
    /// placed in the windows; its interrupts are its own (MSI-X through
    /// [`super::msi::MsiVectors`]).
    pub fn add_pci_device(&mut self, name: &str, device: Arc<dyn PciDevice>) -> Result<Bdf> {
        let Some(pci) = self.pci.as_mut() else {
            return Err(VmmError::Platform(
                format!("{name}: the VM has no PCI bus").into(),
            ));
        };
        let root = pci.root.clone();
        let windows = &mut pci.windows;
        root.add_device(device, &mut |request| {
            windows.place(request).map_err(|e| Box::new(e) as _)
        })
        .map_err(|error| VmmError::Device {
            name: name.to_string(),
            source: Box::new(error),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_doubles::FakeVm;
    use sie_obs::Observatory;
    use std::time::Instant;

    #[test]
    fn the_bus_puts_its_ports_and_windows_on_the_buses_and_describes_the_bridge() {
        let vm = Arc::new(FakeVm::default());
        let mut manager =
            DeviceManager::new(vm.as_ref(), Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
        manager.add_pci_bus(vm.clone(), 128 << 20, false).unwrap();
        let layout = manager.finish();
        assert!(layout.pio.find(0xcf8).is_some() && layout.pio.find(0xcff).is_some());
        assert!(layout.mmio.find(layout::PCI_ECAM_START).is_some());
        assert!(layout.mmio.find(layout::PCI_MMIO32_START).is_some());
        assert!(
            layout.mmio.find(4 << 30).is_some(),
            "64-bit window at 4 GiB"
        );
        assert!(matches!(
            layout.acpi.as_slice(),
            [
                AcpiDevice::PciHostBridge(PciHostBridge {
                    ecam_base: layout::PCI_ECAM_START,
                    last_bus: 0,
                    ..
                }),
                AcpiDevice::PciHotplug {
                    port: HOTPLUG_PORT,
                    ..
                }
            ]
        ));
        assert!(layout.pio.find(0xae00).is_some() && layout.pio.find(0xae0f).is_some());
        assert!(layout.pio.find(0xae10).is_none());
        assert!(layout.pci_hotplug.is_some());
    }

    #[test]
    fn the_host_bridge_answers_on_the_config_ports() {
        let vm = Arc::new(FakeVm::default());
        let mut manager =
            DeviceManager::new(vm.as_ref(), Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
        manager.add_pci_bus(vm.clone(), 128 << 20, false).unwrap();
        let layout = manager.finish();
        let address = layout.pio.find(0xcf8).unwrap();
        // Bus 0, device 0, function 0, register 0: the ids.
        address
            .device
            .write(address.offset, &0x8000_0000u32.to_le_bytes());
        let data = layout.pio.find(0xcfc).unwrap();
        let mut ids = [0u8; 4];
        data.device.read(data.offset, &mut ids);
        assert_eq!(
            u16::from_le_bytes([ids[0], ids[1]]),
            sie_pci::HOST_BRIDGE_VENDOR_ID
        );
    }

    #[test]
    fn a_device_without_a_bus_is_refused() {
        let vm = FakeVm::default();
        let mut manager =
            DeviceManager::new(&vm, Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
        let device: Arc<dyn PciDevice> = Arc::new(sie_pci::HostBridge::new());
        assert!(manager.add_pci_device("x", device).is_err());
    }
}
