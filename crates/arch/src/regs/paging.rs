//! Boot page tables: an identity map of the first 4 GiB with 2 MiB pages.
//! 4 GiB (not just the kernel) so that the MMIO hole, with the boot timer
//! and the APICs, is reachable from the 64-bit entry. 2 MiB pages, not
//! 1 GiB, because those need a CPUID feature the guest may not have.

use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{PD_ADDR, PDPT_ADDR, PML4_ADDR};

const PAGE: usize = 4096;
const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const TWO_MIB: u64 = 2 << 20;
/// Page directories needed for 4 GiB of 2 MiB pages.
const PD_COUNT: u64 = 4;

/// Writes the whole tables (PML4, PDPT, four PDs: 24 KiB), so stale
/// entries from an earlier boot cannot survive. Returns the PML4 address.
pub fn write_identity_map(mem: &GuestMemory) -> vm_memory::GuestMemoryResult<GuestAddress> {
    let mut page = [0u8; PAGE];
    set_entry(&mut page, 0, PDPT_ADDR | PRESENT | WRITABLE);
    mem.write_slice(&page, GuestAddress(PML4_ADDR))?;

    page = [0u8; PAGE];
    for i in 0..PD_COUNT {
        set_entry(
            &mut page,
            i as usize,
            (PD_ADDR + i * PAGE as u64) | PRESENT | WRITABLE,
        );
    }
    mem.write_slice(&page, GuestAddress(PDPT_ADDR))?;

    for pd in 0..PD_COUNT {
        for i in 0..PAGE / 8 {
            let addr = (pd * 512 + i as u64) * TWO_MIB;
            set_entry(&mut page, i, addr | PRESENT | WRITABLE | HUGE);
        }
        mem.write_slice(&page, GuestAddress(PD_ADDR + pd * PAGE as u64))?;
    }
    Ok(GuestAddress(PML4_ADDR))
}

fn set_entry(page: &mut [u8; PAGE], index: usize, value: u64) {
    page[index * 8..index * 8 + 8].copy_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU does for a 2 MiB mapping.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let entry = |table: u64, index: u64| -> u64 {
            mem.read_obj(GuestAddress((table & !0xfff) + index * 8))
                .unwrap()
        };
        let pml4e = entry(cr3, (va >> 39) & 0x1ff);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(pml4e & 0x000f_ffff_ffff_f000, (va >> 30) & 0x1ff);
        if pdpte & PRESENT == 0 || pdpte & HUGE != 0 {
            return None;
        }
        let pde = entry(pdpte & 0x000f_ffff_ffff_f000, (va >> 21) & 0x1ff);
        if pde & PRESENT == 0 || pde & HUGE == 0 {
            return None;
        }
        Some((pde & 0x000f_ffff_ffe0_0000) | (va & (TWO_MIB - 1)))
    }

    #[test]
    fn first_4gib_is_identity_mapped_and_nothing_above() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Stale data from an earlier boot must not survive.
        mem.write_obj(u64::MAX, GuestAddress(PML4_ADDR + 8))
            .unwrap();
        let cr3 = write_identity_map(&mem).unwrap().0;
        for va in [0, 0x1234, 0x10_0000, 0xc000_0000, 0xfee0_0000, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 1 << 32), None);
        assert_eq!(translate(&mem, cr3, 1 << 39), None);
    }
}
