//! Neutral x86_64 register and table types, so that `arch` computes guest
//! state without knowing the backend.

use std::fmt;

/// General-purpose registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Regs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// A segment register's hidden state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Segment {
    pub base: u64,
    pub limit: u32,
    pub selector: u16,
    /// Segment type (4 bits).
    pub type_: u8,
    pub present: bool,
    pub dpl: u8,
    /// Default operation size (D/B bit).
    pub db: bool,
    /// Code/data (true) or system (false) descriptor.
    pub s: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Granularity: limit in 4 KiB units.
    pub g: bool,
    pub avl: bool,
    pub unusable: bool,
}

/// GDTR or IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct DescriptorTable {
    pub base: u64,
    pub limit: u16,
}

/// Segment, control and descriptor-table registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SpecialRegs {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub tr: Segment,
    pub ldt: Segment,
    pub gdt: DescriptorTable,
    pub idt: DescriptorTable,
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
    pub efer: u64,
    pub apic_base: u64,
}

/// The FPU/SSE control state sie sets at boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FpuState {
    /// x87 control word.
    pub fcw: u16,
    /// SSE control and status.
    pub mxcsr: u32,
}

/// One CPUID leaf/sub-leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct CpuidEntry {
    pub function: u32,
    pub index: u32,
    /// Backend flags; [`CPUID_FLAG_SIGNIFICANT_INDEX`] when `index` matters.
    pub flags: u32,
    pub eax: u32,
    pub ebx: u32,
    pub ecx: u32,
    pub edx: u32,
}

/// `CpuidEntry::flags` bit: the sub-leaf index is significant.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;

/// One model-specific register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsrEntry {
    /// MSR index.
    pub index: u32,
    /// Value.
    pub data: u64,
}

/// The local APIC's 1 KiB register page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LapicState {
    /// Raw register bytes, as the APIC lays them out (register at offset N).
    pub regs: [u8; 1024],
}

impl Default for LapicState {
    fn default() -> Self {
        Self { regs: [0; 1024] }
    }
}

impl LapicState {
    /// Reads the 32-bit register at `offset` (e.g. 0x350 for LVT LINT0).
    /// Out-of-range offsets read as 0.
    pub fn reg(&self, offset: usize) -> u32 {
        self.regs
            .get(offset..offset + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .unwrap_or(0)
    }

    /// Writes the 32-bit register at `offset`; out-of-range offsets are ignored.
    pub fn set_reg(&mut self, offset: usize, value: u32) {
        if let Some(bytes) = self.regs.get_mut(offset..offset + 4) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    }
}

/// A compact register dump for error messages (e.g. after a triple fault):
/// `rip`, `rsp`, `rflags`, then all general-purpose registers four a line.
impl fmt::Display for Regs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "rip={:#018x} rsp={:#018x} rflags={:#010x}",
            self.rip, self.rsp, self.rflags
        )?;
        let gprs = [
            ("rax", self.rax),
            ("rbx", self.rbx),
            ("rcx", self.rcx),
            ("rdx", self.rdx),
            ("rsi", self.rsi),
            ("rdi", self.rdi),
            ("rbp", self.rbp),
            ("r8", self.r8),
            ("r9", self.r9),
            ("r10", self.r10),
            ("r11", self.r11),
            ("r12", self.r12),
            ("r13", self.r13),
            ("r14", self.r14),
            ("r15", self.r15),
        ];
        for line in gprs.chunks(4) {
            let mut first = true;
            for (name, value) in line {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                write!(f, "{name:>3}={value:#018x}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// A compact dump of the state that says which mode the CPU was in:
/// control registers, EFER, the code and stack segments and the tables.
impl fmt::Display for SpecialRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cr0={:#010x} cr2={:#018x} cr3={:#018x} cr4={:#010x} efer={:#x}",
            self.cr0, self.cr2, self.cr3, self.cr4, self.efer
        )?;
        writeln!(
            f,
            "cs={:#06x} (base={:#x} l={} db={}) ss={:#06x} (base={:#x})",
            self.cs.selector,
            self.cs.base,
            u8::from(self.cs.l),
            u8::from(self.cs.db),
            self.ss.selector,
            self.ss.base
        )?;
        writeln!(
            f,
            "gdt={:#x}/{:#x} idt={:#x}/{:#x}",
            self.gdt.base, self.gdt.limit, self.idt.base, self.idt.limit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_dump_names_every_register() {
        let regs = Regs {
            rip: 0x1000,
            r15: 0xdead,
            ..Default::default()
        };
        let dump = regs.to_string();
        assert!(dump.contains("rip=0x0000000000001000"));
        assert!(dump.contains("r15=0x000000000000dead"));
        for name in [
            "rsp", "rflags", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8=",
        ] {
            assert!(dump.contains(name), "{name} missing in {dump}");
        }
        assert_eq!(dump.lines().count(), 5);
    }

    #[test]
    fn sregs_dump_shows_control_registers_and_selectors() {
        let mut sregs = SpecialRegs {
            cr0: 0x11,
            cr2: 0xbad,
            efer: 0x500,
            ..Default::default()
        };
        sregs.cs.selector = 0x10;
        sregs.ss.selector = 0x18;
        let dump = sregs.to_string();
        assert!(dump.contains("cr0=0x00000011"));
        assert!(dump.contains("cr2=0x0000000000000bad"));
        assert!(dump.contains("efer=0x500"));
        assert!(dump.contains("cs=0x0010"));
        assert!(dump.contains("ss=0x0018"));
    }

    #[test]
    fn lapic_registers_round_trip_and_ignore_bad_offsets() {
        let mut lapic = LapicState::default();
        lapic.set_reg(0x350, 0x700);
        assert_eq!(lapic.reg(0x350), 0x700);
        lapic.set_reg(1022, 1);
        assert_eq!(lapic.reg(1022), 0);
    }
}

/// What a debugger arms on a vCPU ([`crate::Vcpu::set_guest_debug`]). The
/// default disarms everything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// Stop after every instruction.
    pub single_step: bool,
    /// Stop at `int3` instead of giving it to the guest.
    pub sw_breakpoints: bool,
    /// DR0-DR3: the breakpoint and watchpoint addresses (guest-virtual).
    pub addresses: [u64; 4],
    /// DR7: which of them are enabled, and for what (0: none).
    pub dr7: u64,
}
