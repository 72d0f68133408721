//! The PCI host bridge as ACPI describes it: the MCFG table (where the
//! ECAM configuration window lies, segment 0) and, in the DSDT, `PCI0`
//! (`PNP0A08`, a PCIe root bridge, compatible with `PNP0A03`) with its bus
//! range, the 0xCF8 configuration ports and the 32-bit and 64-bit windows
//! BARs live in, an `_OSC` that grants the OS every PCIe feature it asks
//! for (the VMM keeps none for itself), and `MRES` (`PNP0C02`) reserving
//! the ECAM window, which Linux needs to trust the MCFG.
//!
//! With `intx_gsis`, a `_PRT` routes INTx: pin P of the device in slot S
//! raises GSI `intx_gsis[(S + P) % 4]` (the usual swizzle; level-triggered,
//! active-low as ACPI has GSI entries), for passed-through devices that
//! interrupt through INTx. sie's own devices use MSI-X only. The FADT's
//! "MSI not supported" boot flag stays clear, so Linux enables MSI.

use acpi_tables::Aml;
use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, Arg, Device, EISAName, Else, Equal, IO, If, Memory32Fixed,
    Method, Name, Or, Package, PackageBuilder, Path, ResourceTemplate, Return, Uuid,
};
use acpi_tables::mcfg::MCFG;

use super::{AcpiError, OEM_ID, Result};

/// Bytes of ECAM configuration space per bus (32 devices × 8 functions × 4 KiB).
pub const ECAM_BUS_SIZE: u64 = 1 << 20;
/// The `_OSC` UUID of PCI host bridges (PCI Firmware Specification 3.x, 4.5).
const PCI_OSC_UUID: &str = "33DB4D5B-1FF7-401C-9657-7441C03DD766";
/// `_OSC` status bit: the UUID is not one the platform knows.
const OSC_UNRECOGNIZED_UUID: u8 = 1 << 2;

/// A PCI host bridge (segment 0) and the resources the VMM gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciHostBridge {
    /// Guest-physical base of the ECAM window for bus 0.
    pub ecam_base: u64,
    /// The last bus number (the first is 0): ECAM covers `(last_bus + 1)` MiB.
    pub last_bus: u8,
    /// The 32-bit BAR window: base and length in bytes (below 4 GiB).
    pub mmio32: (u64, u64),
    /// The 64-bit BAR window: base and length in bytes.
    pub mmio64: (u64, u64),
    /// The GSIs INTx pins A-D are swizzled onto (a `_PRT`), if any.
    pub intx_gsis: Option<[u32; 4]>,
}

/// The GSI that pin `pin` (0 = INTA) of the device in `slot` raises when
/// INTx is routed through `gsis` (the swizzle the `_PRT` describes).
pub fn intx_gsi(gsis: [u32; 4], slot: u8, pin: u8) -> u32 {
    gsis[(usize::from(slot) + usize::from(pin)) % 4]
}

/// `_PRT`: for every slot 1..32 and pin, its GSI.
fn routing_table(gsis: [u32; 4]) -> PackageBuilder {
    let mut table = PackageBuilder::new();
    for slot in 1..32u8 {
        for pin in 0..4u8 {
            // Package { slot address (function: any), pin, source: none, GSI }
            let address = (u32::from(slot) << 16) | 0xffff;
            let gsi = intx_gsi(gsis, slot, pin);
            table.add_element(&Package::new(vec![&address, &pin, &0u8, &gsi]));
        }
    }
    table
}

impl PciHostBridge {
    /// The ECAM window's length in bytes.
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.last_bus) + 1) * ECAM_BUS_SIZE
    }

    fn check(&self) -> Result<()> {
        let below_4g = |base: u64, len: u64| {
            len > 0 && base.checked_add(len).is_some_and(|end| end <= 1 << 32)
        };
        let ok = below_4g(self.ecam_base, self.ecam_size())
            && below_4g(self.mmio32.0, self.mmio32.1)
            && self.mmio64.1 > 0
            && self.mmio64.0.checked_add(self.mmio64.1).is_some();
        if ok {
            Ok(())
        } else {
            Err(AcpiError::PciWindows(*self))
        }
    }
}

/// The MCFG table for `bridge`.
pub fn mcfg(bridge: &PciHostBridge) -> Result<Vec<u8>> {
    bridge.check()?;
    let mut table = MCFG::new(OEM_ID, *b"SIEMCFG ", 1);
    table.add_ecam(bridge.ecam_base, 0, 0, bridge.last_bus);
    let mut bytes = Vec::new();
    table.to_aml_bytes(&mut bytes);
    Ok(bytes)
}

/// Appends `PCI0` and `MRES` to the DSDT body.
pub fn host_bridge(body: &mut Vec<u8>, bridge: &PciHostBridge) -> Result<()> {
    bridge.check()?;
    // check() keeps every 32-bit value below 4 GiB.
    let (m32_base, m32_len) = (bridge.mmio32.0 as u32, bridge.mmio32.1 as u32);
    let (m64_base, m64_len) = bridge.mmio64;
    let buses = AddressSpace::<u16>::new_bus_number(0, u16::from(bridge.last_bus));
    let config_ports = IO::new(0xcf8, 0xcf8, 1, 8);
    let mmio32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m32_base,
        m32_base + (m32_len - 1),
        None,
    );
    let mmio64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        m64_base,
        m64_base + (m64_len - 1),
        None,
    );
    let crs = ResourceTemplate::new(vec![&buses, &config_ports, &mmio32, &mmio64]);

    // Method (_OSC, 4) { CreateDWordField (Arg3, 0, CDW1)
    //   If (Arg0 == PCI UUID) { Return (Arg3) }   // every control granted
    //   Else { CDW1 |= unrecognized UUID; Return (Arg3) } }
    let uuid = Uuid::new(PCI_OSC_UUID);
    let cdw1 = Path::new("CDW1");
    let create_cdw1 = acpi_tables::aml::CreateDWordField::new(&cdw1, &Arg(3), &0u8);
    let is_pci = Equal::new(&Arg(0), &uuid);
    let grant = Return::new(&Arg(3));
    let unrecognized = Or::new(&cdw1, &cdw1, &OSC_UNRECOGNIZED_UUID);
    let if_pci = If::new(&is_pci, vec![&grant]);
    let otherwise = Else::new(vec![&unrecognized, &grant]);
    let osc = Method::new(
        Path::new("_OSC"),
        4,
        false,
        vec![&create_cdw1, &if_pci, &otherwise],
    );
    let hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0A08"));
    let cid = Name::new(Path::new("_CID"), &EISAName::new("PNP0A03"));
    let adr = Name::new(Path::new("_ADR"), &0u8);
    let seg = Name::new(Path::new("_SEG"), &0u8);
    let uid = Name::new(Path::new("_UID"), &0u8);
    let bbn = Name::new(Path::new("_BBN"), &0u8);
    let crs = Name::new(Path::new("_CRS"), &crs);
    let mut children: Vec<&dyn Aml> = vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs, &osc];
    let prt = bridge
        .intx_gsis
        .map(|gsis| Name::new(Path::new("_PRT"), &routing_table(gsis)));
    if let Some(prt) = &prt {
        children.push(prt);
    }
    Device::new(Path::new("PCI0"), children).to_aml_bytes(body);

    // ECAM fits in 32 bits (check()).
    let ecam = Memory32Fixed::new(false, bridge.ecam_base as u32, bridge.ecam_size() as u32);
    let reserved = ResourceTemplate::new(vec![&ecam]);
    Device::new(
        Path::new("MRES"),
        vec![
            &Name::new(Path::new("_HID"), &EISAName::new("PNP0C02")),
            &Name::new(Path::new("_UID"), &0u8),
            &Name::new(Path::new("_CRS"), &reserved),
        ],
    )
    .to_aml_bytes(body);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn bridge() -> PciHostBridge {
        PciHostBridge {
            ecam_base: 0xe000_0000,
            last_bus: 0,
            mmio32: (0xd000_0000, 0x1000_0000),
            mmio64: (0x40_0000_0000, 0x40_0000_0000),
            intx_gsis: None,
        }
    }

    #[test]
    fn intx_is_routed_only_when_asked_and_swizzled() {
        let mut plain = Vec::new();
        host_bridge(&mut plain, &bridge()).unwrap();
        assert!(!contains(&plain, b"_PRT"));
        let mut routed = Vec::new();
        let with_intx = PciHostBridge {
            intx_gsis: Some([10, 11, 12, 13]),
            ..bridge()
        };
        host_bridge(&mut routed, &with_intx).unwrap();
        assert!(contains(&routed, b"_PRT"));
        // Package (11 bytes, 4 elements) { 0x0003_ffff, Zero (pin A), Zero (no source), 13 }.
        assert!(contains(
            &routed,
            &[
                0x12, 0x0b, 0x04, 0x0c, 0xff, 0xff, 0x03, 0x00, 0x00, 0x00, 0x0a, 13
            ]
        ));
        assert_eq!(intx_gsi([10, 11, 12, 13], 3, 0), 13);
        assert_eq!(intx_gsi([10, 11, 12, 13], 3, 1), 10);
    }

    #[test]
    fn mcfg_names_the_ecam_window_for_segment_0_bus_0() {
        let table = mcfg(&bridge()).unwrap();
        assert_eq!(&table[..4], b"MCFG");
        assert_eq!(table.len(), 36 + 8 + 16);
        assert_eq!(
            u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize,
            table.len()
        );
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let entry = &table[44..60];
        assert_eq!(
            u64::from_le_bytes(entry[..8].try_into().unwrap()),
            0xe000_0000
        );
        assert_eq!(&entry[8..12], &[0, 0, 0, 0], "segment 0, buses 0-0");
    }

    #[test]
    fn the_host_bridge_has_its_ids_buses_ports_and_windows() {
        let mut body = Vec::new();
        host_bridge(&mut body, &bridge()).unwrap();
        assert!(contains(&body, b"PCI0") && contains(&body, b"MRES"));
        // EISAID("PNP0A08"), EISAID("PNP0A03"), EISAID("PNP0C02").
        assert!(contains(&body, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]));
        assert!(contains(&body, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]));
        assert!(contains(&body, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]));
        for name in [b"_SEG", b"_BBN", b"_UID", b"_CRS", b"_OSC"] {
            assert!(contains(&body, name), "{}", String::from_utf8_lossy(name));
        }
        // WordBusNumber 0-0: min 0, max 0, length 1.
        assert!(contains(
            &body,
            &[0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        ));
        // IO(Decode16, 0xcf8, 0xcf8, 1, 8).
        assert!(contains(&body, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]));
        // DWordMemory 0xd0000000-0xdfffffff.
        let mut dword = vec![0x87, 23, 0, 0, 0x0c, 0x01, 0, 0, 0, 0];
        dword.extend_from_slice(&0xd000_0000u32.to_le_bytes());
        dword.extend_from_slice(&0xdfff_ffffu32.to_le_bytes());
        assert!(contains(&body, &dword));
        // QWordMemory from 256 GiB, 256 GiB long.
        let mut qword = 0x40_0000_0000u64.to_le_bytes().to_vec();
        qword.extend_from_slice(&0x7f_ffff_ffffu64.to_le_bytes());
        assert!(contains(&body, &qword));
        // The ECAM window reserved: Memory32Fixed(ReadOnly, 0xe0000000, 1 MiB).
        assert!(contains(
            &body,
            &[0x86, 9, 0, 0, 0, 0, 0, 0xe0, 0, 0, 0x10, 0]
        ));
        // The PCI _OSC UUID as a buffer.
        assert!(contains(
            &body,
            &[0x5b, 0x4d, 0xdb, 0x33, 0xf7, 0x1f, 0x1c, 0x40]
        ));
    }

    #[test]
    fn windows_that_do_not_fit_are_refused() {
        let mut b = bridge();
        b.mmio32 = (0xf000_0000, 0x2000_0000);
        assert!(matches!(mcfg(&b), Err(AcpiError::PciWindows(_))));
        let mut b = bridge();
        b.ecam_base = 0xffff_0000;
        assert!(host_bridge(&mut Vec::new(), &b).is_err());
        let mut b = bridge();
        b.mmio64 = (u64::MAX - 10, 0x1000);
        assert!(host_bridge(&mut Vec::new(), &b).is_err());
        let mut b = bridge();
        b.mmio32.1 = 0;
        assert!(mcfg(&b).is_err());
    }
}
