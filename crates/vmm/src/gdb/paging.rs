//! Guest-virtual to guest-physical translation for the debugger: a walk of
//! the guest's own page tables from its current CR3, the way the CPU does
//! it (4- and 5-level long-mode paging, PAE and 32-bit paging, with large
//! pages). With paging off, a virtual address is physical.

use vm_memory::{Bytes, GuestAddress};

use sie_hv::GuestMemory;

/// The registers that decide how an address is translated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PagingMode {
    /// CR0 (bit 31: paging on).
    pub cr0: u64,
    /// CR3: the top table.
    pub cr3: u64,
    /// CR4 (bit 4: PSE, bit 5: PAE, bit 12: LA57).
    pub cr4: u64,
    /// EFER (bit 10: long mode active).
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PSE: u64 = 1 << 4;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
/// Physical-address bits 12-51 of a 64-bit entry.
const ADDRESS_MASK: u64 = 0x000f_ffff_ffff_f000;

/// One table level: the address bits it indexes start at `shift`.
struct Level {
    shift: u32,
    /// A set PS bit here maps a large page.
    large_allowed: bool,
}

const LONG_MODE: [Level; 5] = [
    Level {
        shift: 48,
        large_allowed: false,
    },
    Level {
        shift: 39,
        large_allowed: false,
    },
    Level {
        shift: 30,
        large_allowed: true,
    },
    Level {
        shift: 21,
        large_allowed: true,
    },
    Level {
        shift: 12,
        large_allowed: false,
    },
];

impl PagingMode {
    /// The guest-physical address `gva` maps to, `None` when a table entry
    /// on the way is not present or lies outside guest RAM.
    pub fn translate(&self, memory: &GuestMemory, gva: u64) -> Option<u64> {
        if self.cr0 & CR0_PG == 0 {
            return Some(gva);
        }
        if self.efer & EFER_LMA != 0 {
            let levels = if self.cr4 & CR4_LA57 != 0 {
                &LONG_MODE[..]
            } else {
                &LONG_MODE[1..]
            };
            return walk64(memory, self.cr3 & ADDRESS_MASK, levels, gva);
        }
        let gva = gva & 0xffff_ffff;
        if self.cr4 & CR4_PAE != 0 {
            // The 4-entry page-directory-pointer table, 32-byte aligned.
            let pdpte: u64 = memory
                .read_obj(GuestAddress(
                    (self.cr3 & 0xffff_ffe0) + ((gva >> 30) & 3) * 8,
                ))
                .ok()?;
            if pdpte & PRESENT == 0 {
                return None;
            }
            return walk64(memory, pdpte & ADDRESS_MASK, &LONG_MODE[3..], gva);
        }
        self.walk32(memory, gva)
    }

    /// 32-bit paging: two levels of 4-byte entries, 4 MiB pages with PSE.
    fn walk32(&self, memory: &GuestMemory, gva: u64) -> Option<u64> {
        let pde: u32 = memory
            .read_obj(GuestAddress((self.cr3 & 0xffff_f000) + (gva >> 22) * 4))
            .ok()?;
        let pde = u64::from(pde);
        if pde & PRESENT == 0 {
            return None;
        }
        if pde & LARGE != 0 && self.cr4 & CR4_PSE != 0 {
            return Some((pde & 0xffc0_0000) | (gva & 0x3f_ffff));
        }
        let pte: u32 = memory
            .read_obj(GuestAddress(
                (pde & 0xffff_f000) + ((gva >> 12) & 0x3ff) * 4,
            ))
            .ok()?;
        let pte = u64::from(pte);
        if pte & PRESENT == 0 {
            return None;
        }
        Some((pte & 0xffff_f000) | (gva & 0xfff))
    }
}

/// Walks tables of 512 eight-byte entries from `table`.
fn walk64(memory: &GuestMemory, mut table: u64, levels: &[Level], gva: u64) -> Option<u64> {
    for level in levels {
        let index = (gva >> level.shift) & 0x1ff;
        let entry: u64 = memory.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        let page_mask = (1u64 << level.shift) - 1;
        if level.shift == 12 || (level.large_allowed && entry & LARGE != 0) {
            return Some((entry & ADDRESS_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & ADDRESS_MASK;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn memory() -> GuestMemory {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap()
    }

    fn put(memory: &GuestMemory, addr: u64, value: u64) {
        memory.write_obj(value, GuestAddress(addr)).unwrap();
    }

    const LONG: PagingMode = PagingMode {
        cr0: CR0_PG | 1,
        cr3: 0x1000,
        cr4: CR4_PAE,
        efer: EFER_LMA | (1 << 8),
    };

    #[test]
    fn paging_off_is_identity() {
        let mode = PagingMode::default();
        assert_eq!(mode.translate(&memory(), 0x1234_5678), Some(0x1234_5678));
    }

    #[test]
    fn four_level_4k_pages_and_offsets() {
        let m = memory();
        // 0xffff_8000_0020_1abc: PML4 256, PDPT 0, PD 1, PT 1.
        put(&m, 0x1000 + 256 * 8, 0x2000 | 3);
        put(&m, 0x2000, 0x3000 | 3);
        put(&m, 0x3000 + 8, 0x4000 | 3);
        put(&m, 0x4000 + 8, 0x0012_3000 | 3);
        assert_eq!(LONG.translate(&m, 0xffff_8000_0020_1abc), Some(0x0012_3abc));
        // Not present one page further.
        assert_eq!(LONG.translate(&m, 0xffff_8000_0020_2abc), None);
    }

    #[test]
    fn large_pages_keep_the_low_bits_of_the_address() {
        let m = memory();
        put(&m, 0x1000, 0x2000 | 3);
        // A 1 GiB page at PDPT 1, a 2 MiB page at PD 0 of PDPT 0.
        put(&m, 0x2000 + 8, 0x4000_0000 | LARGE | 3);
        put(&m, 0x2000, 0x3000 | 3);
        put(&m, 0x3000, 0x0020_0000 | LARGE | 3);
        assert_eq!(LONG.translate(&m, 0x4123_4567), Some(0x4123_4567));
        assert_eq!(LONG.translate(&m, 0x0001_2345), Some(0x0021_2345));
    }

    #[test]
    fn thirty_two_bit_paging_with_4m_pages() {
        let m = memory();
        let mode = PagingMode {
            cr0: CR0_PG | 1,
            cr3: 0x1000,
            cr4: CR4_PSE,
            efer: 0,
        };
        m.write_obj(0x0040_0000u32 | 0x83, GuestAddress(0x1000 + 0x300 * 4))
            .unwrap();
        assert_eq!(mode.translate(&m, 0xc001_2345), Some(0x0041_2345));
    }
}
