//! Giving back, once the VM runs, the pages only starting it needed.
//!
//! Measured on an idle guest (README, "Memory per VM"): about 5 MiB of the
//! VMM's resident memory is its binary's and libc's code and read-only
//! data, and none of it is touched again while the guest idles: it is
//! argument parsing, configuration, building, seccomp compilation, and the
//! kernel's fault-around mapped 64 KiB at each touch. Those pages are clean
//! copies of the files in the page cache, so dropping this process's
//! mappings of them loses nothing: the next touch maps the same page again
//! (a minor fault, no disk read while the page cache keeps the file) and
//! the page cache, shared by every sie on the host, can be reclaimed once
//! no process maps it.

use super::{Mapping, mappings, read_smaps};

/// The ranges whose pages can be dropped: every mapping of a file that is
/// also mapped executable (sie's binary, libc, the loader: not a guest's
/// pmem or drive file), that is not writable and holds no private copy of
/// a page (`Anonymous: 0`: relocated read-only data has copies, and
/// dropping them would undo the relocations).
fn droppable(smaps: &str) -> Vec<(u64, u64)> {
    let all = mappings(smaps);
    let is_object = |m: &Mapping<'_>| {
        all.iter()
            .any(|other| other.path == m.path && other.perms.as_bytes().get(2) == Some(&b'x'))
    };
    all.iter()
        .filter(|m| m.path.starts_with('/') && !m.path.starts_with("/memfd:"))
        .filter(|m| m.perms.starts_with('r') && m.perms.as_bytes().get(1) == Some(&b'-'))
        .filter(|m| m.anonymous_kib == 0 && m.rss_kib > 0)
        .filter(|m| is_object(m))
        .map(|m| (m.start, m.end - m.start))
        .collect()
}

/// Drops this process's mappings of the clean pages of its code and
/// read-only data (see the module doc) and returns malloc's free memory to
/// the kernel. Call once the VM runs; under seccomp only after
/// [`super::open_smaps`]. Returns the bytes of the ranges advised;
/// failures only leave the pages where they were.
pub fn release_startup_pages() -> u64 {
    let Some(smaps) = read_smaps() else {
        return 0;
    };
    let mut released = 0;
    for (address, len) in droppable(&smaps) {
        // SAFETY: the range is one whole mapping of a loaded object's file
        // that no one can write (not writable, and no dlclose runs in sie)
        // and that holds no private page, so after MADV_DONTNEED every page
        // reads back the same bytes from the file; no Rust reference can
        // observe the difference.
        let done = unsafe {
            libc::madvise(
                address as *mut libc::c_void,
                len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if done == 0 {
            released += len;
        }
    }
    released += release_stack_below(&smaps);
    trim_heap();
    released
}

/// Margin kept below the local whose address stands for the stack pointer:
/// the rest of this function's frame, libc's `madvise` wrapper (a few
/// words) and the 128-byte red zone, with room to spare. One page: every
/// page kept is resident for the VM's life (16 KiB kept 12 KiB more of an
/// idle VM's stack, README "Memory per VM").
const STACK_MARGIN: u64 = 4 << 10;

/// The pages of this thread's stack below its current depth, when this
/// thread is the main one (`[stack]`): building the VM went deeper than
/// serving it does. Below the stack pointer nothing is live (signal
/// handlers run after this call returns to user space, not during it), and
/// a page dropped there reads as zeros when the stack grows into it again.
fn release_stack_below(smaps: &str) -> u64 {
    let here = std::hint::black_box(0u8);
    let sp = (&raw const here) as u64;
    let Some(stack) = mappings(smaps)
        .into_iter()
        .find(|m| m.path == "[stack]" && (m.start..m.end).contains(&sp))
    else {
        return 0;
    };
    let end = sp.saturating_sub(STACK_MARGIN) & !4095;
    if end <= stack.start {
        return 0;
    }
    let len = end - stack.start;
    // SAFETY: [stack.start, end) lies below this thread's stack pointer by
    // more than the red zone (see STACK_MARGIN): no frame and no reference
    // lives there, and the kernel refills it with zeros when it is used again.
    let done = unsafe {
        libc::madvise(
            stack.start as *mut libc::c_void,
            len as usize,
            libc::MADV_DONTNEED,
        )
    };
    if done == 0 { len } else { 0 }
}

/// glibc keeps freed heap pages mapped; the build freed plenty.
#[cfg(target_env = "gnu")]
fn trim_heap() {
    // SAFETY: malloc_trim only gives free pages of malloc's own arenas back.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(target_env = "gnu"))]
fn trim_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
1000-3000 r--p 00000000 fd:01 1 /bin/sie
Rss:                   8 kB
Anonymous:             0 kB
3000-9000 r-xp 00002000 fd:01 1 /bin/sie
Rss:                  24 kB
Anonymous:             0 kB
9000-a000 r--p 00008000 fd:01 1 /bin/sie
Rss:                   4 kB
Anonymous:             4 kB
a000-b000 rw-p 00009000 fd:01 1 /bin/sie
Rss:                   4 kB
Anonymous:             4 kB
20000-30000 r--s 00000000 fd:01 2 /srv/pmem.img
Rss:                  64 kB
Anonymous:             0 kB
40000-41000 r-xp 00000000 fd:01 3 /lib/libc.so.6
Rss:                   4 kB
Anonymous:             0 kB
50000-51000 r-xp 00000000 00:01 4 /memfd:guest (deleted)
Rss:                   4 kB
Anonymous:             0 kB
60000-61000 r-xp 00000000 00:00 0 [vdso]
Rss:                   4 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_unwritable_pages_of_loaded_objects_are_dropped() {
        // The binary's rodata and text, libc's text; not the relocated
        // rodata, the data, a guest's file, a memfd or the vDSO.
        assert_eq!(
            droppable(SMAPS),
            [(0x1000, 0x2000), (0x3000, 0x6000), (0x40000, 0x1000)]
        );
    }

    #[test]
    fn releasing_keeps_this_process_working() {
        let before = std::hint::black_box(vec![1u8; 4096]);
        assert!(release_startup_pages() > 0);
        // Code and data read back as they were.
        let sum: u32 = before.iter().map(|&b| u32::from(b)).sum();
        assert_eq!(format!("{sum}"), "4096");
    }
}
