//! The Linux zero page (`boot_params`) for the 64-bit boot protocol.

use linux_loader::loader::bootparam::{
    CAN_USE_HEAP, LOADED_HIGH, boot_e820_entry, boot_params, setup_header,
};
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use super::{BootInfoError, Result};
use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE, ZERO_PAGE_ADDR, e820_map};
use crate::loader::LoadedKernel;

const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS", little-endian.
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The protocol version sie speaks when it builds the header itself.
const PROTOCOL_VERSION: u16 = 0x020c;
/// "Undefined" boot loader: sie has no registered loader id.
const LOADER_UNDEFINED: u8 = 0xff;
/// End of the setup heap relative to the real-mode code. The 64-bit entry
/// never runs real-mode setup; the value only makes CAN_USE_HEAP consistent.
const HEAP_END: u16 = 0xfe00;

/// Fills and writes the zero page; returns its address.
pub(super) fn write(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
    mem_size: u64,
) -> Result<GuestAddress> {
    let mut params = boot_params {
        hdr: kernel.setup_header.unwrap_or_else(fresh_header),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    params.hdr.heap_end_ptr = HEAP_END;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.ext_cmd_line_ptr = 0;
    if kernel.setup_header.is_none() {
        params.hdr.cmdline_size = cmdline_len as u32;
    }
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr.0 as u32;
        params.ext_ramdisk_image = (addr.0 >> 32) as u32;
        params.hdr.ramdisk_size = size as u32;
        params.ext_ramdisk_size = (size >> 32) as u32;
    }
    if let Some(rsdp) = rsdp {
        params.acpi_rsdp_addr = rsdp.0;
    }
    let map = e820_map(mem_size);
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind.e820_type(),
        };
    }
    // e820_map returns at most 4 entries, far below the table's 128.
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;

    let addr = GuestAddress(ZERO_PAGE_ADDR);
    mem.write_obj(params, addr)
        .map_err(|e| BootInfoError::Write("zero page", e))?;
    Ok(addr)
}

/// A setup header for kernels that bring none (ELF vmlinux).
fn fresh_header() -> setup_header {
    setup_header {
        boot_flag: BOOT_FLAG,
        header: HDRS_MAGIC,
        version: PROTOCOL_VERSION,
        cmdline_size: (CMDLINE_MAX_SIZE - 1) as u32,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_info::tests::{kernel, mem};
    use crate::boot_info::write_boot_info;
    use crate::layout::{E820Kind, MMIO_HOLE_START};
    use crate::loader::EntryMode;

    fn read(mem: &GuestMemory) -> boot_params {
        mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
    }

    #[test]
    fn fresh_header_for_elf_has_the_magic_and_loader_fields() {
        let mem = mem();
        let k = kernel(EntryMode::Linux64);
        let at = write_boot_info(&mem, &k, "console=ttyS0", None, None, 64 << 20).unwrap();
        assert_eq!(at, GuestAddress(ZERO_PAGE_ADDR));
        let p = read(&mem);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.header }, HDRS_MAGIC);
        assert!({ p.hdr.version } >= 0x020c);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.loadflags }, LOADED_HIGH | CAN_USE_HEAP);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ p.hdr.cmdline_size }, 13);
        assert_eq!({ p.hdr.ramdisk_image }, 0);
        assert_eq!({ p.acpi_rsdp_addr }, 0);
    }

    #[test]
    fn bzimage_header_is_copied_and_completed() {
        let mem = mem();
        let mut k = kernel(EntryMode::Linux64);
        let hdr = setup_header {
            version: 0x020f,
            kernel_alignment: 0x20_0000,
            cmdline_size: 2047,
            xloadflags: 1,
            ..fresh_header()
        };
        k.setup_header = Some(hdr);
        write_boot_info(&mem, &k, "x", None, None, 64 << 20).unwrap();
        let p = read(&mem);
        assert_eq!({ p.hdr.version }, 0x020f);
        assert_eq!({ p.hdr.kernel_alignment }, 0x20_0000);
        assert_eq!({ p.hdr.cmdline_size }, 2047);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn initrd_rsdp_and_e820_are_filled() {
        let mem = mem();
        let k = kernel(EntryMode::Linux64);
        let initrd = Some((GuestAddress(0x1_2345_6000), 0x1_0000_0010));
        let size = 4u64 << 30;
        write_boot_info(&mem, &k, "", initrd, Some(GuestAddress(0xe0000)), size).unwrap();
        let p = read(&mem);
        assert_eq!({ p.hdr.ramdisk_image }, 0x2345_6000);
        assert_eq!({ p.ext_ramdisk_image }, 1);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10);
        assert_eq!({ p.ext_ramdisk_size }, 1);
        assert_eq!({ p.acpi_rsdp_addr }, 0xe0000);
        let map = e820_map(size);
        assert_eq!(usize::from(p.e820_entries), map.len());
        for (raw, want) in p.e820_table.iter().zip(&map) {
            assert_eq!(({ raw.addr }, { raw.size }), (want.addr, want.size));
            assert_eq!({ raw.r#type }, want.kind.e820_type());
        }
        let last = p.e820_table[map.len() - 1];
        assert_eq!({ last.addr }, 1 << 32);
        assert_eq!({ last.size }, size - MMIO_HOLE_START);
        assert_eq!(map[0].kind, E820Kind::Ram);
    }
}
