//! Conversions between kvm-bindings structs and the neutral types in
//! [`crate::x86`]. Plain field copies; KVM-only fields (padding, the pending
//! interrupt bitmap) are zero on the way in.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, KVM_MAX_MSR_ENTRIES, Msrs, kvm_cpuid_entry2, kvm_dtable, kvm_fpu,
    kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
};

use crate::x86::{
    CpuidEntry, DescriptorTable, FpuState, LapicState, MsrEntry, Regs, Segment, SpecialRegs,
};
use crate::{HvError, Result};

pub(crate) fn regs_from_kvm(r: &kvm_regs) -> Regs {
    Regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

pub(crate) fn regs_to_kvm(r: &Regs) -> kvm_regs {
    kvm_regs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: r.rflags,
    }
}

fn segment_from_kvm(s: &kvm_segment) -> Segment {
    Segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: s.present != 0,
        dpl: s.dpl,
        db: s.db != 0,
        s: s.s != 0,
        l: s.l != 0,
        g: s.g != 0,
        avl: s.avl != 0,
        unusable: s.unusable != 0,
    }
}

fn segment_to_kvm(s: &Segment) -> kvm_segment {
    kvm_segment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: s.type_,
        present: u8::from(s.present),
        dpl: s.dpl,
        db: u8::from(s.db),
        s: u8::from(s.s),
        l: u8::from(s.l),
        g: u8::from(s.g),
        avl: u8::from(s.avl),
        unusable: u8::from(s.unusable),
        padding: 0,
    }
}

fn table_from_kvm(t: &kvm_dtable) -> DescriptorTable {
    DescriptorTable {
        base: t.base,
        limit: t.limit,
    }
}

fn table_to_kvm(t: &DescriptorTable) -> kvm_dtable {
    kvm_dtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

pub(crate) fn sregs_from_kvm(s: &kvm_sregs) -> SpecialRegs {
    SpecialRegs {
        cs: segment_from_kvm(&s.cs),
        ds: segment_from_kvm(&s.ds),
        es: segment_from_kvm(&s.es),
        fs: segment_from_kvm(&s.fs),
        gs: segment_from_kvm(&s.gs),
        ss: segment_from_kvm(&s.ss),
        tr: segment_from_kvm(&s.tr),
        ldt: segment_from_kvm(&s.ldt),
        gdt: table_from_kvm(&s.gdt),
        idt: table_from_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
    }
}

/// The interrupt bitmap is left empty: the neutral type does not carry
/// pending interrupts (with the in-kernel irqchip KVM keeps them itself).
pub(crate) fn sregs_to_kvm(s: &SpecialRegs) -> kvm_sregs {
    kvm_sregs {
        cs: segment_to_kvm(&s.cs),
        ds: segment_to_kvm(&s.ds),
        es: segment_to_kvm(&s.es),
        fs: segment_to_kvm(&s.fs),
        gs: segment_to_kvm(&s.gs),
        ss: segment_to_kvm(&s.ss),
        tr: segment_to_kvm(&s.tr),
        ldt: segment_to_kvm(&s.ldt),
        gdt: table_to_kvm(&s.gdt),
        idt: table_to_kvm(&s.idt),
        cr0: s.cr0,
        cr2: s.cr2,
        cr3: s.cr3,
        cr4: s.cr4,
        cr8: s.cr8,
        efer: s.efer,
        apic_base: s.apic_base,
        interrupt_bitmap: [0; 4],
    }
}

/// Only the control words: everything else of the FPU starts zeroed, as
/// after FNINIT apart from the two words sie sets.
pub(crate) fn fpu_to_kvm(f: &FpuState) -> kvm_fpu {
    kvm_fpu {
        fcw: f.fcw,
        mxcsr: f.mxcsr,
        ..Default::default()
    }
}

pub(crate) fn fpu_from_kvm(f: &kvm_fpu) -> FpuState {
    FpuState {
        fcw: f.fcw,
        mxcsr: f.mxcsr,
    }
}

pub(crate) fn cpuid_entry_from_kvm(e: &kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

fn cpuid_entry_to_kvm(e: &CpuidEntry) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function: e.function,
        index: e.index,
        flags: e.flags,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
        ..Default::default()
    }
}

pub(crate) fn cpuid_to_kvm(entries: &[CpuidEntry]) -> Result<CpuId> {
    let kvm: Vec<kvm_cpuid_entry2> = entries.iter().map(cpuid_entry_to_kvm).collect();
    CpuId::from_entries(&kvm).map_err(|_| {
        HvError::Invalid(format!(
            "{} CPUID entries exceed the limit of {KVM_MAX_CPUID_ENTRIES}",
            entries.len()
        ))
    })
}

pub(crate) fn msrs_to_kvm(entries: &[MsrEntry]) -> Result<Msrs> {
    let kvm: Vec<kvm_msr_entry> = entries
        .iter()
        .map(|e| kvm_msr_entry {
            index: e.index,
            data: e.data,
            ..Default::default()
        })
        .collect();
    Msrs::from_entries(&kvm).map_err(|_| {
        HvError::Invalid(format!(
            "{} MSR entries exceed the limit of {KVM_MAX_MSR_ENTRIES}",
            entries.len()
        ))
    })
}

pub(crate) fn msr_entry_from_kvm(e: &kvm_msr_entry) -> MsrEntry {
    MsrEntry {
        index: e.index,
        data: e.data,
    }
}

pub(crate) fn lapic_from_kvm(l: &kvm_lapic_state) -> LapicState {
    let mut state = LapicState::default();
    for (dst, src) in state.regs.iter_mut().zip(l.regs.iter()) {
        *dst = src.to_ne_bytes()[0];
    }
    state
}

pub(crate) fn lapic_to_kvm(l: &LapicState) -> kvm_lapic_state {
    let mut kvm = kvm_lapic_state::default();
    for (dst, src) in kvm.regs.iter_mut().zip(l.regs.iter()) {
        *dst = std::ffi::c_char::from_ne_bytes([*src]);
    }
    kvm
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_sregs() -> SpecialRegs {
        let seg = |n: u64| Segment {
            base: n * 0x1000,
            limit: 0xffff_ffff,
            selector: (n * 8) as u16,
            type_: 0xb,
            present: true,
            dpl: 0,
            db: false,
            s: true,
            l: true,
            g: true,
            avl: false,
            unusable: false,
        };
        SpecialRegs {
            cs: seg(1),
            ds: seg(2),
            es: seg(3),
            fs: seg(4),
            gs: seg(5),
            ss: seg(6),
            tr: seg(7),
            ldt: seg(8),
            gdt: DescriptorTable {
                base: 0x500,
                limit: 0x1f,
            },
            idt: DescriptorTable {
                base: 0x520,
                limit: 0,
            },
            cr0: 0x8000_0011,
            cr2: 0,
            cr3: 0x9000,
            cr4: 0x20,
            cr8: 0,
            efer: 0x500,
            apic_base: 0xfee0_0900,
        }
    }

    #[test]
    fn sregs_round_trip_through_kvm_layout() {
        let sregs = sample_sregs();
        let kvm = sregs_to_kvm(&sregs);
        assert_eq!(kvm.cs.l, 1);
        assert_eq!(kvm.interrupt_bitmap, [0; 4]);
        assert_eq!(sregs_from_kvm(&kvm), sregs);
    }

    #[test]
    fn regs_round_trip_through_kvm_layout() {
        let regs = Regs {
            rax: 1,
            r15: 15,
            rip: 0x1000,
            rflags: 2,
            ..Default::default()
        };
        assert_eq!(regs_from_kvm(&regs_to_kvm(&regs)), regs);
    }

    #[test]
    fn fpu_sets_only_control_words() {
        let kvm = fpu_to_kvm(&FpuState {
            fcw: 0x37f,
            mxcsr: 0x1f80,
        });
        assert_eq!(
            (kvm.fcw, kvm.mxcsr, kvm.fsw, kvm.ftwx),
            (0x37f, 0x1f80, 0, 0)
        );
    }

    #[test]
    fn lapic_bytes_survive_the_signed_char_layout() {
        let mut lapic = LapicState::default();
        lapic.set_reg(0x350, 0x8000_0700);
        let back = lapic_from_kvm(&lapic_to_kvm(&lapic));
        assert_eq!(back.reg(0x350), 0x8000_0700);
    }

    #[test]
    fn too_many_cpuid_entries_are_rejected() {
        let entries = vec![CpuidEntry::default(); KVM_MAX_CPUID_ENTRIES + 1];
        assert!(matches!(cpuid_to_kvm(&entries), Err(HvError::Invalid(_))));
        let ok = cpuid_to_kvm(&[CpuidEntry {
            function: 7,
            eax: 3,
            ..Default::default()
        }])
        .unwrap();
        assert_eq!(cpuid_entry_from_kvm(&ok.as_slice()[0]).eax, 3);
    }

    #[test]
    fn msrs_convert_and_too_many_are_rejected() {
        let msrs = msrs_to_kvm(&[MsrEntry {
            index: 0x10,
            data: 5,
        }])
        .unwrap();
        assert_eq!(
            msr_entry_from_kvm(&msrs.as_slice()[0]),
            MsrEntry {
                index: 0x10,
                data: 5
            }
        );
        let many = vec![MsrEntry::default(); KVM_MAX_MSR_ENTRIES + 1];
        assert!(matches!(msrs_to_kvm(&many), Err(HvError::Invalid(_))));
    }
}
