//! The PVH `hvm_start_info` (version 1: with the memory map), its module
//! list (the initrd) and memory map table.

use linux_loader::loader::elf::start_info::{
    XEN_HVM_START_MAGIC_VALUE, hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use super::{BootInfoError, Result};
use crate::layout::{CMDLINE_ADDR, PVH_INFO_ADDR, PVH_MEMMAP_ADDR, PVH_MODLIST_ADDR, e820_map};

const ENTRY_SIZE: u64 = std::mem::size_of::<hvm_memmap_table_entry>() as u64;

/// Fills and writes the start info; returns its address.
pub(super) fn write(
    mem: &GuestMemory,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
    mem_size: u64,
) -> Result<GuestAddress> {
    let map = e820_map(mem_size);
    for (i, entry) in map.iter().enumerate() {
        let raw = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            // The XEN_HVM_MEMMAP_TYPE_* values are the e820 numbers.
            type_: entry.kind.e820_type(),
            reserved: 0,
        };
        mem.write_obj(raw, GuestAddress(PVH_MEMMAP_ADDR + i as u64 * ENTRY_SIZE))
            .map_err(|e| BootInfoError::Write("PVH memory map", e))?;
    }

    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: rsdp.map_or(0, |a| a.0),
        memmap_paddr: PVH_MEMMAP_ADDR,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let module = hvm_modlist_entry {
            paddr: paddr.0,
            size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_ADDR))
            .map_err(|e| BootInfoError::Write("PVH module list", e))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_ADDR;
    }
    let addr = GuestAddress(PVH_INFO_ADDR);
    mem.write_obj(info, addr)
        .map_err(|e| BootInfoError::Write("PVH start info", e))?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot_info::tests::{kernel, mem};
    use crate::boot_info::write_boot_info;
    use crate::loader::EntryMode;

    #[test]
    fn start_info_has_magic_cmdline_rsdp_and_memmap() {
        let mem = mem();
        let k = kernel(EntryMode::Pvh);
        let at =
            write_boot_info(&mem, &k, "x", None, Some(GuestAddress(0xe0000)), 64 << 20).unwrap();
        assert_eq!(at, GuestAddress(PVH_INFO_ADDR));
        let info: hvm_start_info = mem.read_obj(at).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.nr_modules, 0);
        assert_eq!(info.modlist_paddr, 0);
        let map = e820_map(64 << 20);
        assert_eq!(info.memmap_entries as usize, map.len());
        for (i, want) in map.iter().enumerate() {
            let raw: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(info.memmap_paddr + i as u64 * ENTRY_SIZE))
                .unwrap();
            assert_eq!(
                (raw.addr, raw.size, raw.type_),
                (want.addr, want.size, want.kind.e820_type())
            );
        }
    }

    #[test]
    fn initrd_is_the_one_module() {
        let mem = mem();
        let k = kernel(EntryMode::Pvh);
        let initrd = Some((GuestAddress(0x300_0000), 1234));
        write_boot_info(&mem, &k, "", initrd, None, 64 << 20).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_ADDR)).unwrap();
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 1234));
        assert_eq!(info.rsdp_paddr, 0);
    }
}
