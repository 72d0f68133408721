//! [`SieX86_64`]: the register set gdb is told about. gdbstub's own
//! x86-64 architecture stops at the general, x87 and SSE registers; a
//! kernel debugger also wants the control registers, EFER, the segment
//! bases and limits and the descriptor tables. They follow the core
//! registers in the `g` packet, in the order of [`SYSTEM`], and the target
//! description ([`description`]) names them: `fs_base` and `gs_base` in
//! gdb's own `org.gnu.gdb.i386.segments` feature (gdb knows them as
//! `$fs_base`, `$gs_base`), the rest in a feature of sie's, which gdb shows
//! as extra registers (`$cr3`, `info registers cr0`).
//!
//! ```text
//! (gdb) p/x $cr3
//! (gdb) set $cr2 = 0x1234
//! ```

use std::fmt::Write;
use std::sync::OnceLock;

use gdbstub::arch::{Arch, Registers};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use sie_hv::x86::{Segment, SpecialRegs};

/// The `g` packet's bytes up to `mxcsr` (gdbstub's core x86-64 set).
const CORE_BYTES: usize = 0x218;

/// A segment register whose base or limit is one of [`SYSTEM`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg {
    Cs,
    Ss,
    Ds,
    Es,
    Fs,
    Gs,
}

impl Seg {
    fn of(self, sregs: &SpecialRegs) -> &Segment {
        match self {
            Seg::Cs => &sregs.cs,
            Seg::Ss => &sregs.ss,
            Seg::Ds => &sregs.ds,
            Seg::Es => &sregs.es,
            Seg::Fs => &sregs.fs,
            Seg::Gs => &sregs.gs,
        }
    }

    fn of_mut(self, sregs: &mut SpecialRegs) -> &mut Segment {
        match self {
            Seg::Cs => &mut sregs.cs,
            Seg::Ss => &mut sregs.ss,
            Seg::Ds => &mut sregs.ds,
            Seg::Es => &mut sregs.es,
            Seg::Fs => &mut sregs.fs,
            Seg::Gs => &mut sregs.gs,
        }
    }
}

/// Where a system register lives in [`SpecialRegs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Cr8,
    Efer,
    Base(Seg),
    Limit(Seg),
    GdtrBase,
    GdtrLimit,
    IdtrBase,
    IdtrLimit,
}

/// One register of [`SpecialRegs`] gdb reads and writes. Each is 64 bits
/// in the `g` packet; a limit holds fewer, and a wider value is refused.
#[derive(Debug, PartialEq, Eq)]
pub struct SystemReg {
    /// Its name in gdb (`$cr3`) and in `monitor set`.
    pub name: &'static str,
    field: Field,
}

const fn reg(name: &'static str, field: Field) -> SystemReg {
    SystemReg { name, field }
}

/// How many of [`SYSTEM`] belong to gdb's segments feature (the first).
const SEGMENT_FEATURE: usize = 2;

/// The system registers, in `g` packet order.
pub const SYSTEM: [SystemReg; 22] = [
    reg("fs_base", Field::Base(Seg::Fs)),
    reg("gs_base", Field::Base(Seg::Gs)),
    reg("cr0", Field::Cr0),
    reg("cr2", Field::Cr2),
    reg("cr3", Field::Cr3),
    reg("cr4", Field::Cr4),
    reg("cr8", Field::Cr8),
    reg("efer", Field::Efer),
    reg("cs_base", Field::Base(Seg::Cs)),
    reg("ss_base", Field::Base(Seg::Ss)),
    reg("ds_base", Field::Base(Seg::Ds)),
    reg("es_base", Field::Base(Seg::Es)),
    reg("cs_limit", Field::Limit(Seg::Cs)),
    reg("ss_limit", Field::Limit(Seg::Ss)),
    reg("ds_limit", Field::Limit(Seg::Ds)),
    reg("es_limit", Field::Limit(Seg::Es)),
    reg("fs_limit", Field::Limit(Seg::Fs)),
    reg("gs_limit", Field::Limit(Seg::Gs)),
    reg("gdtr_base", Field::GdtrBase),
    reg("gdtr_limit", Field::GdtrLimit),
    reg("idtr_base", Field::IdtrBase),
    reg("idtr_limit", Field::IdtrLimit),
];

/// The system register called `name`.
pub fn find(name: &str) -> Option<&'static SystemReg> {
    SYSTEM.iter().find(|r| r.name == name)
}

impl SystemReg {
    /// Its value in `sregs`.
    pub fn get(&self, sregs: &SpecialRegs) -> u64 {
        match self.field {
            Field::Cr0 => sregs.cr0,
            Field::Cr2 => sregs.cr2,
            Field::Cr3 => sregs.cr3,
            Field::Cr4 => sregs.cr4,
            Field::Cr8 => sregs.cr8,
            Field::Efer => sregs.efer,
            Field::Base(seg) => seg.of(sregs).base,
            Field::Limit(seg) => u64::from(seg.of(sregs).limit),
            Field::GdtrBase => sregs.gdt.base,
            Field::GdtrLimit => u64::from(sregs.gdt.limit),
            Field::IdtrBase => sregs.idt.base,
            Field::IdtrLimit => u64::from(sregs.idt.limit),
        }
    }

    /// Writes `value` into `sregs`; the one-line reason when it does not
    /// fit the register.
    pub fn set(&self, sregs: &mut SpecialRegs, value: u64) -> Result<(), String> {
        let too_wide = |bits: u32| format!("{} holds {bits} bits, not {value:#x}", self.name);
        match self.field {
            Field::Cr0 => sregs.cr0 = value,
            Field::Cr2 => sregs.cr2 = value,
            Field::Cr3 => sregs.cr3 = value,
            Field::Cr4 => sregs.cr4 = value,
            Field::Cr8 => sregs.cr8 = value,
            Field::Efer => sregs.efer = value,
            Field::Base(seg) => seg.of_mut(sregs).base = value,
            Field::Limit(seg) => {
                seg.of_mut(sregs).limit = u32::try_from(value).map_err(|_| too_wide(32))?;
            }
            Field::GdtrBase => sregs.gdt.base = value,
            Field::GdtrLimit => sregs.gdt.limit = u16::try_from(value).map_err(|_| too_wide(16))?,
            Field::IdtrBase => sregs.idt.base = value,
            Field::IdtrLimit => sregs.idt.limit = u16::try_from(value).map_err(|_| too_wide(16))?,
        }
        Ok(())
    }
}

/// The registers of one vCPU as gdb sees them: gdbstub's core set, then
/// [`SYSTEM`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SieRegs {
    /// General, x87 and SSE registers.
    pub core: X86_64CoreRegs,
    /// [`SYSTEM`]'s values, in its order.
    pub system: [u64; SYSTEM.len()],
}

impl SieRegs {
    /// Fills [`Self::system`] from `sregs`.
    pub fn read_system(&mut self, sregs: &SpecialRegs) {
        for (value, reg) in self.system.iter_mut().zip(&SYSTEM) {
            *value = reg.get(sregs);
        }
    }

    /// Writes [`Self::system`] into `sregs`; the first value that does not
    /// fit is refused and nothing is written.
    pub fn write_system(&self, sregs: &mut SpecialRegs) -> Result<(), String> {
        let mut new = *sregs;
        for (value, reg) in self.system.iter().zip(&SYSTEM) {
            reg.set(&mut new, *value)?;
        }
        *sregs = new;
        Ok(())
    }
}

impl Registers for SieRegs {
    type ProgramCounter = u64;

    fn pc(&self) -> u64 {
        self.core.rip
    }

    fn gdb_serialize(&self, mut write_byte: impl FnMut(Option<u8>)) {
        self.core.gdb_serialize(&mut write_byte);
        for value in &self.system {
            for byte in value.to_le_bytes() {
                write_byte(Some(byte));
            }
        }
    }

    /// Only a whole packet is taken: a register gdb left out would be
    /// written as 0 (a `cr0` of 0 is no state to resume).
    fn gdb_deserialize(&mut self, bytes: &[u8]) -> Result<(), ()> {
        let (core, system) = bytes.split_at_checked(CORE_BYTES).ok_or(())?;
        if system.len() != 8 * SYSTEM.len() {
            return Err(());
        }
        self.core.gdb_deserialize(core)?;
        for (value, chunk) in self.system.iter_mut().zip(system.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            *value = u64::from_le_bytes(word);
        }
        Ok(())
    }
}

/// x86-64 with sie's system registers.
pub enum SieX86_64 {}

impl Arch for SieX86_64 {
    type Usize = u64;
    type Registers = SieRegs;
    type BreakpointKind = usize;
    type RegId = ();

    fn target_description_xml() -> Option<&'static str> {
        Some(description())
    }
}

/// The target description: gdb checks that the core and SSE features name
/// every register it expects of x86-64, in the `g` packet's order.
pub fn description() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let mut x = String::from(
            "<?xml version=\"1.0\"?><!DOCTYPE target SYSTEM \"gdb-target.dtd\">\
             <target version=\"1.0\"><architecture>i386:x86-64</architecture>\
             <feature name=\"org.gnu.gdb.i386.core\">",
        );
        flags(
            &mut x,
            "i386_eflags",
            &[
                ("CF", 0),
                ("PF", 2),
                ("AF", 4),
                ("ZF", 6),
                ("SF", 7),
                ("TF", 8),
                ("IF", 9),
                ("DF", 10),
                ("OF", 11),
                ("NT", 14),
                ("RF", 16),
                ("VM", 17),
                ("AC", 18),
                ("VIF", 19),
                ("VIP", 20),
                ("ID", 21),
            ],
        );
        for name in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi"] {
            register(&mut x, name, 64, "int64", None);
        }
        register(&mut x, "rbp", 64, "data_ptr", None);
        register(&mut x, "rsp", 64, "data_ptr", None);
        for n in 8..16 {
            register(&mut x, &format!("r{n}"), 64, "int64", None);
        }
        register(&mut x, "rip", 64, "code_ptr", None);
        register(&mut x, "eflags", 32, "i386_eflags", None);
        for name in ["cs", "ss", "ds", "es", "fs", "gs"] {
            register(&mut x, name, 32, "int32", None);
        }
        for n in 0..8 {
            register(&mut x, &format!("st{n}"), 80, "i387_ext", None);
        }
        for name in [
            "fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop",
        ] {
            register(&mut x, name, 32, "int", Some("float"));
        }
        x.push_str("</feature><feature name=\"org.gnu.gdb.i386.sse\">");
        x.push_str(
            "<vector id=\"v4f\" type=\"ieee_single\" count=\"4\"/>\
             <vector id=\"v2d\" type=\"ieee_double\" count=\"2\"/>\
             <vector id=\"v16i8\" type=\"int8\" count=\"16\"/>\
             <vector id=\"v8i16\" type=\"int16\" count=\"8\"/>\
             <vector id=\"v4i32\" type=\"int32\" count=\"4\"/>\
             <vector id=\"v2i64\" type=\"int64\" count=\"2\"/>\
             <union id=\"vec128\"><field name=\"v4_float\" type=\"v4f\"/>\
             <field name=\"v2_double\" type=\"v2d\"/><field name=\"v16_int8\" type=\"v16i8\"/>\
             <field name=\"v8_int16\" type=\"v8i16\"/><field name=\"v4_int32\" type=\"v4i32\"/>\
             <field name=\"v2_int64\" type=\"v2i64\"/><field name=\"uint128\" type=\"uint128\"/>\
             </union>",
        );
        flags(
            &mut x,
            "i386_mxcsr",
            &[
                ("IE", 0),
                ("DE", 1),
                ("ZE", 2),
                ("OE", 3),
                ("UE", 4),
                ("PE", 5),
                ("DAZ", 6),
                ("IM", 7),
                ("DM", 8),
                ("ZM", 9),
                ("OM", 10),
                ("UM", 11),
                ("PM", 12),
                ("FZ", 15),
            ],
        );
        for n in 0..16 {
            register(&mut x, &format!("xmm{n}"), 128, "vec128", Some("vector"));
        }
        register(&mut x, "mxcsr", 32, "i386_mxcsr", Some("vector"));
        x.push_str("</feature><feature name=\"org.gnu.gdb.i386.segments\">");
        for (index, reg) in SYSTEM.iter().enumerate() {
            if index == SEGMENT_FEATURE {
                x.push_str("</feature><feature name=\"org.sie.x86.system\">");
            }
            register(&mut x, reg.name, 64, "int", None);
        }
        x.push_str("</feature></target>");
        x
    })
}

fn flags(x: &mut String, id: &str, bits: &[(&str, u32)]) {
    let _ = write!(x, "<flags id=\"{id}\" size=\"4\">");
    for (name, bit) in bits {
        let _ = write!(x, "<field name=\"{name}\" start=\"{bit}\" end=\"{bit}\"/>");
    }
    x.push_str("</flags>");
}

fn register(x: &mut String, name: &str, bits: u32, kind: &str, group: Option<&str>) {
    let _ = write!(x, "<reg name=\"{name}\" bitsize=\"{bits}\" type=\"{kind}\"");
    if let Some(group) = group {
        let _ = write!(x, " group=\"{group}\"");
    }
    x.push_str("/>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_registers_read_and_write_through_special_regs() {
        let mut sregs = SpecialRegs::default();
        let regs = SieRegs {
            system: std::array::from_fn(|i| 0x100 + i as u64),
            ..SieRegs::default()
        };
        regs.write_system(&mut sregs).unwrap();
        assert_eq!((sregs.fs.base, sregs.gs.base), (0x100, 0x101));
        assert_eq!((sregs.cr0, sregs.cr3, sregs.efer), (0x102, 0x104, 0x107));
        assert_eq!((sregs.cs.limit, sregs.idt.limit), (0x10c, 0x115));
        let mut back = SieRegs::default();
        back.read_system(&sregs);
        assert_eq!(back.system, regs.system);
    }

    #[test]
    fn a_value_too_wide_is_refused_and_nothing_is_written() {
        let mut sregs = SpecialRegs::default();
        let mut regs = SieRegs::default();
        regs.system[2] = 0x8000_0011;
        regs.system[19] = 0x1_0000;
        let error = regs.write_system(&mut sregs).unwrap_err();
        assert!(error.contains("gdtr_limit holds 16 bits"), "{error}");
        assert_eq!(sregs, SpecialRegs::default());
        assert!(find("cs_limit").unwrap().set(&mut sregs, 1 << 32).is_err());
    }

    #[test]
    fn the_packet_is_the_core_set_then_the_system_registers() {
        let mut regs = SieRegs::default();
        regs.core.rip = 0x1000;
        regs.system[4] = 0x9000;
        let mut bytes = Vec::new();
        regs.gdb_serialize(|b| bytes.push(b.unwrap()));
        assert_eq!(bytes.len(), CORE_BYTES + 8 * SYSTEM.len());
        assert_eq!(
            bytes[CORE_BYTES + 32..CORE_BYTES + 40],
            0x9000u64.to_le_bytes()
        );
        let mut back = SieRegs::default();
        back.gdb_deserialize(&bytes).unwrap();
        assert_eq!(back, regs);
        assert!(back.gdb_deserialize(&bytes[..CORE_BYTES]).is_err());
    }

    #[test]
    fn the_description_names_every_register_once() {
        let text = description();
        for name in ["rip", "st7", "fop", "xmm15", "mxcsr", "fs_base", "cr3"] {
            assert_eq!(
                text.matches(&format!("name=\"{name}\"")).count(),
                1,
                "{name}"
            );
        }
        let registers = text.matches("<reg ").count();
        assert_eq!(registers, 57 + SYSTEM.len());
    }
}
