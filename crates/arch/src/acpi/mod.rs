//! ACPI tables: RSDP → XSDT → FADT (→ DSDT) and MADT, written in one go
//! into the reserved BIOS area at [`ACPI_START`], with the RSDP first so
//! Linux also finds it by scanning 0xE0000..0xFFFFF.
//!
//! The FADT declares a hardware-reduced ACPI platform: no PM timer, SCI,
//! GPE or sleep registers are needed. Its IAPC_BOOT_ARCH says legacy
//! devices and an i8042 are present (without the 8042 bit Linux skips
//! probing the keyboard controller, which sie uses for reset), no VGA, and
//! a CMOS RTC present. No FACS: hardware-reduced platforms may omit it.
//!
//! ```
//! # use sie_arch::acpi::{create_acpi_tables, AcpiConfig, AcpiDevice};
//! # use vm_memory::GuestAddress;
//! let mem = sie_hv::GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
//! let config = AcpiConfig { vcpus: 2, devices: vec![AcpiDevice::Serial { port: 0x3f8, irq: 4 }] };
//! let rsdp = create_acpi_tables(&mem, &config).unwrap();
//! assert_eq!(rsdp, GuestAddress(sie_arch::layout::ACPI_START));
//! ```

mod dsdt;
mod madt;
mod pci;
mod pci_hotplug;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_END, ACPI_START};

pub use madt::MAX_VCPUS;
pub use pci::{ECAM_BUS_SIZE, PciHostBridge, intx_gsi};

/// OEM id in every table header.
const OEM_ID: [u8; 6] = *b"SIEVMM";
/// Tables start on 16-byte boundaries (the RSDP scan's step).
const ALIGN: usize = 16;

/// IAPC_BOOT_ARCH: LPC/ISA devices present.
const BOOT_ARCH_LEGACY_DEVICES: u16 = 1 << 0;
/// IAPC_BOOT_ARCH: an 8042 keyboard controller is present.
const BOOT_ARCH_8042: u16 = 1 << 1;
/// IAPC_BOOT_ARCH: do not probe for VGA.
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;

/// One device the DSDT describes, with the resources the VMM gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcpiDevice {
    /// A 16550 UART (`PNP0501`) with 8 ports from `port`.
    Serial {
        /// First I/O port.
        port: u16,
        /// ISA interrupt line.
        irq: u32,
    },
    /// The i8042's keyboard port (`PNP0303`): Linux's i8042 driver takes its
    /// interrupt from here.
    Keyboard {
        /// Data port (0x60 on a PC).
        data_port: u16,
        /// Command/status port (0x64 on a PC).
        command_port: u16,
        /// Keyboard interrupt line.
        irq: u32,
    },
    /// A pvpanic device (`QEMU0001`) on one I/O port.
    PvPanic {
        /// Its I/O port.
        port: u16,
    },
    /// A VM Generation ID (`VMGENCTR`, which Linux's vmgenid driver binds
    /// to) whose 16 bytes are at `addr`, and the Generic Event Device
    /// (`ACPI0013`) whose interrupt `irq` makes the guest read them again.
    VmGenId {
        /// Guest-physical address of the 16-byte id.
        addr: u64,
        /// The GED's interrupt line: raising it notifies the guest.
        irq: u32,
    },
    /// A virtio-mmio device (`LNRO0005`).
    VirtioMmio {
        /// MMIO base address (below 4 GiB).
        addr: u64,
        /// MMIO window length in bytes.
        len: u64,
        /// GSI (I/O APIC pin), described edge-triggered, active-high.
        irq: u32,
    },
    /// A PCI host bridge (`PCI0`); it also makes the tables include an MCFG.
    /// At most one.
    PciHostBridge(PciHostBridge),
    /// PCI hotplug on the host bridge's bus: a device per slot 1-31 in
    /// `PCI0` with `_EJ0`, the controller's registers at `port`, and a
    /// Generic Event Device whose interrupt `irq` makes the guest read them.
    /// Needs a [`AcpiDevice::PciHostBridge`]; at most one.
    PciHotplug {
        /// First I/O port of the 16-byte register block.
        port: u16,
        /// The event device's interrupt line.
        irq: u32,
    },
}

/// What the ACPI tables describe.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AcpiConfig {
    /// Number of vCPUs (1..=254); APIC ids are 0..vcpus.
    pub vcpus: u32,
    /// Devices for the DSDT, in order (virtio-mmio `_UID`s follow it).
    pub devices: Vec<AcpiDevice>,
}

/// Errors building the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count cannot be described with xAPIC MADT entries.
    #[error("{0} vCPUs cannot be described in the MADT: 1 to 254 are supported")]
    VcpuCount(u32),
    /// Too many virtio-mmio devices for the DSDT's naming scheme.
    #[error("{0} virtio-mmio devices exceed the DSDT's limit of 4096")]
    TooManyVirtioDevices(usize),
    /// A virtio-mmio window is empty or not below 4 GiB.
    #[error("virtio-mmio window {addr:#x} (+{len:#x}) is empty or not below 4 GiB")]
    VirtioMmioRange {
        /// Window base.
        addr: u64,
        /// Window length.
        len: u64,
    },
    /// A PCI window is empty, wraps, or (ECAM, 32-bit window) is not below 4 GiB.
    #[error("PCI host bridge windows do not fit: {0:x?}")]
    PciWindows(PciHostBridge),
    /// More than one PCI host bridge was described.
    #[error("only one PCI host bridge can be described")]
    TwoPciHostBridges,
    /// PCI hotplug was described without a host bridge, or twice.
    #[error("PCI hotplug needs exactly one PCI host bridge and can be described once")]
    PciHotplugWithoutBridge,
    /// The tables outgrow the BIOS area.
    #[error("ACPI tables ({0} bytes) do not fit in the BIOS area")]
    TooLarge(usize),
    /// The guest memory write failed (guest RAM smaller than 1 MiB).
    #[error("cannot write the ACPI tables to guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, AcpiError>;

/// Builds the tables for `config`, writes them at [`ACPI_START`] and returns
/// the RSDP address (for `boot_params.acpi_rsdp_addr` / PVH `rsdp_paddr`).
pub fn create_acpi_tables(mem: &GuestMemory, config: &AcpiConfig) -> Result<GuestAddress> {
    let madt = madt::build(config.vcpus)?;
    let dsdt = dsdt::build(config)?;
    let mut bridges = config.devices.iter().filter_map(|d| match d {
        AcpiDevice::PciHostBridge(bridge) => Some(bridge),
        _ => None,
    });
    let mcfg = bridges.next().map(pci::mcfg).transpose()?;
    if bridges.next().is_some() {
        return Err(AcpiError::TwoPciHostBridges);
    }

    // Layout: RSDP, DSDT, FADT, MADT, XSDT; each address is known before
    // the table that points at it is built.
    let mut image = vec![0u8; Rsdp::len()];
    let dsdt_addr = append(&mut image, &dsdt);

    let mut fadt = FADTBuilder::new(OEM_ID, *b"SIEFACP ", 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        // No power or sleep button; in the fixed-feature model a zero would
        // claim one.
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch =
        (BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042 | BOOT_ARCH_VGA_NOT_PRESENT).into();
    let fadt_addr = append(&mut image, &to_bytes(&fadt.finalize()));
    let madt_addr = append(&mut image, &madt);
    let mcfg_addr = mcfg.map(|mcfg| append(&mut image, &mcfg));

    let mut xsdt = XSDT::new(OEM_ID, *b"SIEXSDT ", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if let Some(addr) = mcfg_addr {
        xsdt.add_entry(addr);
    }
    let xsdt_addr = append(&mut image, &to_bytes(&xsdt));

    let rsdp = to_bytes(&Rsdp::new(OEM_ID, xsdt_addr));
    image[..rsdp.len()].copy_from_slice(&rsdp);

    if image.len() as u64 > ACPI_END - ACPI_START {
        return Err(AcpiError::TooLarge(image.len()));
    }
    mem.write_slice(&image, GuestAddress(ACPI_START))
        .map_err(AcpiError::Write)?;
    Ok(GuestAddress(ACPI_START))
}

/// Appends `table` at the next aligned offset; returns its guest address.
fn append(image: &mut Vec<u8>, table: &[u8]) -> u64 {
    let at = image.len().next_multiple_of(ALIGN);
    image.resize(at, 0);
    image.extend_from_slice(table);
    ACPI_START + at as u64
}

fn to_bytes(table: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    bytes
}

#[cfg(test)]
mod tests;
