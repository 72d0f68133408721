//! What sie's own resident memory is made of, from `/proc/self/smaps`:
//! its binary's pages, shared libraries, heap, thread stacks and the rest,
//! with the guest's RAM set apart (it is the guest's, not the VMM's cost).
//!
//! ```
//! use sie_vmm::process_memory::MemoryBreakdown;
//!
//! let smaps = "\
//! 00400000-00500000 r-xp 00000000 fd:01 7 /usr/bin/sie
//! Rss:                 512 kB
//! Anonymous:             0 kB
//! 7f0000000000-7f0000100000 rw-p 00000000 00:00 0
//! Rss:                1024 kB
//! Anonymous:          1024 kB
//! ";
//! // The binary is the mapping holding 0x401000; the guest's RAM is at 7f00….
//! let memory = MemoryBreakdown::parse(smaps, 0x401000, &[(0x7f00_0000_0000, 0x10_0000)]);
//! assert_eq!(memory.binary_kib, 512);
//! assert_eq!(memory.guest_kib, 1024);
//! assert_eq!(memory.rss_kib(), 512);
//! ```

mod release;

pub use release::release_startup_pages;

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

/// sie's resident memory by kind, in KiB, the guest's RAM not included in
/// any kind but [`MemoryBreakdown::guest_kib`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBreakdown {
    /// Pages of sie's own executable (text, read-only data, relocated data).
    pub binary_kib: u64,
    /// Pages of other mapped files whose path is absolute: libc, the
    /// dynamic loader (none in a static build).
    pub libraries_kib: u64,
    /// `[heap]` and anonymous mappings that are not stacks: malloc's arenas
    /// and large allocations (device buffers, queues), the binary's `.bss`.
    pub heap_kib: u64,
    /// The main thread's `[stack]` and each thread stack (see
    /// [`MemoryBreakdown::thread_stacks`]).
    pub stacks_kib: u64,
    /// How many stacks were counted, the main thread's included.
    pub thread_stacks: u32,
    /// Everything else: the vDSO, KVM's per-vCPU `kvm_run` pages, memfds.
    pub other_kib: u64,
    /// Anonymous pages of every kind above (what a fork could not share).
    pub anonymous_kib: u64,
    /// The guest's RAM (mappings overlapping the ranges given), not counted
    /// in the figures above.
    pub guest_kib: u64,
    /// How the guest's RAM is backed, as the kernel reports its mappings.
    pub guest_pages: GuestPages,
}

/// The pages behind the guest's RAM (`huge_pages` and `shared_memory` as
/// they took effect): from the mappings' `VmFlags` (`ht` hugetlb, `hg`
/// `MADV_HUGEPAGE`, `sh` shared) and their `AnonHugePages`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuestPages {
    /// Some guest mapping is hugetlb (`huge_pages: "2M"`).
    pub hugetlb: bool,
    /// Some guest mapping asked for transparent huge pages.
    pub thp_advised: bool,
    /// Some guest mapping is shared (a memfd, `shared_memory`).
    pub shared: bool,
    /// Guest RAM in transparent huge pages now, KiB.
    pub anon_huge_kib: u64,
}

impl fmt::Display for GuestPages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.hugetlb {
            "2 MiB hugetlb pages"
        } else if self.thp_advised {
            "transparent huge pages asked (MADV_HUGEPAGE)"
        } else {
            "base pages"
        };
        write!(f, "{kind}")?;
        if self.anon_huge_kib > 0 {
            write!(
                f,
                ", {:.2} MiB in huge pages now",
                self.anon_huge_kib as f64 / 1024.0
            )?;
        }
        if self.shared {
            write!(f, ", shared memory")?;
        }
        Ok(())
    }
}

/// One mapping's header line and the fields read from its lines.
struct Mapping<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    path: &'a str,
    rss_kib: u64,
    anonymous_kib: u64,
    anon_huge_kib: u64,
    flags: &'a str,
}

/// A mapping's header: `START-END PERMS OFFSET DEV INODE [PATH]`.
fn header(line: &str) -> Option<Mapping<'_>> {
    let mut fields = line.splitn(6, char::is_whitespace);
    let (start, end) = fields.next()?.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    // Offset, device, inode; then the path, after padding spaces.
    let path = fields.nth(3).unwrap_or("").trim();
    Some(Mapping {
        start,
        end,
        perms,
        path,
        rss_kib: 0,
        anonymous_kib: 0,
        anon_huge_kib: 0,
        flags: "",
    })
}

/// A `Name:   123 kB` field's value in KiB.
fn kib(line: &str, name: &str) -> Option<u64> {
    let value = line.strip_prefix(name)?.strip_prefix(':')?;
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

fn mappings(smaps: &str) -> Vec<Mapping<'_>> {
    let mut out: Vec<Mapping<'_>> = Vec::new();
    for line in smaps.lines() {
        if let Some(mapping) = header(line) {
            out.push(mapping);
        } else if let Some(last) = out.last_mut() {
            if let Some(value) = kib(line, "Rss") {
                last.rss_kib = value;
            } else if let Some(value) = kib(line, "Anonymous") {
                last.anonymous_kib = value;
            } else if let Some(value) = kib(line, "AnonHugePages") {
                last.anon_huge_kib = value;
            } else if let Some(flags) = line.strip_prefix("VmFlags:") {
                last.flags = flags.trim();
            }
        }
    }
    out
}

impl MemoryBreakdown {
    /// Sorts the mappings of an smaps text. `binary_address` is any address
    /// inside sie's executable (a function's): every mapping of the file
    /// holding it is the binary. `guest` lists the guest RAM's host ranges
    /// as (address, length in bytes). A thread stack is told by its guard
    /// page: an anonymous read-write mapping that starts where a
    /// no-access mapping ends (glibc and Rust put the guard below the
    /// stack; malloc's arenas have their reserve above instead).
    pub fn parse(smaps: &str, binary_address: u64, guest: &[(u64, u64)]) -> Self {
        let mappings = mappings(smaps);
        let binary_path = mappings
            .iter()
            .find(|m| (m.start..m.end).contains(&binary_address) && m.path.starts_with('/'))
            .map(|m| m.path);
        let mut memory = Self::default();
        let mut previous: Option<&Mapping<'_>> = None;
        for mapping in &mappings {
            let in_guest = guest.iter().any(|&(address, len)| {
                mapping.start < address.saturating_add(len) && address < mapping.end
            });
            let after_guard = previous.is_some_and(|p| {
                p.end == mapping.start && p.perms.starts_with("---") && p.path.is_empty()
            });
            previous = Some(mapping);
            if in_guest {
                memory.guest_kib += mapping.rss_kib;
                let flag = |name: &str| mapping.flags.split_whitespace().any(|f| f == name);
                let pages = &mut memory.guest_pages;
                pages.hugetlb |= flag("ht");
                pages.thp_advised |= flag("hg");
                pages.shared |= flag("sh");
                pages.anon_huge_kib += mapping.anon_huge_kib;
                continue;
            }
            memory.anonymous_kib += mapping.anonymous_kib;
            let kind = if Some(mapping.path) == binary_path {
                &mut memory.binary_kib
            } else if mapping.path == "[stack]"
                || (mapping.path.is_empty() && mapping.perms.starts_with("rw") && after_guard)
            {
                memory.thread_stacks += 1;
                &mut memory.stacks_kib
            } else if mapping.path.is_empty() || mapping.path == "[heap]" {
                &mut memory.heap_kib
            } else if mapping.path.starts_with('/') && !mapping.path.starts_with("/memfd:") {
                &mut memory.libraries_kib
            } else {
                &mut memory.other_kib
            };
            *kind += mapping.rss_kib;
        }
        memory
    }

    /// This process's breakdown now, `guest` set apart; `None` when
    /// /proc/self/smaps cannot be read.
    pub fn of_this_process(guest: &[(u64, u64)]) -> Option<Self> {
        let text = read_smaps()?;
        let here = Self::of_this_process as fn(&[(u64, u64)]) -> Option<Self> as usize as u64;
        Some(Self::parse(&text, here, guest))
    }

    /// The VMM's resident memory, the guest's RAM left out.
    pub fn rss_kib(&self) -> u64 {
        self.binary_kib + self.libraries_kib + self.heap_kib + self.stacks_kib + self.other_kib
    }
}

/// /proc/self/smaps, opened once: under seccomp the VMM thread may not open
/// files once the VM runs; every reading is a `pread` of this descriptor.
/// Call [`open_smaps`] before the filters go on.
fn smaps() -> Option<&'static File> {
    static SMAPS: OnceLock<Option<File>> = OnceLock::new();
    SMAPS
        .get_or_init(|| File::open("/proc/self/smaps").ok())
        .as_ref()
}

/// Opens /proc/self/smaps for [`MemoryBreakdown::of_this_process`] and
/// [`release_startup_pages`] (before seccomp forbids it).
pub fn open_smaps() {
    let _ = smaps();
}

/// The whole of /proc/self/smaps now (`pread`s from offset 0: the kernel
/// writes it anew for each reading from the start).
fn read_smaps() -> Option<String> {
    let file = smaps()?;
    let mut text = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = file.read_at(&mut chunk, text.len() as u64).ok()?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(chunk.get(..n)?);
    }
    Some(String::from_utf8_lossy(&text).into_owned())
}

impl fmt::Display for MemoryBreakdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |kib: u64| kib as f64 / 1024.0;
        writeln!(
            f,
            "  {:<30} {:>7.2} MiB (anonymous {:.2} MiB)",
            "VMM resident",
            mib(self.rss_kib()),
            mib(self.anonymous_kib)
        )?;
        let rows = [
            ("sie binary", self.binary_kib),
            ("shared libraries", self.libraries_kib),
            ("heap and anonymous", self.heap_kib),
            ("other (vDSO, kvm_run, memfd)", self.other_kib),
        ];
        for (name, kib) in rows {
            writeln!(f, "    {name:<28} {:>7.2} MiB", mib(kib))?;
        }
        writeln!(
            f,
            "    {:<28} {:>7.2} MiB ({} stacks)",
            "thread stacks",
            mib(self.stacks_kib),
            self.thread_stacks
        )?;
        writeln!(
            f,
            "  {:<30} {:>7.2} MiB (not counted above)",
            "guest RAM resident",
            mib(self.guest_kib)
        )?;
        writeln!(f, "    {:<28} {}", "backed by", self.guest_pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trimmed smaps of an idle `sie run` (fields sie does not read left
    /// out but for a few, to show they are skipped).
    const SMAPS: &str = "\
5581a0000000-5581a0100000 r--p 00000000 fd:01 4242                       /work/target/release/sie
Size:               1024 kB
Rss:                 300 kB
Pss:                 300 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
5581a0100000-5581a0400000 r-xp 00100000 fd:01 4242                       /work/target/release/sie
Rss:                1200 kB
Anonymous:             0 kB
5581a0400000-5581a0410000 rw-p 00400000 fd:01 4242                       /work/target/release/sie
Rss:                  64 kB
Anonymous:            60 kB
5581a0410000-5581a0411000 rw-p 00000000 00:00 0
Rss:                   4 kB
Anonymous:             4 kB
5581a1000000-5581a1100000 rw-p 00000000 00:00 0                          [heap]
Rss:                 200 kB
Anonymous:           200 kB
7f0000000000-7f0002000000 rw-p 00000000 00:00 0
Rss:                2048 kB
Anonymous:          2048 kB
7f1000000000-7f1000021000 rw-p 00000000 00:00 0
Rss:                  40 kB
Anonymous:            40 kB
7f1000021000-7f1004000000 ---p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
7f2000000000-7f2000001000 ---p 00000000 00:00 0
Rss:                   0 kB
Anonymous:             0 kB
7f2000001000-7f2000201000 rw-p 00000000 00:00 0
Rss:                  16 kB
Anonymous:            16 kB
7f3000000000-7f3000028000 r--p 00000000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 160 kB
Anonymous:             0 kB
7f3000028000-7f30001bd000 r-xp 00028000 fd:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Rss:                 500 kB
Anonymous:             0 kB
7f4000000000-7f4000001000 rw-s 00000000 00:0f 1061                      anon_inode:kvm-vcpu:0
Rss:                   4 kB
Anonymous:             0 kB
7f5000000000-7f5000100000 rw-s 00000000 00:01 12                         /memfd:sie-console (deleted)
Rss:                   8 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  24 kB
Anonymous:            24 kB
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
Rss:                   8 kB
Anonymous:             0 kB
";

    /// The binary's text holds 0x5581a0200000; the guest is the 32 MiB at 7f00….
    fn parsed() -> MemoryBreakdown {
        MemoryBreakdown::parse(SMAPS, 0x5581_a020_0000, &[(0x7f00_0000_0000, 32 << 20)])
    }

    #[test]
    fn every_mapping_of_the_binary_counts_as_the_binary() {
        assert_eq!(parsed().binary_kib, 300 + 1200 + 64);
    }

    #[test]
    fn other_files_are_libraries_but_memfds_are_not() {
        assert_eq!(parsed().libraries_kib, 160 + 500);
        assert_eq!(parsed().other_kib, 4 + 8 + 8);
    }

    #[test]
    fn a_mapping_above_a_guard_is_a_stack_and_one_below_a_reserve_is_heap() {
        let memory = parsed();
        // [stack] and the thread stack above its guard page.
        assert_eq!(memory.stacks_kib, 24 + 16);
        assert_eq!(memory.thread_stacks, 2);
        // .bss, [heap] and the malloc arena (rw below its reserve).
        assert_eq!(memory.heap_kib, 4 + 200 + 40);
    }

    #[test]
    fn the_guest_ram_is_set_apart_from_every_figure() {
        let memory = parsed();
        assert_eq!(memory.guest_kib, 2048);
        assert_eq!(memory.anonymous_kib, 60 + 4 + 200 + 40 + 16 + 24);
        assert_eq!(
            memory.rss_kib(),
            300 + 1200 + 64 + 4 + 200 + 40 + 16 + 160 + 500 + 4 + 8 + 24 + 8
        );
    }

    #[test]
    fn the_guest_backing_is_read_from_its_mappings_flags() {
        let smaps = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0
Rss:                4096 kB
AnonHugePages:      2048 kB
Anonymous:          4096 kB
VmFlags: rd wr mr mw me ac hg
7f1000000000-7f1000200000 rw-s 00000000 00:01 77                         /memfd:guest (deleted)
Rss:                   8 kB
AnonHugePages:      2048 kB
VmFlags: rd wr sh mr mw me ms
";
        let advised = MemoryBreakdown::parse(smaps, 0x1, &[(0x7f00_0000_0000, 4 << 20)]);
        assert_eq!(
            advised.guest_pages,
            GuestPages {
                thp_advised: true,
                anon_huge_kib: 2048,
                ..GuestPages::default()
            }
        );
        assert!(
            advised.to_string().contains(
                "transparent huge pages asked (MADV_HUGEPAGE), 2.00 MiB in huge pages now"
            )
        );
        let shared = MemoryBreakdown::parse(smaps, 0x1, &[(0x7f10_0000_0000, 2 << 20)]);
        assert!(shared.guest_pages.shared && !shared.guest_pages.thp_advised);
        let hugetlb = "\
7f2000000000-7f2000400000 rw-p 00000000 00:10 1                          /anon_hugepage (deleted)
Rss:                   0 kB
VmFlags: rd wr mr mw me de ht
";
        let hugetlb = MemoryBreakdown::parse(hugetlb, 0x1, &[(0x7f20_0000_0000, 4 << 20)]);
        assert!(
            hugetlb
                .to_string()
                .contains("backed by                    2 MiB hugetlb pages")
        );
    }

    #[test]
    fn without_guest_ranges_the_guest_counts_as_heap() {
        let memory = MemoryBreakdown::parse(SMAPS, 0x5581_a020_0000, &[]);
        assert_eq!(memory.guest_kib, 0);
        assert_eq!(memory.heap_kib, 4 + 200 + 2048 + 40);
    }

    #[test]
    fn garbage_and_an_empty_text_give_zeros() {
        assert_eq!(
            MemoryBreakdown::parse("", 0, &[]),
            MemoryBreakdown::default()
        );
        let junk = "not smaps\nRss: lots\n-\nzz-yy r--p\n";
        assert_eq!(
            MemoryBreakdown::parse(junk, 0, &[]),
            MemoryBreakdown::default()
        );
    }

    #[test]
    fn this_process_reads_and_finds_its_binary() {
        let memory = MemoryBreakdown::of_this_process(&[]).unwrap();
        assert!(memory.binary_kib > 0, "{memory:?}");
        assert!(memory.rss_kib() > memory.binary_kib);
    }
}
