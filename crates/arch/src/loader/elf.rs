//! ELF vmlinux: header checks sie needs beyond linux-loader's (class,
//! machine, every segment inside the file and inside RAM above 1 MiB), then
//! the copy itself through linux-loader, which also finds the PVH note.

use std::io::{Read, Seek};

use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::{EntryMode, KernelFormat, LoadedKernel, LoaderError, Result, check_fits, read_at};
use crate::layout::HIMEM_START;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;

fn u16_at(b: &[u8], off: usize) -> u16 {
    let mut v = [0u8; 2];
    v.copy_from_slice(&b[off..off + 2]);
    u16::from_le_bytes(v)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(v)
}

/// The program header fields sie checks.
struct Segment {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Checks the ELF image (`len` bytes) and loads it into `mem`.
pub(super) fn load<F>(mem: &GuestMemoryMmap, image: &mut F, len: u64) -> Result<LoadedKernel>
where
    F: Read + ReadVolatile + Seek,
{
    let mut ehdr = [0u8; EHDR_SIZE];
    if read_at(image, 0, &mut ehdr)? < EHDR_SIZE {
        return Err(LoaderError::Truncated {
            what: "ELF header",
            needed: EHDR_SIZE as u64,
            len,
        });
    }
    if ehdr[4] != ELFCLASS64 {
        return Err(LoaderError::ElfNot64Bit(ehdr[4]));
    }
    if ehdr[5] != ELFDATA2LSB {
        return Err(LoaderError::ElfBigEndian);
    }
    let machine = u16_at(&ehdr, 18);
    if machine != EM_X86_64 {
        return Err(LoaderError::ElfNotX86_64(machine));
    }
    let entry = u64_at(&ehdr, 24);
    let phoff = u64_at(&ehdr, 32);
    let phentsize = u16_at(&ehdr, 54);
    let phnum = u16_at(&ehdr, 56);
    if usize::from(phentsize) != PHDR_SIZE {
        return Err(LoaderError::ElfBadPhdrSize(phentsize));
    }

    let table_len = usize::from(phnum) * PHDR_SIZE;
    let table_end = phoff.checked_add(table_len as u64);
    if phoff < EHDR_SIZE as u64 || table_end.is_none_or(|end| end > len) {
        return Err(LoaderError::Truncated {
            what: "ELF program header table",
            needed: table_end.unwrap_or(u64::MAX),
            len,
        });
    }
    let mut table = vec![0u8; table_len];
    read_at(image, phoff, &mut table)?;
    let segments: Vec<Segment> = table
        .chunks_exact(PHDR_SIZE)
        .map(|p| Segment {
            kind: u32_at(p, 0),
            offset: u64_at(p, 8),
            paddr: u64_at(p, 24),
            filesz: u64_at(p, 32),
            memsz: u64_at(p, 40),
        })
        .collect();

    let end = check_segments(mem, &segments, len)?;

    let result = Elf::load(mem, None, image, None).map_err(LoaderError::Load)?;
    let (entry, mode) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(pvh) => (pvh, EntryMode::Pvh),
        _ => (GuestAddress(entry), EntryMode::Linux64),
    };
    Ok(LoadedKernel {
        entry,
        mode,
        setup_header: None,
        end: GuestAddress(end),
        format: KernelFormat::Elf,
    })
}

/// Checks every segment lies inside the file and every loadable one inside
/// RAM above 1 MiB; returns the end of the highest loadable segment.
fn check_segments(mem: &GuestMemoryMmap, segments: &[Segment], len: u64) -> Result<u64> {
    let mut end = None;
    for seg in segments {
        if seg.kind != PT_LOAD && seg.kind != PT_NOTE {
            continue;
        }
        // linux-loader seeks and reads these bytes; a cut-off file must be
        // reported here, by name.
        let file_end = seg.offset.checked_add(seg.filesz);
        if file_end.is_none_or(|e| e > len) {
            return Err(LoaderError::Truncated {
                what: if seg.kind == PT_LOAD {
                    "ELF segment"
                } else {
                    "ELF note"
                },
                needed: file_end.unwrap_or(u64::MAX),
                len,
            });
        }
        if seg.kind != PT_LOAD || seg.memsz == 0 {
            continue;
        }
        if seg.filesz > seg.memsz {
            return Err(LoaderError::ElfSegmentFileSize { addr: seg.paddr });
        }
        if seg.paddr < HIMEM_START {
            return Err(LoaderError::ElfSegmentTooLow(seg.paddr));
        }
        let seg_end = seg
            .paddr
            .checked_add(seg.memsz)
            .ok_or(LoaderError::DoesNotFit {
                start: seg.paddr,
                end: u64::MAX,
            })?;
        check_fits(mem, seg.paddr, seg_end)?;
        end = end.max(Some(seg_end));
    }
    end.ok_or(LoaderError::ElfNoLoadSegment)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_kernel;
    use crate::loader::test_images::{ElfSpec, elf_image, load, mem};
    use std::io::Cursor;
    use vm_memory::Bytes;

    #[test]
    fn plain_elf_loads_at_its_physical_address_with_64_bit_entry() {
        let mem = mem();
        let image = elf_image(&ElfSpec::default());
        let k = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        assert_eq!(k.format, KernelFormat::Elf);
        assert_eq!(k.mode, EntryMode::Linux64);
        assert_eq!(k.entry, GuestAddress(0x20_0000));
        assert!(k.setup_header.is_none());
        // memsz (0x3000) counts, not just the bytes in the file.
        assert_eq!(k.end, GuestAddress(0x20_3000));
        let mut code = [0u8; 4];
        mem.read_slice(&mut code, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(code, [0xf4, 0xf4, 0xf4, 0xf4]);
    }

    #[test]
    fn pvh_note_wins_over_the_elf_entry() {
        let image = elf_image(&ElfSpec {
            pvh_entry: Some(0x20_0040),
            ..Default::default()
        });
        let k = load(&image).unwrap();
        assert_eq!(k.mode, EntryMode::Pvh);
        assert_eq!(k.entry, GuestAddress(0x20_0040));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let image = elf_image(&ElfSpec {
            pvh_entry: Some(0x20_0040),
            ..Default::default()
        });
        for cut in 0..image.len() {
            assert!(load(&image[..cut]).is_err(), "cut at {cut} loaded");
        }
    }

    #[test]
    fn truncated_segment_is_named() {
        let image = elf_image(&ElfSpec::default());
        let err = load(&image[..image.len() - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Truncated {
                    what: "ELF segment",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn wrong_class_and_machine_are_rejected() {
        let mut image = elf_image(&ElfSpec::default());
        image[4] = 1;
        assert!(matches!(load(&image), Err(LoaderError::ElfNot64Bit(1))));
        let mut image = elf_image(&ElfSpec::default());
        image[18] = 3;
        assert!(matches!(load(&image), Err(LoaderError::ElfNotX86_64(3))));
        let mut image = elf_image(&ElfSpec::default());
        image[5] = 2;
        assert!(matches!(load(&image), Err(LoaderError::ElfBigEndian)));
    }

    #[test]
    fn kernel_larger_than_memory_is_rejected() {
        let image = elf_image(&ElfSpec {
            memsz: 64 << 20,
            ..Default::default()
        });
        let err = load(&image).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::DoesNotFit {
                    start: 0x20_0000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn segment_below_1mib_is_rejected() {
        let image = elf_image(&ElfSpec {
            paddr: 0x8000,
            ..Default::default()
        });
        assert!(matches!(
            load(&image),
            Err(LoaderError::ElfSegmentTooLow(0x8000))
        ));
    }

    #[test]
    fn garbage_program_headers_do_not_panic() {
        let base = elf_image(&ElfSpec {
            pvh_entry: Some(0x20_0040),
            ..Default::default()
        });
        // Flip each byte of the headers in turn to a hostile value.
        for i in 0..(EHDR_SIZE + 2 * PHDR_SIZE) {
            for v in [0x00, 0x7f, 0xff] {
                let mut image = base.clone();
                image[i] = v;
                let _ = load(&image);
            }
        }
    }

    #[test]
    fn image_without_load_segment_is_rejected() {
        let mut image = elf_image(&ElfSpec::default());
        // Turn the PT_LOAD into PT_NULL.
        image[EHDR_SIZE] = 0;
        assert!(matches!(load(&image), Err(LoaderError::ElfNoLoadSegment)));
    }
}
