//! Initrd placement: page-aligned at the top of low RAM, under the kernel's
//! `initrd_addr_max`, above the kernel.

use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, ReadVolatile};

use super::{LoadedKernel, LoaderError, Result};
use crate::layout::{HIMEM_START, MMIO_HOLE_START};

const PAGE_MASK: u64 = 0xfff;
/// The boot protocol's initrd limit for kernels whose header does not state
/// one (protocol < 2.03).
const DEFAULT_INITRD_ADDR_MAX: u32 = 0x37ff_ffff;

/// Reads `size` bytes of `initrd` into guest memory at the highest page
/// that keeps it below the MMIO hole and the kernel's `initrd_addr_max`
/// (bzImage only) and above `kernel.end`. Returns its address and size.
pub fn load_initrd<F: ReadVolatile>(
    mem: &GuestMemory,
    initrd: &mut F,
    size: u64,
    kernel: &LoadedKernel,
) -> Result<(GuestAddress, u64)> {
    let too_large = || LoaderError::InitrdTooLarge(size);
    let mut limit = low_ram_end(mem);
    if let Some(hdr) = kernel.setup_header {
        let max = match hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_ADDR_MAX,
            m => m,
        };
        // initrd_addr_max is the highest address the initrd may occupy.
        limit = limit.min(u64::from(max) + 1);
    }
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !PAGE_MASK;
    let floor = kernel
        .end
        .0
        .checked_add(PAGE_MASK)
        .map(|e| e & !PAGE_MASK)
        .ok_or_else(too_large)?
        .max(HIMEM_START);
    if addr < floor {
        return Err(too_large());
    }
    let count = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, count)
        .map_err(LoaderError::InitrdRead)?;
    Ok((GuestAddress(addr), size))
}

/// End (exclusive) of the RAM below the MMIO hole.
fn low_ram_end(mem: &GuestMemory) -> u64 {
    mem.iter()
        .filter(|r| r.start_addr().0 < MMIO_HOLE_START)
        .map(|r| r.start_addr().0.saturating_add(r.len()))
        .max()
        .unwrap_or(0)
        .min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::test_images::{BzSpec, ElfSpec, bzimage, elf_image};
    use crate::loader::{EntryMode, KernelFormat, load_kernel};
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    fn mem(size: u64) -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn elf_kernel(end: u64) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            mode: EntryMode::Linux64,
            setup_header: None,
            end: GuestAddress(end),
            format: KernelFormat::Elf,
        }
    }

    #[test]
    fn initrd_goes_to_the_top_of_ram_page_aligned() {
        let mem = mem(32 * MIB);
        let data = vec![0x5a; 5000];
        let (addr, size) =
            load_initrd(&mem, &mut data.as_slice(), 5000, &elf_kernel(2 * MIB)).unwrap();
        assert_eq!(size, 5000);
        assert_eq!(addr.0 & PAGE_MASK, 0);
        assert_eq!(addr, GuestAddress(32 * MIB - 0x2000));
        let mut back = vec![0; 5000];
        mem.read_slice(&mut back, addr).unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn bzimage_initrd_addr_max_is_respected() {
        let mem = mem(32 * MIB);
        let spec = BzSpec {
            initrd_addr_max: 0x1ff_ffff,
            ..Default::default()
        };
        let kernel = load_kernel(&mem, &mut Cursor::new(bzimage(&spec))).unwrap();
        let (addr, _) = load_initrd(&mem, &mut [1u8; 100].as_slice(), 100, &kernel).unwrap();
        assert_eq!(addr, GuestAddress(0x200_0000 - 0x1000));
    }

    #[test]
    fn initrd_overlapping_the_kernel_is_rejected() {
        let mem = mem(32 * MIB);
        let size = 31 * MIB;
        let data = vec![0u8; size as usize];
        let err = load_initrd(&mem, &mut data.as_slice(), size, &elf_kernel(2 * MIB)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("initrd ({size} bytes) does not fit in guest memory")
        );
    }

    #[test]
    fn initrd_larger_than_memory_is_rejected() {
        let mem = mem(32 * MIB);
        let err = load_initrd(&mem, &mut [].as_slice(), u64::MAX, &elf_kernel(2 * MIB));
        assert!(matches!(err, Err(LoaderError::InitrdTooLarge(u64::MAX))));
    }

    #[test]
    fn short_initrd_file_is_an_error() {
        let mem = mem(32 * MIB);
        let err = load_initrd(&mem, &mut [0u8; 10].as_slice(), 100, &elf_kernel(2 * MIB));
        assert!(matches!(err, Err(LoaderError::InitrdRead(_))));
    }

    #[test]
    fn initrd_stays_below_the_mmio_hole() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), MMIO_HOLE_START as usize),
            (GuestAddress(1 << 32), MIB as usize),
        ])
        .unwrap();
        let kernel = load_kernel(&mem, &mut Cursor::new(elf_image(&ElfSpec::default()))).unwrap();
        let (addr, _) = load_initrd(&mem, &mut [1u8; 10].as_slice(), 10, &kernel).unwrap();
        assert_eq!(addr, GuestAddress(MMIO_HOLE_START - 0x1000));
    }
}
