//! The boot GDT: segment definitions for both entry modes and their
//! encoding as descriptors. Selectors follow the Linux boot protocol, which
//! names `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18; PVH leaves selectors
//! open, so it uses the same ones.

use sie_hv::x86::Segment;

/// Code segment selector (`__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Data segment selector (`__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Task register selector.
pub const TSS_SELECTOR: u16 = 0x20;
/// Number of 8-byte GDT slots: null, null, code, data, and a TSS that takes
/// two slots in long mode.
pub const GDT_ENTRIES: usize = 6;

/// Execute/read, accessed.
const TYPE_CODE: u8 = 0xb;
/// Read/write, accessed.
const TYPE_DATA: u8 = 0x3;
/// Busy TSS (64-bit in long mode, 32-bit in protected mode: same number).
const TYPE_TSS_BUSY: u8 = 0xb;
/// LDT system descriptor type.
const TYPE_LDT: u8 = 0x2;
/// Size of a TSS minus one: what VM entry expects of a usable TR.
const TSS_LIMIT: u32 = 0x67;

fn flat(selector: u16, type_: u8, long: bool) -> Segment {
    Segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: true,
        dpl: 0,
        // D/B must be clear for a 64-bit code segment.
        db: !long,
        s: true,
        l: long,
        g: true,
        avl: false,
        unusable: false,
    }
}

/// The code segment: 64-bit for the Linux entry, 32-bit for PVH.
pub fn code(long: bool) -> Segment {
    flat(CODE_SELECTOR, TYPE_CODE, long)
}

/// The flat read/write data segment for DS, ES, FS, GS and SS.
pub fn data() -> Segment {
    flat(DATA_SELECTOR, TYPE_DATA, false)
}

/// The task register: a busy TSS at 0 (never used: no privilege changes or
/// task switches happen before the kernel loads its own).
pub fn tss() -> Segment {
    Segment {
        base: 0,
        limit: TSS_LIMIT,
        selector: TSS_SELECTOR,
        type_: TYPE_TSS_BUSY,
        present: true,
        ..Default::default()
    }
}

/// No LDT.
pub fn ldt() -> Segment {
    Segment {
        type_: TYPE_LDT,
        unusable: true,
        ..Default::default()
    }
}

/// Encodes `seg` as an 8-byte descriptor (the low half for system
/// descriptors in long mode, whose high half holds `base[63:32]`).
pub fn descriptor(seg: &Segment) -> u64 {
    let raw_limit = if seg.g { seg.limit >> 12 } else { seg.limit };
    let limit = u64::from(raw_limit & 0xf_ffff);
    let base = seg.base & 0xffff_ffff;
    let access = u64::from(seg.type_ & 0xf)
        | (u64::from(seg.s) << 4)
        | (u64::from(seg.dpl & 3) << 5)
        | (u64::from(seg.present) << 7);
    let flags = u64::from(seg.avl)
        | (u64::from(seg.l) << 1)
        | (u64::from(seg.db) << 2)
        | (u64::from(seg.g) << 3);
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (access << 40)
        | ((limit >> 16) << 48)
        | (flags << 52)
        | ((base >> 24) << 56)
}

/// The GDT image for one entry mode.
pub fn table(long: bool) -> [u64; GDT_ENTRIES] {
    let mut gdt = [0u64; GDT_ENTRIES];
    gdt[usize::from(CODE_SELECTOR / 8)] = descriptor(&code(long));
    gdt[usize::from(DATA_SELECTOR / 8)] = descriptor(&data());
    gdt[usize::from(TSS_SELECTOR / 8)] = descriptor(&tss());
    // Slot 5 is the TSS's upper half in long mode (`base[63:32]` = 0) and
    // unused in protected mode: zero either way.
    gdt
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Decodes a descriptor the way the CPU loads it into a segment register.
    pub(crate) fn decode(desc: u64, selector: u16) -> Segment {
        let raw_limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
        let g = (desc >> 55) & 1 == 1;
        Segment {
            base: ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24),
            limit: if g {
                (raw_limit << 12) | 0xfff
            } else {
                raw_limit
            },
            selector,
            type_: ((desc >> 40) & 0xf) as u8,
            s: (desc >> 44) & 1 == 1,
            dpl: ((desc >> 45) & 3) as u8,
            present: (desc >> 47) & 1 == 1,
            avl: (desc >> 52) & 1 == 1,
            l: (desc >> 53) & 1 == 1,
            db: (desc >> 54) & 1 == 1,
            g,
            unusable: false,
        }
    }

    #[test]
    fn known_descriptors_match_the_sdm_encoding() {
        // The classic flat 64-bit code, flat data and 32-bit code values.
        assert_eq!(descriptor(&code(true)), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(&data()), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(&code(false)), 0x00cf_9b00_0000_ffff);
        assert_eq!(descriptor(&tss()), 0x0000_8b00_0000_0067);
    }

    #[test]
    fn descriptors_decode_back_to_their_segments() {
        for long in [true, false] {
            let gdt = table(long);
            assert_eq!(gdt[0], 0);
            assert_eq!(gdt[1], 0);
            assert_eq!(decode(gdt[2], CODE_SELECTOR), code(long));
            assert_eq!(decode(gdt[3], DATA_SELECTOR), data());
            assert_eq!(decode(gdt[4], TSS_SELECTOR), tss());
            assert_eq!(gdt[5], 0);
        }
    }
}
