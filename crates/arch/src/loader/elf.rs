//! ELF vmlinux: header checks sie needs beyond linux-loader's (class,
//! machine, every segment inside the file and inside RAM above 1 MiB), made
//! on linux-loader's `Elf64_Ehdr` and `Elf64_Phdr`, then the copy itself
//! through linux-loader, which also finds the PVH note.

use std::io::{Read, Seek};
use std::mem::size_of;

use linux_loader::elf::{
    EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, EM_X86_64, Elf64_Ehdr, Elf64_Phdr, PT_LOAD, PT_NOTE,
};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use sie_hv::GuestMemory;
use vm_memory::{ByteValued, GuestAddress, ReadVolatile};

use super::{
    EntryMode, KernelFormat, LoadedKernel, LoaderError, Result, check_fits, read_at, read_struct_at,
};
use crate::layout::HIMEM_START;

const EHDR_SIZE: usize = size_of::<Elf64_Ehdr>();
const PHDR_SIZE: usize = size_of::<Elf64_Phdr>();
// The ELF64 specification's sizes: the types must match the file format.
const _: () = assert!(EHDR_SIZE == 64 && PHDR_SIZE == 56);

/// Checks the ELF image (`len` bytes) and loads it into `mem`.
pub(super) fn load<F>(mem: &GuestMemory, image: &mut F, len: u64) -> Result<LoadedKernel>
where
    F: Read + ReadVolatile + Seek,
{
    let ehdr: Elf64_Ehdr = read_struct_at(image, 0)?.ok_or(LoaderError::Truncated {
        what: "ELF header",
        needed: EHDR_SIZE as u64,
        len,
    })?;
    let class = ehdr.e_ident[EI_CLASS];
    if class != ELFCLASS64 {
        return Err(LoaderError::ElfNot64Bit(class));
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(LoaderError::ElfBigEndian);
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(LoaderError::ElfNotX86_64(ehdr.e_machine));
    }
    if usize::from(ehdr.e_phentsize) != PHDR_SIZE {
        return Err(LoaderError::ElfBadPhdrSize(ehdr.e_phentsize));
    }

    let phoff = ehdr.e_phoff;
    let table_len = usize::from(ehdr.e_phnum) * PHDR_SIZE;
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
    let segments = table
        .chunks_exact(PHDR_SIZE)
        .map(Elf64_Phdr::read_exact_from)
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(LoaderError::Read)?;

    let end = check_segments(mem, &segments, len)?;

    let result = Elf::load(mem, None, image, None).map_err(LoaderError::Load)?;
    let (entry, mode) = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(pvh) => (pvh, EntryMode::Pvh),
        _ => (GuestAddress(ehdr.e_entry), EntryMode::Linux64),
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
fn check_segments(mem: &GuestMemory, segments: &[Elf64_Phdr], len: u64) -> Result<u64> {
    let mut end = None;
    for seg in segments {
        if seg.p_type != PT_LOAD && seg.p_type != PT_NOTE {
            continue;
        }
        // linux-loader seeks and reads these bytes; a cut-off file must be
        // reported here, by name.
        let file_end = seg.p_offset.checked_add(seg.p_filesz);
        if file_end.is_none_or(|e| e > len) {
            return Err(LoaderError::Truncated {
                what: if seg.p_type == PT_LOAD {
                    "ELF segment"
                } else {
                    "ELF note"
                },
                needed: file_end.unwrap_or(u64::MAX),
                len,
            });
        }
        if seg.p_type != PT_LOAD {
            continue;
        }
        // Before the empty-segment skip: linux-loader copies `p_filesz`
        // bytes of every PT_LOAD whatever its memory size, so a segment
        // with file bytes and no memory would land unchecked (below 1 MiB,
        // over the boot structures; found by fuzz/ loader_elf).
        if seg.p_filesz > seg.p_memsz {
            return Err(LoaderError::ElfSegmentFileSize { addr: seg.p_paddr });
        }
        if seg.p_memsz == 0 {
            continue;
        }
        if seg.p_paddr < HIMEM_START {
            return Err(LoaderError::ElfSegmentTooLow(seg.p_paddr));
        }
        let seg_end = seg
            .p_paddr
            .checked_add(seg.p_memsz)
            .ok_or(LoaderError::DoesNotFit {
                start: seg.p_paddr,
                end: u64::MAX,
            })?;
        check_fits(mem, seg.p_paddr, seg_end)?;
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
    fn segment_with_file_bytes_and_no_memory_is_rejected_not_copied() {
        // The PVH image's second header turned into a PT_LOAD of 20 file
        // bytes, memory size 0, at 0x7000 (the zero page).
        let mut image = elf_image(&ElfSpec {
            pvh_entry: Some(0x20_0000),
            ..ElfSpec::default()
        });
        let at = 64 + 56;
        image[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        image[at + 24..at + 32].copy_from_slice(&0x7000u64.to_le_bytes()); // p_paddr
        image[at + 40..at + 48].copy_from_slice(&0u64.to_le_bytes()); // p_memsz
        let mem = mem();
        let err = load_kernel(&mem, &mut Cursor::new(&image)).unwrap_err();
        assert!(
            matches!(err, LoaderError::ElfSegmentFileSize { addr: 0x7000 }),
            "{err}"
        );
        let mut low = [0xaau8; 20];
        mem.read_slice(&mut low, GuestAddress(0x7000)).unwrap();
        assert_eq!(low, [0; 20], "nothing was copied below 1 MiB");
    }

    #[test]
    fn image_without_load_segment_is_rejected() {
        let mut image = elf_image(&ElfSpec::default());
        // Turn the PT_LOAD into PT_NULL.
        image[EHDR_SIZE] = 0;
        assert!(matches!(load(&image), Err(LoaderError::ElfNoLoadSegment)));
    }

    #[test]
    fn image_cut_inside_its_elf_header_names_the_header() {
        let image = elf_image(&ElfSpec::default());
        for cut in [4, 20, EHDR_SIZE - 1] {
            let err = load(&image[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    LoaderError::Truncated {
                        what: "ELF header",
                        needed: 64,
                        ..
                    }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn extreme_header_fields_are_errors_not_overflows() {
        let base = elf_image(&ElfSpec::default());
        let ehdr = |edit: fn(&mut Elf64_Ehdr)| {
            let mut image = base.clone();
            let mut h = Elf64_Ehdr::read_exact_from(&image[..]).unwrap();
            edit(&mut h);
            image[..EHDR_SIZE].copy_from_slice(h.as_slice());
            image
        };
        let phdr = |edit: fn(&mut Elf64_Phdr)| {
            let mut image = base.clone();
            let at = EHDR_SIZE..EHDR_SIZE + PHDR_SIZE;
            let mut p = Elf64_Phdr::read_exact_from(&image[at.clone()]).unwrap();
            edit(&mut p);
            image[at].copy_from_slice(p.as_slice());
            image
        };
        let images = [
            ehdr(|h| h.e_phoff = u64::MAX),
            ehdr(|h| h.e_phoff = u64::MAX - 10),
            ehdr(|h| h.e_phnum = u16::MAX),
            phdr(|p| p.p_offset = u64::MAX),
            phdr(|p| p.p_filesz = u64::MAX),
            phdr(|p| p.p_paddr = u64::MAX),
            phdr(|p| p.p_memsz = u64::MAX),
            phdr(|p| {
                p.p_paddr = u64::MAX - 0x1000;
                p.p_memsz = 0x2000;
            }),
        ];
        for image in images {
            assert!(load(&image).is_err());
        }
    }
}
