//! The "QEMU" CPU-state note: each vCPU's general, segment, descriptor-table
//! and control registers in the layout QEMU's `dump-guest-memory` writes
//! (`QEMUCPUState`, version 1). `crash` reads it to find a Linux guest's
//! page tables (CR3) and IDT without help from the guest, which is how it
//! opens a dump of a kernel with KASLR; gdb ignores it.

use sie_hv::x86::{DescriptorTable, Regs, Segment, SpecialRegs};

/// The note's owner name, NUL included.
pub const NAME: &[u8; 5] = b"QEMU\0";
/// The note type QEMU uses for it (none).
pub const NOTE_TYPE: u32 = 0;
/// Bytes of the state: version and size, 18 registers, 10 segments of 24
/// bytes, `cr[5]`. (QEMU's optional `kernel_gs_base` is left out; readers
/// tell by `size`.)
pub const SIZE: usize = 8 + 18 * 8 + 10 * 24 + 5 * 8;

/// A segment's attributes where a descriptor's second dword keeps them
/// (type at bit 8, S 12, DPL 13, P 15, AVL 20, L 21, D/B 22, G 23), as QEMU
/// stores them.
fn attributes(segment: &Segment) -> u32 {
    u32::from(segment.type_ & 0xf) << 8
        | u32::from(segment.s) << 12
        | u32::from(segment.dpl & 3) << 13
        | u32::from(segment.present) << 15
        | u32::from(segment.avl) << 20
        | u32::from(segment.l) << 21
        | u32::from(segment.db) << 22
        | u32::from(segment.g) << 23
}

fn put_segment(out: &mut Vec<u8>, selector: u16, limit: u32, flags: u32, base: u64) {
    out.extend_from_slice(&u32::from(selector).to_le_bytes());
    out.extend_from_slice(&limit.to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&base.to_le_bytes());
}

fn put_table(out: &mut Vec<u8>, table: &DescriptorTable) {
    put_segment(out, 0, u32::from(table.limit), 0, table.base);
}

/// The note's descriptor for one vCPU's registers.
pub fn cpu_state(r: &Regs, s: &SpecialRegs) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIZE);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(SIZE as u32).to_le_bytes());
    for value in [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15, r.rip, r.rflags,
    ] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    for segment in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldt, &s.tr] {
        put_segment(
            &mut out,
            segment.selector,
            segment.limit,
            attributes(segment),
            segment.base,
        );
    }
    put_table(&mut out, &s.gdt);
    put_table(&mut out, &s.idt);
    for value in [s.cr0, 0, s.cr2, s.cr3, s.cr4] {
        out.extend_from_slice(&value.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn registers_land_at_qemus_offsets() {
        let mut regs = Regs::default();
        let mut sregs = SpecialRegs::default();
        regs.rax = 0xa;
        regs.rip = 0xffff_ffff_8100_0000;
        sregs.cs = Segment {
            selector: 0x10,
            type_: 0xb,
            s: true,
            present: true,
            l: true,
            g: true,
            limit: 0xffff_ffff,
            ..Segment::default()
        };
        sregs.idt = DescriptorTable {
            base: 0xfffffe00_00000000,
            limit: 0xfff,
        };
        sregs.cr3 = 0x1234_5000;
        let state = cpu_state(&regs, &sregs);
        assert_eq!(state.len(), SIZE);
        assert_eq!(state.len(), 432);
        assert_eq!(u32::from_le_bytes(state[0..4].try_into().unwrap()), 1);
        assert_eq!(u64_at(&state, 8), 0xa, "rax first");
        assert_eq!(u64_at(&state, 8 + 16 * 8), 0xffff_ffff_8100_0000, "rip");
        // cs: the first segment, after the 18 registers.
        let cs = 8 + 18 * 8;
        assert_eq!(state[cs], 0x10);
        let flags = u32::from_le_bytes(state[cs + 8..cs + 12].try_into().unwrap());
        assert_eq!(flags, 0xb << 8 | 1 << 12 | 1 << 15 | 1 << 21 | 1 << 23);
        // idt: the tenth segment; cr3: the fourth control register.
        let idt = cs + 9 * 24;
        assert_eq!(u64_at(&state, idt + 16), 0xfffffe00_00000000);
        assert_eq!(u64_at(&state, cs + 10 * 24 + 3 * 8), 0x1234_5000);
    }
}
