//! Checks that the exec file can run in an empty jail: a regular 64-bit
//! ELF executable with no program interpreter (PT_INTERP), i.e. statically
//! linked, because the jail holds no dynamic loader or shared library.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::error::{Step, StepError, StepResult};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const PT_INTERP: u32 = 3;
/// Bound on program headers read (real executables have about a dozen).
const MAX_PHNUM: u16 = 256;

/// What is wrong with an exec file's ELF image.
#[derive(Debug, PartialEq, Eq)]
pub enum ElfProblem {
    NotElf,
    NotX86_64Elf,
    /// It names a program interpreter (dynamically linked).
    Dynamic,
}

/// Inspects the ELF header and program headers of `image`.
pub fn inspect(mut image: impl Read + Seek) -> std::io::Result<Result<(), ElfProblem>> {
    let mut header = [0u8; 64];
    if image.read_exact(&mut header).is_err() || &header[..4] != ELF_MAGIC {
        return Ok(Err(ElfProblem::NotElf));
    }
    if header[4] != ELFCLASS64 || header[5] != ELFDATA2LSB {
        return Ok(Err(ElfProblem::NotX86_64Elf));
    }
    let u16_at = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
    let mut phoff = [0u8; 8];
    phoff.copy_from_slice(&header[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff);
    let phentsize = u64::from(u16_at(0x36));
    let phnum = u16_at(0x38).min(MAX_PHNUM);
    if phentsize < 4 {
        return Ok(Err(ElfProblem::NotElf));
    }
    for index in 0..u64::from(phnum) {
        image.seek(SeekFrom::Start(phoff + index * phentsize))?;
        let mut p_type = [0u8; 4];
        image.read_exact(&mut p_type)?;
        if u32::from_le_bytes(p_type) == PT_INTERP {
            return Ok(Err(ElfProblem::Dynamic));
        }
    }
    Ok(Ok(()))
}

/// Refuses an exec file that cannot run alone in the jail; `what` names it
/// in the message (`--exec-file`, or the copy in the jail).
pub fn check(what: &str, path: &Path) -> StepResult<()> {
    let step = || format!("{what} {}", path.display());
    let file = File::open(path).step(step)?;
    let meta = file.metadata().step(step)?;
    if !meta.is_file() {
        return Err(StepError::new(step(), "not a regular file"));
    }
    match inspect(file).step(step)? {
        Ok(()) => Ok(()),
        Err(ElfProblem::NotElf) => Err(StepError::new(step(), "not an ELF executable")),
        Err(ElfProblem::NotX86_64Elf) => {
            Err(StepError::new(step(), "not an x86_64 ELF executable"))
        }
        Err(ElfProblem::Dynamic) => Err(StepError::new(
            step(),
            "dynamically linked: the jail has no loader or libraries; build sie statically \
             (see README: RUSTFLAGS=\"-C target-feature=+crt-static\")",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// An ELF64 header with program headers of the given types.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut image = vec![0u8; 64];
        image[..4].copy_from_slice(ELF_MAGIC);
        image[4] = ELFCLASS64;
        image[5] = ELFDATA2LSB;
        image[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        image[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        image[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for &t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            image.extend(ph);
        }
        image
    }

    #[test]
    fn static_images_pass_and_dynamic_ones_do_not() {
        assert_eq!(inspect(Cursor::new(elf(&[6, 1, 1]))).unwrap(), Ok(()));
        assert_eq!(
            inspect(Cursor::new(elf(&[6, PT_INTERP, 1]))).unwrap(),
            Err(ElfProblem::Dynamic)
        );
        assert_eq!(
            inspect(Cursor::new(b"#!/bin/sh\n".to_vec())).unwrap(),
            Err(ElfProblem::NotElf)
        );
    }
}
