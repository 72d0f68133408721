//! The kernel loader (`sie_arch::loader::load_kernel`) on fuzzed ELF and
//! bzImage files, into 8 MiB of fresh guest memory.
//!
//! The input is the image, with its format's magic forced in so every run
//! gets past format detection. Checked on success: the kernel ends inside
//! RAM and above 1 MiB, nothing was written below 1 MiB (sie's boot
//! structures live there), and the bytes loaded are the file's: for a
//! bzImage its protected-mode part at 1 MiB, entered at 1 MiB + 0x200; for
//! an ELF the last loadable segment at its physical address.

use std::io::Cursor;

use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, PT_LOAD};
use sie_arch::loader::{EntryMode, KernelFormat, LoadedKernel, load_kernel};
use sie_virtio::GuestMemory;
use vm_memory::{ByteValued, Bytes, GuestAddress};

/// Guest RAM, bytes.
const MEM_SIZE: u64 = 8 << 20;
/// Where sie's boot structures end and kernels may start.
const HIMEM_START: u64 = 1 << 20;
/// Where the bzImage magic goes.
const HDRS_AT: usize = 0x202;
/// Longest stretch of loaded bytes compared with the file.
const COMPARED: usize = 64 * 1024;

pub fn elf(data: &[u8]) {
    let mut image = data.to_vec();
    if image.len() < 4 {
        image.resize(4, 0);
    }
    image[..4].copy_from_slice(b"\x7fELF");
    let mem = memory();
    let Ok(kernel) = load_kernel(&mem, &mut Cursor::new(&image)) else {
        return;
    };
    assert_eq!(kernel.format, KernelFormat::Elf);
    assert!(kernel.setup_header.is_none(), "an ELF with a setup header");
    common(&mem, &kernel);
    // The segments were checked to lie inside the file and RAM; the last
    // one linux-loader copied is intact.
    let ehdr: Elf64_Ehdr = read_struct(&image, 0).expect("loaded, so whole");
    let phdrs: Vec<Elf64_Phdr> = (0..usize::from(ehdr.e_phnum))
        .filter_map(|i| {
            let at = usize::try_from(ehdr.e_phoff).ok()? + i * size_of::<Elf64_Phdr>();
            read_struct(&image, at)
        })
        .collect();
    if let Some(last) = phdrs
        .iter()
        .rev()
        .find(|p| p.p_type == PT_LOAD && p.p_filesz > 0)
    {
        let len = (last.p_filesz as usize).min(COMPARED);
        let from = last.p_offset as usize;
        assert_loaded(&mem, last.p_paddr, &image[from..from + len]);
    }
}

pub fn bzimage(data: &[u8]) {
    let mut image = data.to_vec();
    if image.len() < HDRS_AT + 4 {
        image.resize(HDRS_AT + 4, 0);
    }
    image[HDRS_AT..HDRS_AT + 4].copy_from_slice(b"HdrS");
    let mem = memory();
    let Ok(kernel) = load_kernel(&mem, &mut Cursor::new(&image)) else {
        return;
    };
    assert_eq!(kernel.format, KernelFormat::BzImage);
    assert_eq!(kernel.mode, EntryMode::Linux64);
    assert_eq!(kernel.entry, GuestAddress(HIMEM_START + 0x200));
    let header = kernel
        .setup_header
        .expect("a bzImage keeps its setup header");
    assert_eq!(
        { header.code32_start },
        HIMEM_START as u32,
        "code32_start is not the load address"
    );
    common(&mem, &kernel);
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    let payload = &image[setup_size..];
    assert_loaded(&mem, HIMEM_START, &payload[..payload.len().min(COMPARED)]);
}

/// A `T` copied out of `bytes` at `at` (unaligned), if it is all there.
fn read_struct<T: ByteValued>(bytes: &[u8], at: usize) -> Option<T> {
    let mut value = T::zeroed();
    let len = value.as_slice().len();
    value
        .as_mut_slice()
        .copy_from_slice(bytes.get(at..at.checked_add(len)?)?);
    Some(value)
}

fn memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory")
}

/// What holds for any loaded kernel.
fn common(mem: &GuestMemory, kernel: &LoadedKernel) {
    let end = kernel.end.0;
    assert!(
        (HIMEM_START..=MEM_SIZE).contains(&end),
        "kernel ends at {end:#x}, outside RAM above 1 MiB"
    );
    let mut low = vec![0u8; HIMEM_START as usize];
    mem.read_slice(&mut low, GuestAddress(0))
        .expect("low memory");
    if let Some(at) = low.iter().position(|&b| b != 0) {
        panic!("the loader wrote below 1 MiB, at {at:#x}");
    }
}

fn assert_loaded(mem: &GuestMemory, addr: u64, expected: &[u8]) {
    let mut got = vec![0u8; expected.len()];
    mem.read_slice(&mut got, GuestAddress(addr))
        .expect("loaded bytes are in RAM");
    assert!(got == expected, "the bytes at {addr:#x} are not the file's");
}
