//! PCI hotplug as ACPI describes it, for Linux's `acpiphp` (built into
//! stock distribution kernels, `CONFIG_HOTPLUG_PCI_ACPI`):
//!
//! - in `PCI0`, one device per hotpluggable slot, `Snn_` for slots 1 to 31
//!   (`_ADR` = slot << 16, function 0; `_SUN` = slot), whose `_EJ0` writes
//!   the slot's bit to the controller's EJECT register: the guest has let
//!   go of the device. acpiphp treats a function with `_EJ0` as an
//!   ejectable slot and listens for notifications on it;
//! - in `PCI0`, the controller's registers as a SystemIO operation region
//!   (`HPUP`, `HPDN`, `HPEJ`: see `sie_pci::HotplugController`);
//! - `GED1`, a Generic Event Device (`ACPI0013`) whose interrupt runs
//!   `_EVT`: it reads UP and DOWN once each and sends `Notify (Snn, 1)`
//!   (device check: acpiphp rescans the slot and binds a driver) or
//!   `Notify (Snn, 3)` (eject request: acpiphp unbinds and removes the
//!   device, then runs `_EJ0`) for each slot bit set.
//!
//! Emitted after `PCI0` (the `Scope` refers to it).

use acpi_tables::Aml;
use acpi_tables::aml::{
    And, Device, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, If, Interrupt,
    Local, Method, Name, Notify, OpRegion, OpRegionSpace, Path, ResourceTemplate, Scope, Store,
    Zero,
};

/// First and last hotpluggable slot (slot 0 is the host bridge).
const SLOTS: std::ops::RangeInclusive<u8> = 1..=31;
/// Notify values (ACPI 6.5, 5.6.6): device check and eject request.
const DEVICE_CHECK: u8 = 1;
const EJECT_REQUEST: u8 = 3;
/// Bytes of the controller's register block.
const REGISTERS_LEN: u8 = 16;

fn slot_path(slot: u8) -> Path {
    Path::new(&format!("\\_SB_.PCI0.S{slot:02X}_"))
}

/// Appends the slots, the register region and `GED1` to the DSDT body.
pub fn describe(body: &mut Vec<u8>, port: u16, irq: u32) {
    let region_base = u32::from(port);
    let region = OpRegion::new(
        Path::new("HPRG"),
        OpRegionSpace::SystemIO,
        &region_base,
        &REGISTERS_LEN,
    );
    let fields = Field::new(
        Path::new("HPRG"),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"HPUP", 32),
            FieldEntry::Named(*b"HPDN", 32),
            FieldEntry::Named(*b"HPEJ", 32),
        ],
    );
    let slots: Vec<Vec<u8>> = SLOTS.map(slot_device).collect();
    let slots: Vec<RawAml> = slots.into_iter().map(RawAml).collect();
    let mut children: Vec<&dyn Aml> = vec![&region, &fields];
    children.extend(slots.iter().map(|s| s as &dyn Aml));
    Scope::new(Path::new("\\_SB_.PCI0"), children).to_aml_bytes(body);

    // _EVT: Local0 = HPUP; Local1 = HPDN; then per slot
    //   If (Local0 & bit) { Notify (Snn, 1) }  If (Local1 & bit) { Notify (Snn, 3) }
    let up = Path::new("\\_SB_.PCI0.HPUP");
    let down = Path::new("\\_SB_.PCI0.HPDN");
    let read_up = Store::new(&Local(0), &up);
    let read_down = Store::new(&Local(1), &down);
    let mut checks = Vec::new();
    for slot in SLOTS {
        let mut aml = Vec::new();
        let bit = 1u32 << slot;
        let target = slot_path(slot);
        for (local, value) in [(0, DEVICE_CHECK), (1, EJECT_REQUEST)] {
            let local = Local(local);
            let set = And::new(&Zero {}, &local, &bit);
            let notify = Notify::new(&target, &value);
            If::new(&set, vec![&notify]).to_aml_bytes(&mut aml);
        }
        checks.push(RawAml(aml));
    }
    let mut evt: Vec<&dyn Aml> = vec![&read_up, &read_down];
    evt.extend(checks.iter().map(|c| c as &dyn Aml));
    let interrupt = Interrupt::new(true, true, false, false, irq);
    let crs = ResourceTemplate::new(vec![&interrupt]);
    Device::new(
        Path::new("GED1"),
        vec![
            &Name::new(Path::new("_HID"), &"ACPI0013"),
            &Name::new(Path::new("_UID"), &1u8),
            &Name::new(Path::new("_CRS"), &crs),
            &Method::new(Path::new("_EVT"), 1, true, evt),
        ],
    )
    .to_aml_bytes(body);
}

/// `Device (Snn_) { _ADR, _SUN, Method (_EJ0, 1) { HPEJ = bit } }`.
fn slot_device(slot: u8) -> Vec<u8> {
    let address = u32::from(slot) << 16;
    let sun = u32::from(slot);
    let bit = 1u32 << slot;
    let eject_register = Path::new("\\_SB_.PCI0.HPEJ");
    let release = Store::new(&eject_register, &bit);
    let mut aml = Vec::new();
    Device::new(
        Path::new(&format!("S{slot:02X}_")),
        vec![
            &Name::new(Path::new("_ADR"), &address),
            &Name::new(Path::new("_SUN"), &sun),
            &Method::new(Path::new("_EJ0"), 1, false, vec![&release]),
        ],
    )
    .to_aml_bytes(&mut aml);
    aml
}

/// Already-encoded AML.
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

    fn body() -> Vec<u8> {
        let mut body = Vec::new();
        describe(&mut body, 0xae00, 11);
        body
    }

    #[test]
    fn every_slot_but_the_bridge_is_described_with_its_address_and_number() {
        let body = body();
        for slot in 1..=31u8 {
            let name = format!("S{slot:02X}_");
            assert!(contains(&body, name.as_bytes()), "{name}");
        }
        assert!(!contains(&body, b"S00_"));
        // Slot 0x1f: _ADR DWord 0x001f0000, _SUN 0x1f (a byte constant).
        assert!(contains(&body, b"_ADR\x0c\x00\x00\x1f\x00"));
        assert!(contains(&body, b"_SUN\x0a\x1f"));
        // _EJ0 of slot 5: Store (0x20, \_SB_.PCI0.HPEJ).
        assert!(contains(&body, b"_EJ0"));
        assert!(contains(&body, b"\x70\x0a\x20\\\x2f\x03_SB_PCI0HPEJ"));
    }

    #[test]
    fn the_register_block_is_a_system_io_region_of_three_dwords() {
        let body = body();
        // OperationRegion (HPRG, SystemIO, 0xae00, 16).
        assert!(contains(&body, b"\x5b\x80HPRG\x01\x0b\x00\xae\x0a\x10"));
        // Field (HPRG, DWordAcc, NoLock, WriteAsZeros) { HPUP 32, HPDN 32, HPEJ 32 }.
        assert!(contains(&body, b"HPRG\x43HPUP\x20HPDN\x20HPEJ\x20"));
    }

    #[test]
    fn the_event_device_notifies_each_slot_with_device_check_or_eject() {
        let body = body();
        assert!(contains(&body, b"\x0dACPI0013\0"));
        assert!(contains(&body, b"GED1") && contains(&body, b"_EVT"));
        // Its interrupt: line 11, edge, active high.
        assert!(contains(&body, &[0x89, 6, 0, 0x03, 1, 11, 0, 0, 0]));
        // Notify (\_SB_.PCI0.S05, 1) and (…, 3).
        assert!(contains(&body, b"\x86\\\x2f\x03_SB_PCI0S05_\x01"));
        assert!(contains(&body, b"\x86\\\x2f\x03_SB_PCI0S05_\x0a\x03"));
        // Local0 = HPUP, Local1 = HPDN.
        assert!(contains(&body, b"\x70\\\x2f\x03_SB_PCI0HPUP\x60"));
        assert!(contains(&body, b"\x70\\\x2f\x03_SB_PCI0HPDN\x61"));
        // If (And (Local0, 0x20, Zero)) for slot 5.
        assert!(contains(&body, b"\x7b\x60\x0a\x20\x00"));
    }
}
