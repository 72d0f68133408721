//! gdb's `monitor` commands, for the special registers at one glance:
//! `monitor sregs` shows the control, segment and descriptor-table
//! registers of the stopped vCPU, with the segments' attributes gdb's
//! registers leave out; `monitor set REG VALUE` writes one of the system
//! registers gdb also shows ([`super::arch::SYSTEM`]: cr0, cr3, efer,
//! fs_base, gdtr_limit…), as `set $REG = VALUE` in gdb does.

use std::fmt::Write;

use sie_hv::x86::{Segment, SpecialRegs};

use super::arch::{self, SYSTEM, SystemReg};

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Show the special registers.
    Show,
    /// Write one of them.
    Set(&'static SystemReg, u64),
}

/// What one line of `monitor` asks, or the one-line reason it is not understood.
pub fn parse(cmd: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(cmd).map_err(|_| "not text".to_string())?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["sregs"] => Ok(Command::Show),
        ["set", reg, value] => {
            let Some(register) = arch::find(reg) else {
                let names: Vec<&str> = SYSTEM.iter().map(|r| r.name).collect();
                return Err(format!("cannot set {reg}: one of {}", names.join(" ")));
            };
            let parsed = match value.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => value.parse(),
            };
            let value = parsed.map_err(|_| format!("{value:?} is not a number"))?;
            Ok(Command::Set(register, value))
        }
        _ => Err("sie's monitor commands: sregs, set REG VALUE".to_string()),
    }
}

/// The special registers, a few lines.
pub fn show(sregs: &SpecialRegs) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} cr8={:#x} efer={:#x}",
        sregs.cr0, sregs.cr2, sregs.cr3, sregs.cr4, sregs.cr8, sregs.efer
    );
    let segments: [(&str, &Segment); 8] = [
        ("cs", &sregs.cs),
        ("ds", &sregs.ds),
        ("es", &sregs.es),
        ("fs", &sregs.fs),
        ("gs", &sregs.gs),
        ("ss", &sregs.ss),
        ("tr", &sregs.tr),
        ("ldt", &sregs.ldt),
    ];
    for (name, s) in segments {
        let _ = writeln!(
            text,
            "{name}={:#06x} base={:#x} limit={:#x} type={} dpl={} l={} db={}",
            s.selector, s.base, s.limit, s.type_, s.dpl, s.l as u8, s.db as u8
        );
    }
    let _ = write!(
        text,
        "gdt={:#x}/{:#x} idt={:#x}/{:#x}",
        sregs.gdt.base, sregs.gdt.limit, sregs.idt.base, sregs.idt.limit
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_parsed_and_bad_ones_named() {
        assert_eq!(parse(b"sregs"), Ok(Command::Show));
        let cr3 = arch::find("cr3").unwrap();
        assert_eq!(parse(b"set cr3 0x9000"), Ok(Command::Set(cr3, 0x9000)));
        let gs_base = arch::find("gs_base").unwrap();
        assert_eq!(parse(b"set gs_base 4096"), Ok(Command::Set(gs_base, 4096)));
        assert!(parse(b"set rip 1").unwrap_err().contains("cannot set rip"));
        assert!(parse(b"set cr3 x").unwrap_err().contains("not a number"));
        assert!(parse(b"help").unwrap_err().contains("sregs"));
    }

    #[test]
    fn set_writes_the_named_register_and_show_prints_it() {
        let mut sregs = SpecialRegs::default();
        for (name, value) in [("cr2", 0x1234), ("fs_base", 0xffff_8000_0000_0000)] {
            arch::find(name).unwrap().set(&mut sregs, value).unwrap();
        }
        assert_eq!((sregs.cr2, sregs.fs.base), (0x1234, 0xffff_8000_0000_0000));
        let text = show(&sregs);
        assert!(text.contains("cr2=0x1234"), "{text}");
        assert!(text.contains("fs=0x0000 base=0xffff800000000000"), "{text}");
    }
}
