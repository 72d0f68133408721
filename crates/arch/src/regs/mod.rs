//! Boot vCPU state: special registers for each entry mode (with the GDT and
//! page tables they point at), general registers, FPU, MSRs and LAPIC LVTs.
//! Everything is computed here and applied by the VMM through `sie-hv`.
//!
//! ```
//! # use sie_arch::regs::{boot_sregs, boot_regs, boot_fpu, boot_msrs};
//! # use sie_arch::loader::{LoadedKernel, EntryMode, KernelFormat};
//! # use vm_memory::GuestAddress;
//! let mem = sie_hv::GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
//! let kernel = LoadedKernel {
//!     entry: GuestAddress(0x100_0200),
//!     mode: EntryMode::Linux64,
//!     setup_header: None,
//!     end: GuestAddress(0x200_0000),
//!     format: KernelFormat::BzImage,
//! };
//! let sregs = boot_sregs(&mem, &kernel).unwrap();
//! let regs = boot_regs(&kernel, GuestAddress(sie_arch::layout::ZERO_PAGE_ADDR));
//! assert!(sregs.cs.l);
//! assert_eq!(regs.rip, 0x100_0200);
//! ```

pub mod gdt;
mod paging;

use sie_hv::GuestMemory;
use sie_hv::x86::{DescriptorTable, FpuState, LapicState, MsrEntry, Regs, SpecialRegs};
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{BOOT_GDT_ADDR, BOOT_IDT_ADDR, BOOT_STACK_POINTER, LAPIC_ADDR};
use crate::loader::{EntryMode, LoadedKernel};

/// Errors writing the boot CPU structures.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    /// A guest memory write failed (guest RAM too small for the layout).
    #[error("cannot write the {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, RegsError>;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const APIC_BASE_BSP: u64 = 1 << 8;
const APIC_BASE_ENABLE: u64 = 1 << 11;
/// RFLAGS bit 1 is reserved and always set; IF stays clear.
const RFLAGS_RESERVED: u64 = 1 << 1;

/// Writes the GDT and the identity page tables and returns the boot vCPU's
/// special registers for the Linux 64-bit entry: long mode, paging on,
/// CS = 0x10 (64-bit), DS/ES/FS/GS/SS = 0x18, the LAPIC enabled as BSP.
pub fn setup_long_mode(mem: &GuestMemory) -> Result<SpecialRegs> {
    write_gdt(mem, true)?;
    let pml4 =
        paging::write_identity_map(mem).map_err(|e| RegsError::Write("boot page tables", e))?;
    Ok(SpecialRegs {
        cr0: CR0_PE | CR0_ET | CR0_NE | CR0_PG,
        cr3: pml4.0,
        cr4: CR4_PAE,
        efer: EFER_LME | EFER_LMA,
        ..flat_sregs(true)
    })
}

/// Writes the GDT and returns the boot vCPU's special registers for the PVH
/// entry, per the PVH ABI: 32-bit protected mode with flat 4 GiB CS (0x10)
/// and data segments (0x18), a 32-bit TSS in TR, CR0 = PE (ET is fixed to
/// 1 by the CPU), paging off, CR4 = 0.
pub fn setup_pvh(mem: &GuestMemory) -> Result<SpecialRegs> {
    write_gdt(mem, false)?;
    Ok(SpecialRegs {
        cr0: CR0_PE | CR0_ET,
        ..flat_sregs(false)
    })
}

/// [`setup_long_mode`] or [`setup_pvh`], as `kernel`'s entry mode needs.
pub fn boot_sregs(mem: &GuestMemory, kernel: &LoadedKernel) -> Result<SpecialRegs> {
    match kernel.mode {
        EntryMode::Linux64 => setup_long_mode(mem),
        EntryMode::Pvh => setup_pvh(mem),
    }
}

fn write_gdt(mem: &GuestMemory, long: bool) -> Result<()> {
    let mut bytes = [0u8; gdt::GDT_ENTRIES * 8];
    for (slot, desc) in bytes.chunks_exact_mut(8).zip(gdt::table(long)) {
        slot.copy_from_slice(&desc.to_le_bytes());
    }
    mem.write_slice(&bytes, GuestAddress(BOOT_GDT_ADDR))
        .map_err(|e| RegsError::Write("GDT", e))
}

/// Segment, descriptor-table and APIC-base registers shared by both modes.
fn flat_sregs(long: bool) -> SpecialRegs {
    let data = gdt::data();
    SpecialRegs {
        cs: gdt::code(long),
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: gdt::tss(),
        ldt: gdt::ldt(),
        gdt: DescriptorTable {
            base: BOOT_GDT_ADDR,
            limit: (gdt::GDT_ENTRIES * 8 - 1) as u16,
        },
        // An empty IDT: the kernel installs its own before enabling
        // interrupts; an early exception triple-faults, which the VMM sees.
        idt: DescriptorTable {
            base: BOOT_IDT_ADDR,
            limit: 0,
        },
        // The VMM applies this whole struct, so the APIC base must be the
        // architectural one, enabled, or KVM would disable the LAPIC.
        apic_base: LAPIC_ADDR | APIC_BASE_ENABLE | APIC_BASE_BSP,
        ..Default::default()
    }
}

/// General registers at the kernel entry. Linux 64-bit: RIP = entry, RSI =
/// zero page, RSP/RBP = the boot stack. PVH: RIP = entry, RBX = start info.
pub fn boot_regs(kernel: &LoadedKernel, boot_info_addr: GuestAddress) -> Regs {
    match kernel.mode {
        EntryMode::Linux64 => Regs {
            rip: kernel.entry.0,
            rsi: boot_info_addr.0,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
        EntryMode::Pvh => Regs {
            rip: kernel.entry.0,
            rbx: boot_info_addr.0,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        },
    }
}

/// FPU state at reset: x87 control word 0x37f, MXCSR 0x1f80 (all
/// exceptions masked).
pub fn boot_fpu() -> FpuState {
    FpuState {
        fcw: 0x37f,
        mxcsr: 0x1f80,
    }
}

/// MSR indices sie sets at boot.
pub mod msr {
    /// IA32_TIME_STAMP_COUNTER.
    pub const TSC: u32 = 0x10;
    /// IA32_SYSENTER_CS.
    pub const SYSENTER_CS: u32 = 0x174;
    /// IA32_SYSENTER_ESP.
    pub const SYSENTER_ESP: u32 = 0x175;
    /// IA32_SYSENTER_EIP.
    pub const SYSENTER_EIP: u32 = 0x176;
    /// IA32_MISC_ENABLE.
    pub const MISC_ENABLE: u32 = 0x1a0;
    /// IA32_MTRR_DEF_TYPE.
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    /// IA32_STAR.
    pub const STAR: u32 = 0xc000_0081;
    /// IA32_LSTAR.
    pub const LSTAR: u32 = 0xc000_0082;
    /// IA32_CSTAR.
    pub const CSTAR: u32 = 0xc000_0083;
    /// IA32_FMASK (SYSCALL mask).
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// IA32_KERNEL_GS_BASE.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE.FAST_STRING: fast `rep movs/stos`; Linux expects the
/// firmware to have set it.
pub const MISC_ENABLE_FAST_STRING: u64 = 1 << 0;
/// MTRRs enabled (bit 11) with write-back (6) as the default memory type:
/// without it Linux treats all memory as uncached.
pub const MTRR_DEF_TYPE_WB_ENABLED: u64 = (1 << 11) | 6;

/// MSR values for every vCPU at boot: the syscall/sysenter MSRs, kernel GS
/// base and TSC cleared, fast strings on, MTRRs on with write-back default.
pub fn boot_msrs() -> Vec<MsrEntry> {
    let entry = |index, data| MsrEntry { index, data };
    vec![
        entry(msr::SYSENTER_CS, 0),
        entry(msr::SYSENTER_ESP, 0),
        entry(msr::SYSENTER_EIP, 0),
        entry(msr::STAR, 0),
        entry(msr::LSTAR, 0),
        entry(msr::CSTAR, 0),
        entry(msr::SYSCALL_MASK, 0),
        entry(msr::KERNEL_GS_BASE, 0),
        entry(msr::TSC, 0),
        entry(msr::MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        entry(msr::MTRR_DEF_TYPE, MTRR_DEF_TYPE_WB_ENABLED),
    ]
}

/// LVT LINT0 register offset.
pub const APIC_LVT_LINT0: usize = 0x350;
/// LVT LINT1 register offset.
pub const APIC_LVT_LINT1: usize = 0x360;
const DELIVERY_MODE_MASK: u32 = 0x700;
const DELIVERY_MODE_NMI: u32 = 0x4 << 8;
const DELIVERY_MODE_EXTINT: u32 = 0x7 << 8;

/// Wires the LAPIC's local interrupt pins as on a PC: LINT0 delivers the
/// PIC's interrupts (ExtINT), LINT1 delivers NMI. Other LVT bits are kept.
pub fn configure_lapic(lapic: &mut LapicState) {
    let lint0 = lapic.reg(APIC_LVT_LINT0);
    lapic.set_reg(
        APIC_LVT_LINT0,
        (lint0 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_EXTINT,
    );
    let lint1 = lapic.reg(APIC_LVT_LINT1);
    lapic.set_reg(
        APIC_LVT_LINT1,
        (lint1 & !DELIVERY_MODE_MASK) | DELIVERY_MODE_NMI,
    );
}

#[cfg(test)]
mod tests {
    use super::gdt::tests::decode;
    use super::*;
    use crate::layout::{PML4_ADDR, ZERO_PAGE_ADDR};
    use crate::loader::KernelFormat;
    use sie_hv::x86::Segment;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn kernel(mode: EntryMode) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode,
            setup_header: None,
            end: GuestAddress(0x200_0000),
            format: KernelFormat::Elf,
        }
    }

    /// Each segment register must match the GDT slot its selector names.
    fn assert_segments_match_gdt(mem: &GuestMemory, sregs: &SpecialRegs) {
        let segs: [&Segment; 7] = [
            &sregs.cs, &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss, &sregs.tr,
        ];
        for seg in segs {
            let desc: u64 = mem
                .read_obj(GuestAddress(sregs.gdt.base + u64::from(seg.selector)))
                .unwrap();
            assert_eq!(&decode(desc, seg.selector), seg);
            assert!(u64::from(seg.selector) + 7 <= u64::from(sregs.gdt.limit));
        }
    }

    #[test]
    fn long_mode_sregs_follow_the_linux_boot_protocol() {
        let mem = mem();
        let s = setup_long_mode(&mem).unwrap();
        assert_eq!(s.cs.selector, 0x10);
        assert_eq!(s.ds.selector, 0x18);
        assert_eq!(s.ss.selector, 0x18);
        assert!(s.cs.l && !s.cs.db);
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr3, PML4_ADDR);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer, EFER_LME | EFER_LMA);
        assert_eq!(s.apic_base, 0xfee0_0900);
        assert_segments_match_gdt(&mem, &s);
    }

    #[test]
    fn pvh_sregs_follow_the_pvh_abi() {
        let mem = mem();
        let s = setup_pvh(&mem).unwrap();
        assert_eq!(s.cr0, CR0_PE | CR0_ET);
        assert_eq!((s.cr3, s.cr4, s.efer), (0, 0, 0));
        assert!(!s.cs.l && s.cs.db);
        assert_eq!((s.cs.base, s.cs.limit), (0, 0xffff_ffff));
        assert_eq!((s.ds.base, s.ds.limit), (0, 0xffff_ffff));
        assert_eq!((s.tr.base, s.tr.limit, s.tr.type_), (0, 0x67, 0xb));
        assert_segments_match_gdt(&mem, &s);
    }

    #[test]
    fn boot_sregs_follow_the_entry_mode() {
        let mem = mem();
        assert!(boot_sregs(&mem, &kernel(EntryMode::Linux64)).unwrap().cs.l);
        assert!(!boot_sregs(&mem, &kernel(EntryMode::Pvh)).unwrap().cs.l);
    }

    #[test]
    fn tables_outside_memory_are_an_error() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            setup_long_mode(&mem),
            Err(RegsError::Write("GDT", _))
        ));
    }

    #[test]
    fn linux64_regs_point_rsi_at_the_zero_page() {
        let r = boot_regs(&kernel(EntryMode::Linux64), GuestAddress(ZERO_PAGE_ADDR));
        assert_eq!(r.rip, 0x100_0000);
        assert_eq!(r.rsi, ZERO_PAGE_ADDR);
        assert_eq!(r.rsp, BOOT_STACK_POINTER);
        assert_eq!(r.rflags, 2);
    }

    #[test]
    fn pvh_regs_point_rbx_at_start_info() {
        let r = boot_regs(&kernel(EntryMode::Pvh), GuestAddress(0x6000));
        assert_eq!((r.rip, r.rbx, r.rsi, r.rflags), (0x100_0000, 0x6000, 0, 2));
    }

    #[test]
    fn fpu_has_reset_values() {
        assert_eq!(
            boot_fpu(),
            FpuState {
                fcw: 0x37f,
                mxcsr: 0x1f80
            }
        );
    }

    #[test]
    fn msrs_enable_fast_strings_and_write_back_mtrrs() {
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(msr::MISC_ENABLE), Some(1));
        assert_eq!(get(msr::MTRR_DEF_TYPE), Some(0x806));
        assert_eq!(get(msr::LSTAR), Some(0));
        assert_eq!(get(msr::TSC), Some(0));
        assert_eq!(msrs.len(), 11);
    }

    #[test]
    fn lapic_lint_pins_get_extint_and_nmi_keeping_other_bits() {
        let mut lapic = LapicState::default();
        lapic.set_reg(APIC_LVT_LINT0, 0x1_0000 | 0x700 | 0x31);
        lapic.set_reg(APIC_LVT_LINT1, 0x1_0000);
        configure_lapic(&mut lapic);
        assert_eq!(lapic.reg(APIC_LVT_LINT0), 0x1_0000 | 0x700 | 0x31);
        assert_eq!(lapic.reg(APIC_LVT_LINT1), 0x1_0000 | 0x400);
        lapic.set_reg(APIC_LVT_LINT0, 0x400);
        configure_lapic(&mut lapic);
        assert_eq!(lapic.reg(APIC_LVT_LINT0), 0x700);
    }
}
