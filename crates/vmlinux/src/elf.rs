//! What this crate checks of an ELF vmlinux, on linux-loader's `Elf64_Ehdr`
//! and `Elf64_Phdr`: that decompression produced an x86_64 ELF64, and that a
//! cache entry still holds its whole ELF (header, program header table and
//! every segment's bytes), so a cut or damaged entry is rebuilt instead of
//! booted. The loader (sie-arch) makes the full checks at boot.

use std::fs::File;
use std::mem::size_of;
use std::os::unix::fs::FileExt;

use linux_loader::elf::{EI_CLASS, ELFCLASS64, ELFMAG, EM_X86_64, Elf64_Ehdr, Elf64_Phdr};
use vm_memory::ByteValued;

const PHDR_SIZE: usize = size_of::<Elf64_Phdr>();

fn is_x86_64(ehdr: &Elf64_Ehdr) -> bool {
    ehdr.e_ident.starts_with(ELFMAG)
        && ehdr.e_ident[EI_CLASS] == ELFCLASS64
        && ehdr.e_machine == EM_X86_64
}

/// True when `bytes` starts with a whole ELF64 x86_64 header.
pub fn is_elf64_x86(bytes: &[u8]) -> bool {
    Elf64_Ehdr::read_exact_from(bytes).is_ok_and(|ehdr| is_x86_64(&ehdr))
}

/// Reads a `T` at `offset` of `file`; `None` when the file ends first.
fn read_struct_at<T: ByteValued>(file: &File, offset: u64) -> Option<T> {
    let mut value = T::zeroed();
    file.read_exact_at(value.as_mut_slice(), offset).ok()?;
    Some(value)
}

/// True when `file`, `len` bytes long, is an x86_64 ELF64 that holds its
/// program header table and every segment's bytes. Reads with `pread`: the
/// file position is left where it was.
pub(crate) fn is_complete_elf(file: &File, len: u64) -> bool {
    let Some(ehdr) = read_struct_at::<Elf64_Ehdr>(file, 0) else {
        return false;
    };
    if !is_x86_64(&ehdr) {
        return false;
    }
    let count = usize::from(ehdr.e_phnum);
    if count == 0 {
        return true;
    }
    if usize::from(ehdr.e_phentsize) != PHDR_SIZE {
        return false;
    }
    let table_len = (count * PHDR_SIZE) as u64;
    if ehdr
        .e_phoff
        .checked_add(table_len)
        .is_none_or(|end| end > len)
    {
        return false;
    }
    (0..count as u64).all(|i| {
        read_struct_at::<Elf64_Phdr>(file, ehdr.e_phoff + i * PHDR_SIZE as u64).is_some_and(
            |phdr| {
                phdr.p_offset
                    .checked_add(phdr.p_filesz)
                    .is_some_and(|end| end <= len)
            },
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An ELF header with one program header whose segment is the 16
    /// bytes after it.
    fn elf_with_segment() -> Vec<u8> {
        let mut ehdr = Elf64_Ehdr::default();
        ehdr.e_ident[..4].copy_from_slice(ELFMAG);
        ehdr.e_ident[EI_CLASS] = ELFCLASS64;
        ehdr.e_machine = EM_X86_64;
        ehdr.e_phoff = 64;
        ehdr.e_phentsize = 56;
        ehdr.e_phnum = 1;
        let phdr = Elf64_Phdr {
            p_type: 1,
            p_offset: 120,
            p_filesz: 16,
            p_memsz: 16,
            ..Default::default()
        };
        let mut bytes = ehdr.as_slice().to_vec();
        bytes.extend_from_slice(phdr.as_slice());
        bytes.extend_from_slice(&[0xf4; 16]);
        bytes
    }

    fn file_with(bytes: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "sie-vmlinux-elf-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let mut file = File::create(&path).unwrap();
        file.write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    fn complete(bytes: &[u8]) -> bool {
        is_complete_elf(&file_with(bytes), bytes.len() as u64)
    }

    #[test]
    fn a_whole_elf_is_complete_and_every_cut_is_not() {
        let elf = elf_with_segment();
        assert!(complete(&elf));
        for cut in 0..elf.len() {
            assert!(!complete(&elf[..cut]), "cut at {cut} passed");
        }
    }

    #[test]
    fn segments_and_tables_past_the_end_are_incomplete() {
        let hostile: [fn(&mut Vec<u8>); 5] = [
            |e| e[32..40].copy_from_slice(&u64::MAX.to_le_bytes()), // e_phoff
            |e| e[56..58].copy_from_slice(&u16::MAX.to_le_bytes()), // e_phnum
            |e| e[54..56].copy_from_slice(&32u16.to_le_bytes()),    // e_phentsize
            |e| e[64 + 8..64 + 16].copy_from_slice(&u64::MAX.to_le_bytes()), // p_offset
            |e| e[64 + 32..64 + 40].copy_from_slice(&17u64.to_le_bytes()), // p_filesz
        ];
        for edit in hostile {
            let mut elf = elf_with_segment();
            edit(&mut elf);
            assert!(!complete(&elf));
        }
    }

    #[test]
    fn only_a_whole_x86_64_elf64_header_counts() {
        let elf = elf_with_segment();
        assert!(is_elf64_x86(&elf[..64]));
        assert!(!is_elf64_x86(&elf[..63]));
        let mut i386 = elf.clone();
        i386[18] = 3;
        assert!(!is_elf64_x86(&i386));
        let mut elf32 = elf;
        elf32[4] = 1;
        assert!(!is_elf64_x86(&elf32));
    }
}
