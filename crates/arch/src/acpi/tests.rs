//! Parses the written tables back out of guest memory, the way a guest's
//! ACPI code would.

use super::*;
use sie_hv::GuestMemory;

fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
}

fn config() -> AcpiConfig {
    AcpiConfig {
        vcpus: 4,
        devices: vec![
            AcpiDevice::Serial {
                port: 0x3f8,
                irq: 4,
            },
            AcpiDevice::PvPanic { port: 0x505 },
            AcpiDevice::VirtioMmio {
                addr: 0xc000_1000,
                len: 0x1000,
                irq: 5,
            },
        ],
    }
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

fn sums_to_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
}

/// Reads the table at `addr`, checking signature, length and checksum.
fn table(mem: &GuestMemory, addr: u64, signature: &[u8; 4]) -> Vec<u8> {
    let header = read(mem, addr, 36);
    assert_eq!(&header[..4], signature);
    let bytes = read(mem, addr, u32_at(&header, 4) as usize);
    assert!(
        sums_to_zero(&bytes),
        "{} checksum",
        String::from_utf8_lossy(signature)
    );
    assert_eq!(&bytes[10..16], b"SIEVMM");
    bytes
}

struct Parsed {
    fadt: Vec<u8>,
    madt: Vec<u8>,
    dsdt: Vec<u8>,
    mcfg: Option<Vec<u8>>,
}

fn parse(mem: &GuestMemory, rsdp_addr: GuestAddress) -> Parsed {
    let rsdp = read(mem, rsdp_addr.0, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert!(sums_to_zero(&rsdp[..20]), "RSDP v1 checksum");
    assert!(sums_to_zero(&rsdp), "RSDP extended checksum");
    assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
    assert_eq!(u32_at(&rsdp, 20), 36);
    let xsdt = table(mem, u64_at(&rsdp, 24), b"XSDT");
    let entries: Vec<u64> = xsdt[36..].chunks_exact(8).map(|c| u64_at(c, 0)).collect();
    assert!(matches!(entries.len(), 2 | 3));
    let fadt = table(mem, entries[0], b"FACP");
    let madt = table(mem, entries[1], b"APIC");
    let mcfg = entries.get(2).map(|addr| table(mem, *addr, b"MCFG"));
    assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT pointer unused");
    let dsdt = table(mem, u64_at(&fadt, 140), b"DSDT");
    Parsed {
        fadt,
        madt,
        dsdt,
        mcfg,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn rsdp_is_in_the_bios_scan_area_on_a_16_byte_boundary() {
    let rsdp = create_acpi_tables(&mem(), &config()).unwrap();
    assert!((0xe0000..0x100000).contains(&rsdp.0));
    assert_eq!(rsdp.0 % 16, 0);
}

#[test]
fn tables_chain_with_valid_checksums() {
    let mem = mem();
    let rsdp = create_acpi_tables(&mem, &config()).unwrap();
    let p = parse(&mem, rsdp);
    assert!(contains(&p.dsdt, b"LNRO0005"));
    assert!(contains(&p.dsdt, b"QEMU0001"));
}

#[test]
fn fadt_is_hardware_reduced_with_8042_and_no_vga() {
    let mem = mem();
    let p = parse(&mem, create_acpi_tables(&mem, &config()).unwrap());
    let flags = u32_at(&p.fadt, 112);
    assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
    let boot_arch = u16::from_le_bytes([p.fadt[109], p.fadt[110]]);
    assert_ne!(boot_arch & BOOT_ARCH_8042, 0);
    assert_ne!(boot_arch & BOOT_ARCH_VGA_NOT_PRESENT, 0);
    assert_eq!(boot_arch & (1 << 5), 0, "CMOS RTC present");
    assert_eq!(p.fadt.len(), 276, "ACPI 6 FADT");
}

#[test]
fn madt_has_one_local_apic_per_vcpu() {
    let mem = mem();
    let p = parse(&mem, create_acpi_tables(&mem, &config()).unwrap());
    let mut at = 44;
    let mut lapics = Vec::new();
    let mut ioapics = 0;
    while at < p.madt.len() {
        match p.madt[at] {
            0 => lapics.push(p.madt[at + 3]),
            1 => {
                ioapics += 1;
                assert_eq!(u32_at(&p.madt, at + 4), 0xfec0_0000);
                assert!(!lapics.contains(&p.madt[at + 2]), "I/O APIC id collides");
            }
            _ => {}
        }
        at += usize::from(p.madt[at + 1]);
    }
    assert_eq!(lapics, vec![0, 1, 2, 3]);
    assert_eq!(ioapics, 1);
}

#[test]
fn memory_without_the_bios_area_is_an_error() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x8_0000)]).unwrap();
    assert!(matches!(
        create_acpi_tables(&mem, &config()),
        Err(AcpiError::Write(_))
    ));
}

#[test]
fn tables_too_large_for_the_bios_area_are_an_error() {
    let mut c = config();
    c.devices = vec![
        AcpiDevice::VirtioMmio {
            addr: 0xc000_1000,
            len: 0x1000,
            irq: 5
        };
        4000
    ];
    assert!(matches!(
        create_acpi_tables(&mem(), &c),
        Err(AcpiError::TooLarge(_))
    ));
}

#[test]
fn bad_vcpu_count_is_an_error() {
    let c = AcpiConfig {
        vcpus: 0,
        ..config()
    };
    assert!(matches!(
        create_acpi_tables(&mem(), &c),
        Err(AcpiError::VcpuCount(0))
    ));
}

fn pci_bridge() -> PciHostBridge {
    PciHostBridge {
        ecam_base: 0xe000_0000,
        last_bus: 0,
        mmio32: (0xd000_0000, 0x1000_0000),
        mmio64: (0x40_0000_0000, 0x40_0000_0000),
        intx_gsis: None,
    }
}

#[test]
fn without_pci_there_is_no_mcfg_and_no_host_bridge() {
    let mem = mem();
    let p = parse(&mem, create_acpi_tables(&mem, &config()).unwrap());
    assert!(p.mcfg.is_none());
    assert!(!contains(&p.dsdt, b"PCI0"));
}

#[test]
fn a_pci_host_bridge_adds_the_mcfg_and_keeps_msi_allowed() {
    let mem = mem();
    let mut c = config();
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    let p = parse(&mem, create_acpi_tables(&mem, &c).unwrap());
    let mcfg = p.mcfg.expect("an MCFG in the XSDT");
    assert_eq!(u64_at(&mcfg, 44), 0xe000_0000);
    assert!(contains(&p.dsdt, b"PCI0") && contains(&p.dsdt, b"MRES"));
    let boot_arch = u16::from_le_bytes([p.fadt[109], p.fadt[110]]);
    assert_eq!(boot_arch & (1 << 3), 0, "MSI not supported must stay clear");
    assert_eq!(
        boot_arch & (1 << 4),
        0,
        "PCIe ASPM controls must stay clear"
    );
}

#[test]
fn two_pci_host_bridges_are_an_error() {
    let mut c = config();
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    assert!(matches!(
        create_acpi_tables(&mem(), &c),
        Err(AcpiError::TwoPciHostBridges)
    ));
}

#[test]
fn pci_hotplug_follows_the_host_bridge_whatever_the_order() {
    let mem = mem();
    let mut c = config();
    c.devices.push(AcpiDevice::PciHotplug {
        port: 0xae00,
        irq: 12,
    });
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    let p = parse(&mem, create_acpi_tables(&mem, &c).unwrap());
    let at = |needle: &[u8]| p.dsdt.windows(needle.len()).position(|w| w == needle);
    let bridge = at(b"PCI0").expect("PCI0");
    let slot = at(b"S01_").expect("slot 1");
    assert!(bridge < slot, "the slots' scope must follow PCI0");
    assert!(contains(&p.dsdt, b"GED1"));
}

#[test]
fn pci_hotplug_without_a_host_bridge_or_twice_is_an_error() {
    let hotplug = AcpiDevice::PciHotplug {
        port: 0xae00,
        irq: 12,
    };
    let mut c = config();
    c.devices.push(hotplug);
    assert!(matches!(
        create_acpi_tables(&mem(), &c),
        Err(AcpiError::PciHotplugWithoutBridge)
    ));
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    c.devices.push(hotplug);
    assert!(matches!(
        create_acpi_tables(&mem(), &c),
        Err(AcpiError::PciHotplugWithoutBridge)
    ));
}

/// Writes the DSDT with a bridge and hotplug to `SIE_DUMP_DSDT` (for a
/// look with `iasl -d`); does nothing without it.
#[test]
fn dump_the_hotplug_dsdt_on_request() {
    let Ok(path) = std::env::var("SIE_DUMP_DSDT") else {
        return;
    };
    let mem = mem();
    let mut c = config();
    c.devices.push(AcpiDevice::PciHostBridge(pci_bridge()));
    c.devices.push(AcpiDevice::PciHotplug {
        port: 0xae00,
        irq: 12,
    });
    let p = parse(&mem, create_acpi_tables(&mem, &c).unwrap());
    std::fs::write(path, &p.dsdt).unwrap();
}
