//! The guest physical memory map: where RAM, the MMIO hole and sie's boot
//! structures live, and the e820 map the guest is told about.
//!
//! ```text
//! 0x0000_0000  unused (real-mode IVT/BDA, left zero)
//! 0x0000_1000  GDT                      (BOOT_GDT_ADDR)
//! 0x0000_2000  IDT, empty               (BOOT_IDT_ADDR)
//! 0x0000_6000  PVH start_info, modlist, memmap
//! 0x0000_7000  Linux zero page          (ZERO_PAGE_ADDR)
//! 0x0000_8000  boot stack, grows down from BOOT_STACK_POINTER
//! 0x0000_9000  PML4, PDPT, 4 PDs: identity map of the first 4 GiB
//! 0x0002_0000  kernel command line      (CMDLINE_ADDR, CMDLINE_MAX_SIZE)
//! 0x0009_FC00  EBDA .. 1 MiB: reserved; ACPI tables at 0xE_0000
//! 0x0010_0000  kernel (bzImage load address; ELF at its own addresses)
//!   ...        RAM up to min(mem size, MMIO_HOLE_START)
//! 0xC000_0000  MMIO hole: the platform device window (boot timer, virtio-mmio
//!              slots: placed by the VMM's device manager),
//! 0xD000_0000  the PCI 32-bit BAR window (with PCI),
//! 0xE000_0000  the PCI ECAM window, bus 0 (with PCI), IOAPIC, LAPIC
//! 0x1_0000_0000 the rest of RAM, if any; then, 1 GiB-aligned, the PCI
//!              64-bit BAR window (with PCI, `pci_mmio64_window`); 16 GiB past RAM's
//!              1 GiB-aligned end, the device-memory window (virtio-pmem files,
//!              virtio-mem)
//! ```
//!
//! ```
//! use sie_arch::layout::{ram_regions, e820_map, E820Kind};
//! let regions = ram_regions(128 << 20).unwrap();
//! assert_eq!(regions.len(), 1);
//! assert!(e820_map(128 << 20).iter().any(|e| e.kind == E820Kind::Ram));
//! ```

use vm_memory::GuestAddress;

/// Start of the 32-bit MMIO hole; RAM below it, the rest of RAM from 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xC000_0000;
/// End (exclusive) of the 32-bit MMIO hole.
pub const MMIO_HOLE_END: u64 = 1 << 32;
/// Where RAM resumes above the hole.
pub const HIGH_RAM_START: u64 = MMIO_HOLE_END;

/// Firecracker's boot-timer page: a guest write of 123 marks "boot done".
pub const BOOT_TIMER_ADDR: u64 = MMIO_HOLE_START;
/// Size of the boot-timer region in bytes.
pub const BOOT_TIMER_SIZE: u64 = 0x1000;
/// Start of the window the VMM's device manager places MMIO devices in
/// (the boot timer at its fixed address, then virtio-mmio slots).
pub const PLATFORM_MMIO_START: u64 = MMIO_HOLE_START;
/// Size of that window in bytes (256 MiB, well below the I/O APIC).
pub const PLATFORM_MMIO_SIZE: u64 = 0x1000_0000;
/// Room left above RAM for the PCI 64-bit BAR window (16 GiB from the
/// first 1 GiB boundary past RAM) before device memory starts.
pub const DEVICE_MEMORY_GAP: u64 = 16 << 30;
/// Size of the device-memory window (virtio-pmem files): 32 GiB, so the
/// window of a guest with up to 12 GiB of RAM ends within the 36 physical
/// address bits every x86-64 CPU gives a guest.
pub const DEVICE_MEMORY_SIZE: u64 = 32 << 30;

/// The window device memory (host files and memory the guest reaches as
/// physical memory, outside RAM) is placed in, for RAM ending at
/// `ram_end`: (base, size), 1 GiB aligned past the PCI 64-bit window's
/// room. `None` if it would not fit the 64-bit address space.
pub fn device_memory_window(ram_end: u64) -> Option<(u64, u64)> {
    let base = ram_end
        .max(HIGH_RAM_START)
        .checked_next_multiple_of(1 << 30)?
        .checked_add(DEVICE_MEMORY_GAP)?;
    base.checked_add(DEVICE_MEMORY_SIZE)?;
    Some((base, DEVICE_MEMORY_SIZE))
}

/// The PCI 32-bit BAR window (with PCI): BARs that must sit below 4 GiB.
pub const PCI_MMIO32_START: u64 = PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE;
/// Size of the 32-bit BAR window in bytes (256 MiB).
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
/// The PCI ECAM configuration window (with PCI): 1 MiB per bus, bus 0 only.
pub const PCI_ECAM_START: u64 = PCI_MMIO32_START + PCI_MMIO32_SIZE;
/// Size of the ECAM window in bytes (one bus).
pub const PCI_ECAM_SIZE: u64 = 1 << 20;
/// Size of the PCI 64-bit BAR window in bytes (16 GiB: far more than
/// virtio BARs need, and within the 36 physical address bits every x86-64
/// CPU has for guests with up to 44 GiB of RAM).
pub const PCI_MMIO64_SIZE: u64 = 16 << 30;
/// The 64-bit window's alignment.
const PCI_MMIO64_ALIGN: u64 = 1 << 30;
/// I/O APIC register window.
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// Local APIC register window.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;
/// KVM's three-page task-state area for real-mode emulation on Intel
/// (`KVM_SET_TSS_ADDR`): in the MMIO hole, above the LAPIC, never RAM.
pub const KVM_TSS_ADDR: u64 = 0xFFFB_D000;
/// KVM's identity-map page (`KVM_SET_IDENTITY_MAP_ADDR`), just below the TSS.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xFFFB_C000;

/// GDT for the boot vCPU.
pub const BOOT_GDT_ADDR: u64 = 0x1000;
/// IDT for the boot vCPU (empty: nothing is written there).
pub const BOOT_IDT_ADDR: u64 = 0x2000;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map table.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Linux `boot_params` ("zero page").
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial RSP for the 64-bit Linux entry (16-byte aligned, below the PML4).
pub const BOOT_STACK_POINTER: u64 = 0x8FF0;
/// PML4 of the boot identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT of the boot identity map.
pub const PDPT_ADDR: u64 = 0xA000;
/// First of the four page directories (2 MiB pages) of the boot identity map.
pub const PD_ADDR: u64 = 0xB000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Largest command line sie writes, in bytes including the NUL. Linux's x86
/// COMMAND_LINE_SIZE is 2048 by default; bzImages state theirs in the header.
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The VM Generation ID: 16 bytes the guest reads through the DSDT's
/// `VGEN` device (`ADDR`), in the reserved area just below the ACPI tables.
pub const VMGENID_ADDR: u64 = ACPI_START - 0x1000;
/// Start of the extended BIOS data area; reserved from here to 1 MiB.
pub const EBDA_START: u64 = 0x9_FC00;
/// ACPI tables, in the BIOS area Linux scans for the RSDP.
pub const ACPI_START: u64 = 0xE_0000;
/// End (exclusive) of the BIOS area and of the ACPI tables.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of "high" memory: the bzImage load address and lowest kernel address.
pub const HIMEM_START: u64 = 0x10_0000;

const PAGE_SIZE: u64 = 0x1000;

// The stack grows down from just below the PML4, 16-byte aligned as the
// SysV ABI expects at a call boundary.
const _: () = assert!(BOOT_STACK_POINTER < PML4_ADDR && BOOT_STACK_POINTER.is_multiple_of(16));

/// Errors computing the memory map.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// Guest memory size is zero.
    #[error("guest memory size is zero")]
    Empty,
    /// Guest memory size is not a whole number of 4 KiB pages.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    NotPageAligned(u64),
    /// Guest memory size does not fit the address space above the MMIO hole.
    #[error("guest memory size {0:#x} is too large for the guest address space")]
    TooLarge(u64),
}

/// The RAM regions for `mem_size_bytes` of guest memory, as (start, length)
/// pairs ready for `GuestMemoryMmap::from_ranges`: one region below the MMIO
/// hole and, when RAM is larger than the hole's start, one from 4 GiB up.
pub fn ram_regions(mem_size_bytes: u64) -> Result<Vec<(GuestAddress, usize)>, LayoutError> {
    if mem_size_bytes == 0 {
        return Err(LayoutError::Empty);
    }
    if !mem_size_bytes.is_multiple_of(PAGE_SIZE) {
        return Err(LayoutError::NotPageAligned(mem_size_bytes));
    }
    let too_large = LayoutError::TooLarge(mem_size_bytes);
    let low = mem_size_bytes.min(MMIO_HOLE_START);
    let high = mem_size_bytes - low;
    let low_len = usize::try_from(low).map_err(|_| too_large.clone())?;
    let mut regions = vec![(GuestAddress(0), low_len)];
    if high > 0 {
        // The last byte of high RAM must be addressable.
        HIGH_RAM_START
            .checked_add(high - 1)
            .ok_or_else(|| too_large.clone())?;
        let high_len = usize::try_from(high).map_err(|_| too_large)?;
        regions.push((GuestAddress(HIGH_RAM_START), high_len));
    }
    Ok(regions)
}

/// The PCI 64-bit BAR window for `mem_size_bytes` of RAM: (base, size),
/// the base the first 1 GiB boundary at or above both 4 GiB and the end of
/// RAM. `None` if it would not fit in the 64-bit address space.
pub fn pci_mmio64_window(mem_size_bytes: u64) -> Option<(u64, u64)> {
    let high = mem_size_bytes.saturating_sub(MMIO_HOLE_START);
    let ram_end = HIGH_RAM_START.checked_add(high)?;
    let base = ram_end.checked_next_multiple_of(PCI_MMIO64_ALIGN)?;
    base.checked_add(PCI_MMIO64_SIZE)?;
    Some((base, PCI_MMIO64_SIZE))
}

/// The end (exclusive) of RAM below the MMIO hole.
pub fn low_ram_end(mem_size_bytes: u64) -> u64 {
    mem_size_bytes.min(MMIO_HOLE_START)
}

/// What an e820 range holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM.
    Ram,
    /// Reserved: the guest must not use it.
    Reserved,
    /// ACPI reclaimable. Not produced by [`e820_map`] today: sie's ACPI tables
    /// live in the reserved BIOS area so that Linux's RSDP scan finds them.
    Acpi,
}

impl E820Kind {
    /// The e820 type number (also the PVH `XEN_HVM_MEMMAP_TYPE_*` value).
    pub fn e820_type(self) -> u32 {
        match self {
            E820Kind::Ram => 1,
            E820Kind::Reserved => 2,
            E820Kind::Acpi => 3,
        }
    }
}

/// One entry of the guest memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// What the range holds.
    pub kind: E820Kind,
}

/// The memory map for `mem_size_bytes` of RAM laid out by [`ram_regions`]:
/// low RAM up to the EBDA, the reserved EBDA/BIOS area (which holds the ACPI
/// tables), RAM from 1 MiB to the hole, and RAM above 4 GiB. The MMIO hole is
/// left out, as on real machines.
pub fn e820_map(mem_size_bytes: u64) -> Vec<E820Entry> {
    let mut map = Vec::with_capacity(4);
    let low_end = low_ram_end(mem_size_bytes);
    map.push(E820Entry {
        addr: 0,
        size: low_end.min(EBDA_START),
        kind: E820Kind::Ram,
    });
    map.push(E820Entry {
        addr: EBDA_START,
        size: HIMEM_START - EBDA_START,
        kind: E820Kind::Reserved,
    });
    if low_end > HIMEM_START {
        map.push(E820Entry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820Kind::Ram,
        });
    }
    if mem_size_bytes > MMIO_HOLE_START {
        map.push(E820Entry {
            addr: HIGH_RAM_START,
            size: mem_size_bytes - MMIO_HOLE_START,
            kind: E820Kind::Ram,
        });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_memory_is_one_region_from_zero() {
        assert_eq!(
            ram_regions(128 * MIB).unwrap(),
            vec![(GuestAddress(0), (128 * MIB) as usize)]
        );
    }

    #[test]
    fn large_memory_skips_the_mmio_hole() {
        assert_eq!(
            ram_regions(4 * GIB).unwrap(),
            vec![
                (GuestAddress(0), MMIO_HOLE_START as usize),
                (GuestAddress(4 * GIB), GIB as usize)
            ]
        );
    }

    #[test]
    fn memory_exactly_up_to_the_hole_is_one_region() {
        assert_eq!(ram_regions(3 * GIB).unwrap().len(), 1);
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert_eq!(ram_regions(0), Err(LayoutError::Empty));
        assert_eq!(ram_regions(4097), Err(LayoutError::NotPageAligned(4097)));
        let huge = !(PAGE_SIZE - 1);
        assert_eq!(ram_regions(huge), Err(LayoutError::TooLarge(huge)));
    }

    #[test]
    fn e820_small_memory() {
        let map = e820_map(128 * MIB);
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: EBDA_START,
                    kind: E820Kind::Ram
                },
                E820Entry {
                    addr: EBDA_START,
                    size: HIMEM_START - EBDA_START,
                    kind: E820Kind::Reserved
                },
                E820Entry {
                    addr: MIB,
                    size: 127 * MIB,
                    kind: E820Kind::Ram
                },
            ]
        );
    }

    #[test]
    fn e820_large_memory_has_ram_above_4g_and_nothing_in_the_hole() {
        let map = e820_map(4 * GIB);
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_HOLE_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: 4 * GIB,
                size: GIB,
                kind: E820Kind::Ram
            }
        );
        assert!(
            map.iter()
                .all(|e| e.addr + e.size <= MMIO_HOLE_START || e.addr >= MMIO_HOLE_END)
        );
    }

    #[test]
    fn pci_windows_sit_in_the_hole_and_above_ram() {
        const {
            assert!(PCI_MMIO32_START >= PLATFORM_MMIO_START + PLATFORM_MMIO_SIZE);
            assert!(PCI_ECAM_START >= PCI_MMIO32_START + PCI_MMIO32_SIZE);
            assert!(PCI_ECAM_START + PCI_ECAM_SIZE <= IOAPIC_ADDR);
        }
        assert_eq!(
            pci_mmio64_window(128 * MIB),
            Some((4 * GIB, PCI_MMIO64_SIZE))
        );
        // 5 GiB of RAM: 2 GiB above 4 GiB, so the window starts at 6 GiB.
        assert_eq!(pci_mmio64_window(5 * GIB), Some((6 * GIB, PCI_MMIO64_SIZE)));
        // An end of RAM between boundaries is rounded up.
        let (base, _) = pci_mmio64_window(5 * GIB + 4096).unwrap();
        assert_eq!(base, 7 * GIB);
        assert_eq!(pci_mmio64_window(u64::MAX - 4095), None);
    }

    #[test]
    fn e820_types_match_the_spec() {
        assert_eq!(E820Kind::Ram.e820_type(), 1);
        assert_eq!(E820Kind::Reserved.e820_type(), 2);
        assert_eq!(E820Kind::Acpi.e820_type(), 3);
    }

    #[test]
    fn boot_structures_stay_below_the_ebda_and_do_not_overlap() {
        let areas = [
            (BOOT_GDT_ADDR, 0x1000),
            (BOOT_IDT_ADDR, 0x1000),
            (PVH_INFO_ADDR, 0x40),
            (PVH_MODLIST_ADDR, 0x40),
            (PVH_MEMMAP_ADDR, 0xF80),
            (ZERO_PAGE_ADDR, 0x1000),
            (0x8000, 0x1000), // stack
            (PML4_ADDR, 0x1000),
            (PDPT_ADDR, 0x1000),
            (PD_ADDR, 0x4000),
            (CMDLINE_ADDR, CMDLINE_MAX_SIZE as u64),
        ];
        for (i, &(a, alen)) in areas.iter().enumerate() {
            assert!(a + alen <= EBDA_START);
            for &(b, blen) in &areas[i + 1..] {
                assert!(a + alen <= b || b + blen <= a, "{a:#x} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn device_memory_sits_past_ram_and_the_pci_room() {
        const GIB: u64 = 1 << 30;
        assert_eq!(device_memory_window(128 << 20), Some((20 * GIB, 32 * GIB)));
        assert_eq!(
            device_memory_window(5 * GIB + 4096),
            Some((22 * GIB, 32 * GIB))
        );
        assert_eq!(device_memory_window(u64::MAX - 4095), None);
    }
}
