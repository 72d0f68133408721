//! Anonymous guest RAM on the pages `huge_pages` asks for: base pages,
//! transparent huge pages (`MADV_HUGEPAGE`) or 2 MiB hugetlb pages
//! (`MAP_HUGETLB`, reserved when mapped). Booted VMs (`machine-config`)
//! and File-backed restores with huge pages both get their RAM here.

use std::io;

use sie_config::HugePages;
use sie_hv::GuestMemory;
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{GuestAddress, GuestRegionMmap};

/// A hugetlb page.
pub const HUGE_PAGE: u64 = 2 << 20;
/// `MAP_HUGE_2MB`: log2 of the page size in the flags' high bits.
const MAP_HUGE_2MB: i32 = 21 << libc::MAP_HUGE_SHIFT;

/// Guest RAM of `ranges` (guest address, length) on `pages` (None,
/// Transparent or TwoMiB; Snapshot is the caller's to resolve).
pub fn anonymous(ranges: &[(GuestAddress, usize)], pages: HugePages) -> io::Result<GuestMemory> {
    if matches!(pages, HugePages::None | HugePages::Snapshot) {
        return GuestMemory::from_ranges(ranges).map_err(|e| io::Error::other(e.to_string()));
    }
    let mut regions = Vec::with_capacity(ranges.len());
    for &(at, len) in ranges {
        regions.push(region(at, len, pages == HugePages::TwoMiB)?);
    }
    GuestMemory::from_regions(regions).map_err(|e| io::Error::other(e.to_string()))
}

/// One anonymous region: hugetlb pages, or base pages that may become
/// transparent huge pages.
fn region(
    at: GuestAddress,
    len: usize,
    hugetlb: bool,
) -> io::Result<GuestRegionMmap<AtomicBitmap>> {
    if hugetlb && !(len as u64).is_multiple_of(HUGE_PAGE) {
        return Err(io::Error::other(format!(
            "huge_pages 2M: a guest RAM region of {len} bytes is not a whole number of 2 MiB pages"
        )));
    }
    // No MAP_NORESERVE for hugetlb: the pages are reserved now, so a host
    // short of them fails here instead of killing the guest later.
    let flags = if hugetlb {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | MAP_HUGE_2MB
    } else {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
    };
    let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(hugetlb)
        .build()
        .map_err(|e| {
            if hugetlb {
                io::Error::other(format!(
                    "huge_pages 2M: the host has fewer than {} free 2 MiB huge pages ({e}; see /proc/sys/vm/nr_hugepages)",
                    len as u64 / HUGE_PAGE
                ))
            } else {
                io::Error::other(e.to_string())
            }
        })?;
    if !hugetlb {
        check_transparent_huge_pages().map_err(io::Error::other)?;
        // SAFETY: the range is exactly the mapping just made, which the
        // region owns; madvise only changes how the kernel backs it.
        let advised = unsafe { libc::madvise(mapping.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        if advised != 0 {
            return Err(io::Error::other(format!(
                "huge_pages Transparent: madvise(MADV_HUGEPAGE): {}",
                io::Error::last_os_error()
            )));
        }
    }
    GuestRegionMmap::new(mapping, at)
        .ok_or_else(|| io::Error::other("region past the address space"))
}

/// The host's free 2 MiB huge pages not already promised to a mapping
/// (`HugePages_Free - HugePages_Rsvd` in /proc/meminfo).
pub fn free_huge_pages() -> io::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(field("HugePages_Free:").saturating_sub(field("HugePages_Rsvd:")))
}

/// One line naming the shortfall if the host cannot give `mib` MiB of 2 MiB
/// huge pages now: checked when the configuration is given, so the user
/// hears it then, not from a VM that dies when it touches memory.
pub fn check_huge_pages_for(mib: u64) -> Result<(), String> {
    let needed = (mib << 20).div_ceil(HUGE_PAGE);
    let free = free_huge_pages().map_err(|e| format!("reading /proc/meminfo: {e}"))?;
    if free < needed {
        return Err(format!(
            "machine-config: huge_pages \"2M\" needs {needed} free 2 MiB huge pages for {mib} MiB, the host has {free} (raise /proc/sys/vm/nr_hugepages)"
        ));
    }
    Ok(())
}

/// Where the host says when it backs memory with transparent huge pages.
const THP_ENABLED: &str = "/sys/kernel/mm/transparent_hugepage/enabled";

/// One line if `huge_pages: "Transparent"` would do nothing on this host:
/// its transparent huge pages are off (`[never]`) or absent. With
/// `[always]` or `[madvise]` sie's `MADV_HUGEPAGE` takes effect.
pub fn check_transparent_huge_pages() -> Result<(), String> {
    let setting = std::fs::read_to_string(THP_ENABLED).map_err(|e| {
        format!(
            "huge_pages \"Transparent\": the host kernel offers no transparent huge pages ({THP_ENABLED}: {e}); use \"None\" or \"2M\""
        )
    })?;
    thp_mode_allows_madvise(&setting)
}

/// Reads `enabled`'s bracketed choice (`always [madvise] never`).
fn thp_mode_allows_madvise(setting: &str) -> Result<(), String> {
    let chosen = setting
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'));
    match chosen {
        Some("always" | "madvise") => Ok(()),
        Some(mode) => Err(format!(
            "huge_pages \"Transparent\": the host's transparent huge pages are [{mode}] ({THP_ENABLED}), so they would not be used; write madvise there, or use \"None\" or \"2M\""
        )),
        None => Err(format!(
            "huge_pages \"Transparent\": cannot read the host's setting from {THP_ENABLED} ({:?})",
            setting.trim()
        )),
    }
}

#[cfg(test)]
mod tests {

    use vm_memory::{Bytes, GuestMemoryBackend};

    use super::*;

    #[test]
    fn transparent_memory_is_usable_and_hugetlb_needs_whole_pages() {
        let memory = anonymous(&[(GuestAddress(0), 4 << 20)], HugePages::Transparent).unwrap();
        memory.write_obj(7u64, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(memory.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 7);
        assert_eq!(memory.num_regions(), 1);
        let error = anonymous(&[(GuestAddress(0), 3 << 20)], HugePages::TwoMiB)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("not a whole number of 2 MiB pages"),
            "{error}"
        );
    }

    #[test]
    fn a_host_short_of_huge_pages_is_named_with_the_shortfall() {
        let free = free_huge_pages().unwrap();
        let too_many_mib = (free + 1) * 2;
        let error = check_huge_pages_for(too_many_mib).unwrap_err();
        assert!(
            error.contains(&format!("needs {} free", free + 1)),
            "{error}"
        );
        assert!(check_huge_pages_for(0).is_ok());
    }

    #[test]
    fn transparent_huge_pages_need_always_or_madvise() {
        assert!(thp_mode_allows_madvise("always [madvise] never\n").is_ok());
        assert!(thp_mode_allows_madvise("[always] madvise never\n").is_ok());
        let off = thp_mode_allows_madvise("always madvise [never]\n").unwrap_err();
        assert!(off.contains("[never]") && !off.contains('\n'), "{off}");
        assert!(thp_mode_allows_madvise("garbage").is_err());
    }
}
