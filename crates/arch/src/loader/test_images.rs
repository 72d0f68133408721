//! Synthetic kernel images for tests: a minimal ELF64 (one PT_LOAD, an
//! optional PVH note) and a minimal bzImage (setup header plus payload), and
//! the guest memory the loader tests load them into.

use std::io::Cursor;

use sie_hv::GuestMemory;
use vm_memory::GuestAddress;

use super::{LoadedKernel, Result, load_kernel};

/// 32 MiB of guest RAM at address 0.
pub(crate) fn mem() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
}

/// Loads `image` into fresh guest memory.
pub(crate) fn load(image: &[u8]) -> Result<LoadedKernel> {
    load_kernel(&mem(), &mut Cursor::new(image))
}

/// What the synthetic ELF looks like.
pub(crate) struct ElfSpec {
    /// Physical address of the PT_LOAD segment, also the ELF entry.
    pub paddr: u64,
    /// Memory size of the segment (the file holds 16 bytes of `hlt`).
    pub memsz: u64,
    /// PVH entry to put in a Xen PHYS32_ENTRY note.
    pub pvh_entry: Option<u32>,
}

impl Default for ElfSpec {
    fn default() -> Self {
        Self {
            paddr: 0x20_0000,
            memsz: 0x3000,
            pvh_entry: None,
        }
    }
}

const DATA_OFFSET: u64 = 0x100;
const DATA_LEN: u64 = 16;

fn phdr(out: &mut Vec<u8>, kind: u32, offset: u64, paddr: u64, filesz: u64, memsz: u64) {
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&5u32.to_le_bytes()); // flags R+X
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&paddr.to_le_bytes()); // vaddr
    out.extend_from_slice(&paddr.to_le_bytes());
    out.extend_from_slice(&filesz.to_le_bytes());
    out.extend_from_slice(&memsz.to_le_bytes());
    out.extend_from_slice(&0x1000u64.to_le_bytes());
}

/// Builds the ELF described by `spec`.
pub(crate) fn elf_image(spec: &ElfSpec) -> Vec<u8> {
    let phnum: u16 = if spec.pvh_entry.is_some() { 2 } else { 1 };
    let mut v = Vec::new();
    v.extend_from_slice(b"\x7fELF");
    v.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    v.extend_from_slice(&62u16.to_le_bytes()); // x86_64
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&spec.paddr.to_le_bytes()); // entry
    v.extend_from_slice(&64u64.to_le_bytes()); // phoff
    v.extend_from_slice(&0u64.to_le_bytes()); // shoff
    v.extend_from_slice(&0u32.to_le_bytes()); // flags
    v.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    v.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    v.extend_from_slice(&phnum.to_le_bytes());
    v.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    assert_eq!(v.len(), 64);

    phdr(&mut v, 1, DATA_OFFSET, spec.paddr, DATA_LEN, spec.memsz);
    let note_offset = 64 + 2 * 56;
    if spec.pvh_entry.is_some() {
        phdr(&mut v, 4, note_offset, 0, 20, 20);
    }
    v.resize(note_offset as usize, 0);
    if let Some(entry) = spec.pvh_entry {
        v.extend_from_slice(&4u32.to_le_bytes()); // namesz
        v.extend_from_slice(&4u32.to_le_bytes()); // descsz
        v.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        v.extend_from_slice(b"Xen\0");
        v.extend_from_slice(&entry.to_le_bytes());
    }
    v.resize(DATA_OFFSET as usize, 0);
    v.extend_from_slice(&[0xf4; DATA_LEN as usize]);
    v
}

/// What the synthetic bzImage looks like.
pub(crate) struct BzSpec {
    pub version: u16,
    pub xloadflags: u16,
    pub relocatable: bool,
    pub pref_address: u64,
    pub init_size: u32,
    pub initrd_addr_max: u32,
    pub cmdline_size: u32,
}

impl Default for BzSpec {
    fn default() -> Self {
        Self {
            version: 0x020f,
            xloadflags: 1, // XLF_KERNEL_64
            relocatable: true,
            pref_address: 0x100_0000,
            init_size: 0x10_0000,
            initrd_addr_max: 0x7fff_ffff,
            cmdline_size: 2047,
        }
    }
}

/// Payload bytes after the setup sectors.
pub(crate) const BZ_PAYLOAD_LEN: usize = 0x1000;

/// Builds the bzImage described by `spec`: one setup sector after the boot
/// sector, then a payload of `0xaa` bytes.
pub(crate) fn bzimage(spec: &BzSpec) -> Vec<u8> {
    let mut v = vec![0u8; 1024];
    v[0x1f1] = 1; // setup_sects
    v[0x1f4..0x1f8].copy_from_slice(&((BZ_PAYLOAD_LEN / 16) as u32).to_le_bytes());
    v[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    v[0x202..0x206].copy_from_slice(b"HdrS");
    v[0x206..0x208].copy_from_slice(&spec.version.to_le_bytes());
    v[0x211] = 1; // LOADED_HIGH
    v[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    v[0x22c..0x230].copy_from_slice(&spec.initrd_addr_max.to_le_bytes());
    v[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    v[0x234] = u8::from(spec.relocatable);
    v[0x236..0x238].copy_from_slice(&spec.xloadflags.to_le_bytes());
    v[0x238..0x23c].copy_from_slice(&spec.cmdline_size.to_le_bytes());
    v[0x258..0x260].copy_from_slice(&spec.pref_address.to_le_bytes());
    v[0x260..0x264].copy_from_slice(&spec.init_size.to_le_bytes());
    v.resize(1024 + BZ_PAYLOAD_LEN, 0xaa);
    v
}
