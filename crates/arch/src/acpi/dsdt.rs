//! The DSDT: AML device objects for what Linux cannot discover (virtio-mmio
//! slots, the pvpanic port, the UARTs, the keyboard controller, the PCI host
//! bridge: see `pci.rs`, and its hotplug slots: `pci_hotplug.rs`), each with
//! the resources the VMM's device manager gave it: nothing here knows an
//! address or an interrupt line of its own.
//!
//! virtio-mmio interrupts are described **edge-triggered, active-high**:
//! sie signals them through KVM irqfds without a resample fd, which pulse
//! the I/O APIC pin; a level-triggered pin would need the resample path to
//! lower it. Linux's virtio-mmio driver works with either (it reads and
//! acknowledges the interrupt status register), and Firecracker describes
//! its devices the same way.

use acpi_tables::Aml;
use acpi_tables::aml::{
    Device, EISAName, IO, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, Scope,
};
use acpi_tables::sdt::Sdt;

use super::{AcpiConfig, AcpiDevice, AcpiError, OEM_ID, Result};

/// Revision 2: 64-bit AML integers.
const REVISION: u8 = 2;
const HEADER_LEN: u32 = 36;
/// AML names are four characters: "V" and three hex digits.
const MAX_VIRTIO_DEVICES: usize = 0x1000;

/// `Interrupt(ResourceConsumer, Edge, ActiveHigh, Exclusive)`.
fn edge_high(irq: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, irq)
}

/// Builds the DSDT for `config`.
pub fn build(config: &AcpiConfig) -> Result<Vec<u8>> {
    let virtio_count = config
        .devices
        .iter()
        .filter(|d| matches!(d, AcpiDevice::VirtioMmio { .. }))
        .count();
    if virtio_count > MAX_VIRTIO_DEVICES {
        return Err(AcpiError::TooManyVirtioDevices(virtio_count));
    }
    // Devices are encoded one by one into `body`, so each one's resources
    // can be dropped before the next is built.
    let mut body = Vec::new();
    let mut serial_uid = 0u8;
    let mut virtio_index = 0usize;
    let mut hotplug = None;
    for device in &config.devices {
        match *device {
            AcpiDevice::Serial { port, irq } => {
                serial_uid = serial_uid.saturating_add(1);
                serial(&mut body, serial_uid, port, irq);
            }
            AcpiDevice::Keyboard {
                data_port,
                command_port,
                irq,
            } => keyboard(&mut body, data_port, command_port, irq),
            AcpiDevice::PvPanic { port } => pvpanic(&mut body, port),
            AcpiDevice::VmGenId { addr, irq } => vmgenid(&mut body, addr, irq),
            AcpiDevice::VirtioMmio { addr, len, irq } => {
                virtio_mmio(&mut body, virtio_index, addr, len, irq)?;
                virtio_index += 1;
            }
            AcpiDevice::PciHostBridge(bridge) => super::pci::host_bridge(&mut body, &bridge)?,
            AcpiDevice::PciHotplug { port, irq } => {
                if hotplug.replace((port, irq)).is_some() {
                    return Err(AcpiError::PciHotplugWithoutBridge);
                }
            }
        }
    }
    // The slots live in PCI0's scope, so they follow it whatever the order.
    if let Some((port, irq)) = hotplug {
        let bridges = config
            .devices
            .iter()
            .filter(|d| matches!(d, AcpiDevice::PciHostBridge(_)))
            .count();
        if bridges != 1 {
            return Err(AcpiError::PciHotplugWithoutBridge);
        }
        super::pci_hotplug::describe(&mut body, port, irq);
    }

    let mut aml = Vec::with_capacity(body.len() + 16);
    Scope::new(Path::new("\\_SB_"), vec![&RawAml(body)]).to_aml_bytes(&mut aml);

    let mut sdt = Sdt::new(*b"DSDT", HEADER_LEN, REVISION, OEM_ID, *b"SIEDSDT ", 1);
    sdt.append_slice(&aml);
    Ok(sdt.as_slice().to_vec())
}

fn serial(body: &mut Vec<u8>, uid: u8, port: u16, irq: u32) {
    let io = IO::new(port, port, 1, 8);
    let irq = edge_high(irq);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    Device::new(
        Path::new(&format!("COM{}", uid.min(9))),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0501")),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(body);
}

/// The i8042's keyboard port. Linux's i8042 driver finds it through PNP0303
/// and takes its interrupt from here; probing the ports blindly instead, it
/// could not request IRQ 1 in a guest with an I/O APIC and failed with
/// EINVAL, so the guest never saw keys (Ctrl-Alt-Del).
fn keyboard(body: &mut Vec<u8>, data_port: u16, command_port: u16, irq: u32) {
    let data = IO::new(data_port, data_port, 1, 1);
    let command = IO::new(command_port, command_port, 1, 1);
    let irq = edge_high(irq);
    let crs = ResourceTemplate::new(vec![&data, &command, &irq]);
    Device::new(
        Path::new("PS2K"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0303")),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(body);
}

fn pvpanic(body: &mut Vec<u8>, port: u16) {
    let io = IO::new(port, port, 1, 1);
    let crs = ResourceTemplate::new(vec![&io]);
    Device::new(
        Path::new("PVPN"),
        vec![
            &Name::new(Path::new("_HID"), &"QEMU0001"),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(body);
}

/// `VGEN`, the generation id Linux's vmgenid driver reads at `ADDR` (a
/// package of the address's low and high 32 bits), and `GED0`, a Generic
/// Event Device whose interrupt runs `_EVT`, which notifies `VGEN`: the
/// driver then reads the id again and reseeds the kernel's RNG.
fn vmgenid(body: &mut Vec<u8>, addr: u64, irq: u32) {
    let low = (addr & 0xffff_ffff) as u32;
    let high = (addr >> 32) as u32;
    let address = Package::new(vec![&low, &high]);
    Device::new(
        Path::new("VGEN"),
        vec![
            &Name::new(Path::new("_HID"), &"VMGENCTR"),
            &Name::new(Path::new("_DDN"), &"VM_Gen_Counter"),
            &Name::new(Path::new("ADDR"), &address),
        ],
    )
    .to_aml_bytes(body);
    let interrupt = edge_high(irq);
    let crs = ResourceTemplate::new(vec![&interrupt]);
    let notify_value = 0x80u8;
    let target = Path::new("\\_SB_.VGEN");
    let notify = Notify::new(&target, &notify_value);
    Device::new(
        Path::new("GED0"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &crs),
            &Method::new(Path::new("_EVT"), 1, true, vec![&notify]),
        ],
    )
    .to_aml_bytes(body);
}

fn virtio_mmio(body: &mut Vec<u8>, index: usize, addr: u64, len: u64, irq: u32) -> Result<()> {
    let fits = len > 0 && addr.checked_add(len).is_some_and(|end| end <= 1 << 32);
    if !fits {
        return Err(AcpiError::VirtioMmioRange { addr, len });
    }
    // Both fit in 32 bits: the window ends at or below 4 GiB.
    let memory = Memory32Fixed::new(true, addr as u32, len as u32);
    let irq = edge_high(irq);
    let crs = ResourceTemplate::new(vec![&memory, &irq]);
    let uid = index as u32;
    Device::new(
        Path::new(&format!("V{index:03X}")),
        vec![
            &Name::new(Path::new("_HID"), &"LNRO0005"),
            &Name::new(Path::new("_UID"), &uid),
            &Name::new(Path::new("_CRS"), &crs),
        ],
    )
    .to_aml_bytes(body);
    Ok(())
}

/// Already-encoded AML, placed inside a scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn config() -> AcpiConfig {
        AcpiConfig {
            vcpus: 1,
            devices: vec![
                AcpiDevice::Serial {
                    port: 0x3f8,
                    irq: 4,
                },
                AcpiDevice::Keyboard {
                    data_port: 0x60,
                    command_port: 0x64,
                    irq: 1,
                },
                AcpiDevice::PvPanic { port: 0x505 },
                AcpiDevice::VirtioMmio {
                    addr: 0xc000_1000,
                    len: 0x1000,
                    irq: 5,
                },
                AcpiDevice::VirtioMmio {
                    addr: 0xc000_2000,
                    len: 0x1000,
                    irq: 6,
                },
            ],
        }
    }

    #[test]
    fn devices_carry_their_ids_and_resources() {
        let dsdt = build(&config()).unwrap();
        assert_eq!(&dsdt[..4], b"DSDT");
        assert_eq!(dsdt[8], REVISION);
        assert_eq!(
            u32::from_le_bytes(dsdt[4..8].try_into().unwrap()) as usize,
            dsdt.len()
        );
        assert_eq!(dsdt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // _HID strings, NUL-terminated as AML String objects.
        assert!(contains(&dsdt, b"\x0dLNRO0005\0"));
        assert!(contains(&dsdt, b"\x0dQEMU0001\0"));
        // EISAID("PNP0501") as a DWord constant.
        assert!(contains(&dsdt, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        assert!(contains(&dsdt, b"V000") && contains(&dsdt, b"V001"));
        assert!(contains(&dsdt, b"COM1") && contains(&dsdt, b"PVPN"));
        // Memory32Fixed(ReadWrite, 0xc0002000, 0x1000).
        assert!(contains(
            &dsdt,
            &[0x86, 9, 0, 1, 0x00, 0x20, 0x00, 0xc0, 0, 0x10, 0, 0]
        ));
        // Extended IRQ: consumer, edge, active high, exclusive; one IRQ, 6.
        assert!(contains(&dsdt, &[0x89, 6, 0, 0x03, 1, 6, 0, 0, 0]));
        // IO(Decode16, 0x505, 0x505, 1, 1).
        assert!(contains(&dsdt, &[0x47, 1, 0x05, 0x05, 0x05, 0x05, 1, 1]));
    }

    #[test]
    fn absent_devices_are_not_described() {
        let dsdt = build(&AcpiConfig {
            vcpus: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(!contains(&dsdt, b"LNRO0005"));
        assert!(!contains(&dsdt, b"QEMU0001"));
        assert!(!contains(&dsdt, b"COM1"));
    }

    fn with_second_virtio(addr: u64, len: u64) -> AcpiConfig {
        let mut c = config();
        c.devices[4] = AcpiDevice::VirtioMmio { addr, len, irq: 6 };
        c
    }

    #[test]
    fn virtio_mmio_above_4gib_is_rejected() {
        assert!(matches!(
            build(&with_second_virtio(0xffff_f800, 0x1000)),
            Err(AcpiError::VirtioMmioRange {
                addr: 0xffff_f800,
                ..
            })
        ));
        assert!(build(&with_second_virtio(1 << 32, 0x1000)).is_err());
        // Ends exactly at 4 GiB.
        assert!(build(&with_second_virtio(0xffff_f000, 0x1000)).is_ok());
        assert!(build(&with_second_virtio(0xffff_f000, 0)).is_err());
    }

    #[test]
    fn the_generation_id_and_its_event_device_are_described() {
        let dsdt = build(&AcpiConfig {
            vcpus: 1,
            devices: vec![AcpiDevice::VmGenId {
                addr: 0xdf000,
                irq: 9,
            }],
        })
        .unwrap();
        assert!(contains(&dsdt, b"\x0dVMGENCTR\0"));
        assert!(contains(&dsdt, b"\x0dACPI0013\0"));
        assert!(contains(&dsdt, b"ADDR") && contains(&dsdt, b"_EVT"));
        // ADDR: Package(2) { DWord 0xdf000, Zero or a small integer }.
        assert!(contains(&dsdt, &[0x0c, 0x00, 0xf0, 0x0d, 0x00]));
        // Notify (\_SB_.VGEN, 0x80).
        assert!(contains(
            &dsdt,
            &[
                0x86, b'\\', b'.', b'_', b'S', b'B', b'_', b'V', b'G', b'E', b'N'
            ]
        ));
        // The GED's interrupt: line 9, edge, active high.
        assert!(contains(&dsdt, &[0x89, 6, 0, 0x03, 1, 9, 0, 0, 0]));
    }

    #[test]
    fn resources_come_from_the_config_not_from_constants() {
        let dsdt = build(&AcpiConfig {
            vcpus: 1,
            devices: vec![AcpiDevice::Serial {
                port: 0x2f8,
                irq: 3,
            }],
        })
        .unwrap();
        // IO(Decode16, 0x2f8, 0x2f8, 1, 8) and IRQ 3.
        assert!(contains(&dsdt, &[0x47, 1, 0xf8, 0x02, 0xf8, 0x02, 1, 8]));
        assert!(contains(&dsdt, &[0x89, 6, 0, 0x03, 1, 3, 0, 0, 0]));
    }
}
