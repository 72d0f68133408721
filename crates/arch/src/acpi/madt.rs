//! The MADT: one enabled local APIC per vCPU (ACPI processor id = APIC id
//! = index), the I/O APIC, and the PC's timer override (ISA IRQ 0 → GSI 2).
//! Built by hand on `acpi_tables::sdt::Sdt` because acpi_tables' MADT cannot
//! set PCAT_COMPAT nor hold interrupt source overrides.

use acpi_tables::sdt::Sdt;

use super::{AcpiError, OEM_ID, Result};
use crate::layout::{IOAPIC_ADDR, LAPIC_ADDR};

/// MADT revision of ACPI 6.x.
const REVISION: u8 = 5;
/// Header plus local APIC address and flags.
const FIXED_LEN: u32 = 44;
/// Flags: the platform also has dual 8259 PICs (Linux masks them when it
/// switches to the I/O APIC).
const PCAT_COMPAT: u32 = 1;
/// APIC ids are 8 bits in xAPIC entries and 0xff is the broadcast id.
pub const MAX_VCPUS: u32 = 254;

const TYPE_LOCAL_APIC: u8 = 0;
const TYPE_IO_APIC: u8 = 1;
const TYPE_SOURCE_OVERRIDE: u8 = 2;
const LOCAL_APIC_ENABLED: u32 = 1;
/// MPS INTI flags: active high (01) and edge triggered (01 << 2).
const EDGE_ACTIVE_HIGH: u16 = 0x5;

/// The I/O APIC id: the first id after the vCPUs' APIC ids, so no id is
/// shared even by readers that treat both as one namespace.
pub fn ioapic_id(vcpus: u32) -> u8 {
    vcpus.min(MAX_VCPUS) as u8
}

/// Builds the MADT for `vcpus` vCPUs.
pub fn build(vcpus: u32) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(AcpiError::VcpuCount(vcpus));
    }
    let mut sdt = Sdt::new(*b"APIC", FIXED_LEN, REVISION, OEM_ID, *b"SIEAPIC ", 1);
    sdt.write_u32(36, LAPIC_ADDR as u32);
    sdt.write_u32(40, PCAT_COMPAT);

    let mut body = Vec::with_capacity(vcpus as usize * 8 + 12 + 10);
    for id in 0..vcpus as u8 {
        body.extend_from_slice(&[TYPE_LOCAL_APIC, 8, id, id]);
        body.extend_from_slice(&LOCAL_APIC_ENABLED.to_le_bytes());
    }
    body.extend_from_slice(&[TYPE_IO_APIC, 12, ioapic_id(vcpus), 0]);
    body.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes()); // GSI base
    // The PIT drives ISA IRQ 0, which the I/O APIC has on pin 2.
    body.extend_from_slice(&[TYPE_SOURCE_OVERRIDE, 10, 0, 0]);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&EDGE_ACTIVE_HIGH.to_le_bytes());
    sdt.append_slice(&body);
    Ok(sdt.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, bytes) of each interrupt controller structure.
    fn structures(madt: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = FIXED_LEN as usize;
        while at < madt.len() {
            let len = usize::from(madt[at + 1]);
            out.push((madt[at], &madt[at..at + len]));
            at += len;
        }
        out
    }

    #[test]
    fn one_enabled_local_apic_per_vcpu_then_ioapic_and_override() {
        let madt = build(3).unwrap();
        assert_eq!(&madt[..4], b"APIC");
        assert_eq!(
            u32::from_le_bytes(madt[4..8].try_into().unwrap()) as usize,
            madt.len()
        );
        assert_eq!(madt.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(&madt[36..40], &0xfee0_0000u32.to_le_bytes());
        assert_eq!(&madt[40..44], &1u32.to_le_bytes());
        let s = structures(&madt);
        assert_eq!(s.len(), 5);
        for (i, (kind, bytes)) in s[..3].iter().enumerate() {
            assert_eq!(*kind, TYPE_LOCAL_APIC);
            assert_eq!(bytes, &[0, 8, i as u8, i as u8, 1, 0, 0, 0]);
        }
        assert_eq!(s[3].1, &[1, 12, 3, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0]);
        assert_eq!(s[4].1, &[2, 10, 0, 0, 2, 0, 0, 0, 5, 0]);
    }

    #[test]
    fn vcpu_counts_outside_xapic_range_are_rejected() {
        assert!(matches!(build(0), Err(AcpiError::VcpuCount(0))));
        assert!(matches!(build(255), Err(AcpiError::VcpuCount(255))));
        assert_eq!(structures(&build(254).unwrap()).len(), 256);
    }
}
