//! The ACPI tables (`sie_arch::acpi::create_acpi_tables`) for random vCPU
//! counts and random DSDT device lists (serial ports, keyboards, pvpanic,
//! virtio-mmio windows with any address, length and interrupt), written
//! into 2 MiB of guest memory.
//!
//! Checked: the vCPU count is refused exactly when it is outside
//! 1..=[`MAX_VCPUS`]; on success the RSDP is at `ACPI_START`, both its
//! checksums and those of the XSDT, every table it lists, and the DSDT
//! the FADT points at sum to zero; every table lies inside the BIOS area;
//! the MADT has one local APIC per vCPU, and the DSDT names every
//! virtio-mmio device.

use sie_arch::acpi::{
    AcpiConfig, AcpiDevice, AcpiError, MAX_VCPUS, PciHostBridge, create_acpi_tables,
};
use sie_arch::layout::{ACPI_END, ACPI_START};
use sie_virtio::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let vcpus = match input.u8() % 8 {
        0 => input.u32(),
        1 => 0,
        2 => MAX_VCPUS + input.below(3),
        _ => input.below(MAX_VCPUS) + 1,
    };
    let count = match input.u8() % 8 {
        0 => input.below(5000) as usize,
        _ => input.below(40) as usize,
    };
    let mut devices = Vec::with_capacity(count);
    for i in 0..count {
        devices.push(match input.u8() % 8 {
            0 => AcpiDevice::Serial {
                port: input.u16(),
                irq: u32::from(input.u8()),
            },
            1 => AcpiDevice::Keyboard {
                data_port: input.u16(),
                command_port: input.u16(),
                irq: u32::from(input.u8()),
            },
            2 => AcpiDevice::PvPanic { port: input.u16() },
            3 => AcpiDevice::VirtioMmio {
                addr: input.u64(),
                len: input.u64(),
                irq: input.u32(),
            },
            4 if input.u8() % 4 == 0 => AcpiDevice::PciHostBridge(PciHostBridge {
                ecam_base: input.u64(),
                last_bus: input.u8(),
                mmio32: (input.u64(), input.u64()),
                mmio64: (input.u64(), input.u64()),
                intx_gsis: input
                    .bool()
                    .then(|| [input.u32(), input.u32(), input.u32(), input.u32()]),
            }),
            5 if input.u8() % 4 == 0 => AcpiDevice::PciHotplug {
                port: input.u16(),
                irq: input.u32(),
            },
            _ => AcpiDevice::VirtioMmio {
                addr: 0xd000_0000 + i as u64 * 0x1000,
                len: 0x1000,
                irq: 5 + i as u32,
            },
        });
    }
    let config = AcpiConfig { vcpus, devices };
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 2 << 20)]).expect("guest memory");
    let rsdp = match create_acpi_tables(&mem, &config) {
        Ok(rsdp) => rsdp,
        Err(AcpiError::VcpuCount(n)) => {
            assert_eq!(n, vcpus);
            assert!(vcpus == 0 || vcpus > MAX_VCPUS, "{vcpus} vCPUs refused");
            return;
        }
        Err(_) => return,
    };
    assert!(
        (1..=MAX_VCPUS).contains(&vcpus),
        "{vcpus} vCPUs were described"
    );
    assert_eq!(rsdp, GuestAddress(ACPI_START));
    let bios = read(&mem, ACPI_START, (ACPI_END - ACPI_START) as usize);
    let rsdp = &bios[..36];
    assert_eq!(&rsdp[..8], b"RSD PTR ", "RSDP signature");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    let xsdt = table(&bios, le64(&rsdp[24..32]), b"XSDT");
    let mut dsdt = None;
    let mut lapics = None;
    let mut mcfgs = 0;
    for entry in xsdt[36..].chunks_exact(8) {
        let t = table(&bios, le64(entry), b"");
        match &t[..4] {
            b"FACP" => dsdt = Some(table(&bios, le64(&t[140..148]), b"DSDT")),
            b"APIC" => lapics = Some(local_apics(t)),
            b"MCFG" => mcfgs += 1,
            other => panic!("unexpected table {other:?} in the XSDT"),
        }
    }
    let dsdt = dsdt.expect("the XSDT lists a FADT");
    assert_eq!(lapics, Some(vcpus as usize), "MADT local APICs");
    let virtio = config
        .devices
        .iter()
        .filter(|d| matches!(d, AcpiDevice::VirtioMmio { .. }))
        .count();
    let named = dsdt.windows(8).filter(|w| w == b"LNRO0005").count();
    assert_eq!(named, virtio, "virtio-mmio devices in the DSDT");
    let bridges = config
        .devices
        .iter()
        .filter(|d| matches!(d, AcpiDevice::PciHostBridge(_)))
        .count();
    assert_eq!(mcfgs, bridges, "one MCFG per (single) PCI host bridge");
    let hotplugs = config
        .devices
        .iter()
        .filter(|d| matches!(d, AcpiDevice::PciHotplug { .. }))
        .count();
    assert!(
        hotplugs == 0 || (hotplugs == 1 && bridges == 1),
        "hotplug needs one bridge"
    );
    let geds = dsdt.windows(4).filter(|w| w == b"GED1").count();
    assert_eq!(
        geds > 0,
        hotplugs == 1,
        "the hotplug event device iff hotplug"
    );
}

fn read(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr))
        .expect("the BIOS area is RAM");
    out
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

fn le64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().expect("8 bytes"))
}

/// The table at guest address `addr` (inside the BIOS area, its length
/// from its header, checksum zero, `signature` unless empty).
fn table<'a>(bios: &'a [u8], addr: u64, signature: &[u8]) -> &'a [u8] {
    assert!(
        (ACPI_START..ACPI_END - 36).contains(&addr),
        "table at {addr:#x} is outside the BIOS area"
    );
    let at = (addr - ACPI_START) as usize;
    let len = u32::from_le_bytes(bios[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    let t = bios
        .get(at..at + len)
        .unwrap_or_else(|| panic!("table at {addr:#x} runs past the BIOS area"));
    if !signature.is_empty() {
        assert_eq!(&t[..4], signature, "table at {addr:#x}");
    }
    assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(&t[..4]));
    t
}

/// Local APIC entries (type 0) in a MADT.
fn local_apics(madt: &[u8]) -> usize {
    let mut at = 44;
    let mut n = 0;
    while at + 2 <= madt.len() {
        let (kind, len) = (madt[at], usize::from(madt[at + 1]));
        assert!(len >= 2, "MADT entry of length {len}");
        n += usize::from(kind == 0);
        at += len;
    }
    n
}
