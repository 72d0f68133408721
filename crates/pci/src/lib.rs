//! PCI for sie: one root bus (segment 0, bus 0) with a host bridge, the
//! devices on it, and the bus devices through which the guest reaches them.
//!
//! - [`ConfigSpace`]: a 4 KiB configuration space with per-byte write masks,
//!   a type-0 header, BARs (sizing falls out of the masks) and a
//!   capability list. Devices embed one.
//! - [`PciDevice`]: what a function on the bus implements (configuration
//!   space, BAR accesses, a hook when a BAR moves).
//! - [`MsixTable`] and [`MsixCapability`]: MSI-X emulation (vector table,
//!   pending bits, masking); interrupts leave through [`MsiInterrupts`],
//!   which the VMM implements (KVM MSI routes and irqfds), so devices never
//!   see KVM.
//! - [`PciRoot`]: the bus. The VMM adds devices with an allocator callback
//!   that places their BARs in its MMIO windows; the root programs the BARs
//!   and enables decoding (the VMM acts as firmware, so Linux keeps the
//!   addresses). When the guest moves or disables a BAR, the root updates
//!   its routing table and calls the device's [`PciDevice::bar_moved`] with
//!   the VMM's [`BarMapper`] (ioeventfds, memory slots).
//! - [`HotplugController`]: the register block through which the guest's
//!   ACPI code hears of devices added to or leaving a slot, and says which
//!   ones it released.
//! - Bus devices the VMM inserts on its buses: [`PciConfigIo`] (ports
//!   0xCF8..=0xCFF), [`PciEcam`] (the ECAM window), [`PciBarWindow`] (a whole
//!   MMIO or port window, routed to the BAR that holds each address).
//!
//! Wiring, in short:
//!
//! ```
//! use std::sync::Arc;
//! use sie_pci::{AddressRange, PciRoot, PciWindows, NoBarMapper};
//!
//! let windows = PciWindows {
//!     mmio32: Some(AddressRange::new(0xc000_0000, 0x1000_0000)),
//!     mmio64: Some(AddressRange::new(0x100_0000_0000, 0x10_0000_0000)),
//!     io: None,
//! };
//! let root = Arc::new(PciRoot::new(windows, Arc::new(NoBarMapper)));
//! // root.add_device(device, &mut |request| allocator.allocate(request))?;
//! let ecam = sie_pci::PciEcam::new(root.clone());
//! let cf8 = sie_pci::PciConfigIo::new(root.clone());
//! let mmio32 = root.bar_window(sie_pci::WindowKind::Mmio32);
//! # let _ = (ecam, cf8, mmio32);
//! ```
//!
//! Locks, in the order they may be taken (never the other way round):
//! 1. [`PciRoot`]'s configuration-write lock (one guest configuration
//!    write, device addition or removal at a time, so BAR moves are applied
//!    in the order they happened);
//! 2. a device's own locks (inside its [`PciDevice`] methods; an MSI-X
//!    table lock comes after the device's state lock);
//! 3. the root's slot table and BAR routing table (`RwLock`s), each held
//!    only to look up or replace an entry, never while calling a device:
//!    an access clones the device's `Arc` and drops the lock first.
//!
//! [`BarMapper`] calls happen under lock 1 (and whatever the device holds
//! in its hook), from the vCPU thread that wrote the configuration space.
//! vCPU threads call every bus device here concurrently.

mod address;
mod bar_window;
mod config_io;
mod config_space;
mod device;
mod ecam;
mod host_bridge;
mod hotplug;
mod msix;
mod root;
mod routes;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use address::{AddressRange, Bdf};
pub use bar_window::PciBarWindow;
pub use config_io::{CONFIG_ADDRESS_PORT, CONFIG_IO_PORTS, PciConfigIo};
pub use config_space::{
    BarInfo, BarKind, BarMove, ConfigSpace, ConfigSpaceError, ConfigWriteOutcome, PciHeader,
    affects_decoding, command, registers,
};
pub use device::{AddressSpace, BarMapper, NoBarMapper, PciDevice};
pub use ecam::{ECAM_BUS_SIZE, PciEcam};
pub use host_bridge::{HOST_BRIDGE_DEVICE_ID, HOST_BRIDGE_VENDOR_ID, HostBridge};
pub use hotplug::{
    HOTPLUG_PORT, HOTPLUG_REGISTERS_LEN, HotplugController, HotplugError, hotplug_registers,
};
pub use msix::{
    MAX_VECTORS, MSIX_CAPABILITY_ID, MSIX_ENTRY_SIZE, MsiInterrupts, MsiMessage, MsixCapability,
    MsixError, MsixTable,
};
pub use root::{
    BarPlacementError, BarRequest, PciRoot, PciRootError, PciWindows, PlaceBar, SLOTS, WindowKind,
};

/// Every bit set: what a read of nothing returns on PCI.
pub(crate) fn fill_ones(data: &mut [u8]) {
    data.fill(0xff);
}
