//! `sie bench memory`: what an idle VMM process keeps resident, sie's and,
//! with `--peer`, another VMM's that takes Firecracker's command line. Each
//! is started the same way (`--api-sock SOCK --config-file FILE`) on the
//! `counter` guest, paused after its second count, and left alone for
//! `--settle-ms` (sie gives back its start-up pages at once and 3 s later)
//! before its `/proc/PID/smaps` is read and sorted like `--stats`' memory
//! rows ([`MemoryBreakdown`]). The guest's RAM, any mapping at least as long
//! as the guest's memory, is set apart: it is the guest's cost, not the VMM's.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use sie_vmm::process_memory::MemoryBreakdown;

use super::api_vmm::in_counter_scratch;
use super::api_vmm::{median, paused_counter};
use crate::cli::BenchMemoryArgs;

type BoxError = Box<dyn std::error::Error>;

/// The columns of the table, in MiB, from one reading.
const COLUMNS: usize = 8;

/// Every mapping in an smaps text at least `len` bytes long, as (start,
/// length): the guest's RAM. Not "exactly": the kernel merges an anonymous
/// mapping with a like neighbour (Firecracker's guest RAM with a malloc
/// arena, now and then), and nothing else a VMM maps comes near a guest's
/// size (glibc's arenas reserve 64 MiB, mostly unmapped).
fn mappings_at_least(smaps: &str, len: u64) -> Vec<(u64, u64)> {
    smaps
        .lines()
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let length = end.checked_sub(start)?;
            (length >= len).then_some((start, length))
        })
        .collect()
}

/// The start of the first mapping of the file `path`: an address inside
/// the process's executable, for [`MemoryBreakdown::parse`].
fn first_mapping_of(smaps: &str, path: &str) -> Option<u64> {
    smaps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, _) = fields.next()?.split_once('-')?;
        // Permissions, offset, device, inode; then the path.
        (fields.nth(4)? == path).then(|| u64::from_str_radix(start, 16).ok())?
    })
}

/// The breakdown of `smaps`, a process running the executable `exe` with
/// `guest_bytes` of guest RAM.
fn breakdown(smaps: &str, exe: &str, guest_bytes: u64) -> Result<MemoryBreakdown, BoxError> {
    let guest = mappings_at_least(smaps, guest_bytes);
    if guest.is_empty() {
        return Err(format!("no mapping of {guest_bytes} bytes (the guest's RAM) in smaps").into());
    }
    let binary = first_mapping_of(smaps, exe)
        .ok_or_else(|| format!("no mapping of the executable {exe} in smaps"))?;
    Ok(MemoryBreakdown::parse(smaps, binary, &guest))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One reading as the table's columns: RSS, anonymous, binary, libraries,
/// heap, stacks, other, guest RAM; MiB.
fn columns(memory: &MemoryBreakdown) -> [f64; COLUMNS] {
    [
        mib(memory.rss_kib()),
        mib(memory.anonymous_kib),
        mib(memory.binary_kib),
        mib(memory.libraries_kib),
        mib(memory.heap_kib),
        mib(memory.stacks_kib),
        mib(memory.other_kib),
        mib(memory.guest_kib),
    ]
}

/// `sie/peer: RSS x…, anonymous x…` from both rows' medians.
fn ratio_line(sie: &[f64; COLUMNS], peer: &[f64; COLUMNS]) -> String {
    let ratio = |i: usize| {
        if peer[i] > 0.0 {
            format!("x{:.2}", sie[i] / peer[i])
        } else {
            "-".to_string()
        }
    };
    format!("  sie/peer: RSS {}, anonymous {}", ratio(0), ratio(1))
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchMemoryArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.memory_mib == 0 {
        return Err("--runs and --memory-mib must be at least 1".into());
    }
    in_counter_scratch("memory", |dir, guest| measure(args, dir, guest))
}

fn measure(args: &BenchMemoryArgs, dir: &Path, guest: &Path) -> Result<u8, BoxError> {
    let config = json!({
        "boot-source": {"kernel_image_path": guest, "boot_args": "limit=100000000"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": args.memory_mib},
        // Firecracker's config file requires the list, empty or not.
        "drives": [],
    });
    let mut vmms = vec![("sie".to_string(), std::env::current_exe()?)];
    if let Some(peer) = &args.peer {
        let name = peer
            .file_name()
            .map_or_else(|| "peer".to_string(), |n| n.to_string_lossy().into_owned());
        vmms.push((format!("peer ({name})"), peer.clone()));
    }
    let guest_bytes = u64::from(args.memory_mib) << 20;
    let mut readings: Vec<Vec<[f64; COLUMNS]>> = vmms.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs {
        // All VMMs of a round idle side by side, through the same wait.
        let mut started = Vec::with_capacity(vmms.len());
        for (i, (name, program)) in vmms.iter().enumerate() {
            let vmm = paused_counter(program, dir, &format!("vmm{i}"), &config)
                .map_err(|e| format!("{name}: {e}"))?;
            started.push(vmm);
        }
        std::thread::sleep(Duration::from_millis(args.settle_ms));
        for (((name, _), vmm), of_one) in vmms.iter().zip(&started).zip(&mut readings) {
            let proc = format!("/proc/{}", vmm.pid());
            let smaps = std::fs::read_to_string(format!("{proc}/smaps"))?;
            let exe = std::fs::read_link(format!("{proc}/exe"))?;
            let memory = breakdown(&smaps, &exe.to_string_lossy(), guest_bytes)
                .map_err(|e| format!("{name}: {e}"))?;
            of_one.push(columns(&memory));
        }
    }

    println!(
        "sie bench memory: idle VMM process, `--api-sock --config-file` on the counter guest \
         ({} MiB, 1 vCPU) paused after its second count, smaps read {} ms later; \
         median of {} runs; MiB",
        args.memory_mib, args.settle_ms, args.runs
    );
    println!(
        "  {:<22}{:>8}{:>11}{:>8}{:>11}{:>7}{:>8}{:>7}{:>11}",
        "vmm", "RSS", "anonymous", "binary", "libraries", "heap", "stacks", "other", "guest RAM"
    );
    let mut medians = Vec::with_capacity(vmms.len());
    for ((name, _), of_one) in vmms.iter().zip(&readings) {
        let figures: [f64; COLUMNS] =
            std::array::from_fn(|i| median(of_one.iter().map(|r| r[i]).collect()));
        println!(
            "  {name:<22}{:>8.2}{:>11.2}{:>8.2}{:>11.2}{:>7.2}{:>8.2}{:>7.2}{:>11.2}",
            figures[0],
            figures[1],
            figures[2],
            figures[3],
            figures[4],
            figures[5],
            figures[6],
            figures[7]
        );
        medians.push(figures);
    }
    if let [sie, peer] = medians.as_slice() {
        println!("{}", ratio_line(sie, peer));
    }
    println!(
        "  RSS leaves the guest's RAM out; anonymous is the part of RSS no other process shares"
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d000000000-55d000100000 r-xp 00000000 fd:01 7      /usr/bin/vmm
Rss:                 400 kB
Anonymous:             0 kB
55d000100000-55d000101000 rw-p 00100000 fd:01 7      /usr/bin/vmm
Rss:                   4 kB
Anonymous:             4 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Rss:                 256 kB
Anonymous:           256 kB
7f1000000000-7f1000010000 rw-p 00000000 00:00 0
Rss:                  64 kB
Anonymous:            64 kB
7f2000000000-7f2000100000 r-xp 00000000 fd:01 9      /usr/lib/libc.so.6
Rss:                 800 kB
Anonymous:             0 kB
";

    #[test]
    fn the_guest_ram_and_the_binary_are_found_by_length_and_path() {
        assert_eq!(
            mappings_at_least(SMAPS, 128 << 20),
            [(0x7f00_0000_0000, 128 << 20)]
        );
        // Merged with a neighbour, the guest's RAM is still found.
        assert_eq!(
            mappings_at_least(SMAPS, 64 << 20),
            [(0x7f00_0000_0000, 128 << 20)]
        );
        assert_eq!(
            first_mapping_of(SMAPS, "/usr/bin/vmm"),
            Some(0x55d0_0000_0000)
        );
        assert_eq!(first_mapping_of(SMAPS, "/usr/bin/other"), None);
        let memory = breakdown(SMAPS, "/usr/bin/vmm", 128 << 20).unwrap();
        assert_eq!(memory.guest_kib, 256);
        assert_eq!(memory.binary_kib, 404);
        assert_eq!(memory.libraries_kib, 800);
        assert_eq!(memory.heap_kib, 64);
        assert_eq!(memory.anonymous_kib, 68);
        assert_eq!(memory.rss_kib(), 404 + 800 + 64);
    }

    #[test]
    fn a_process_without_the_guest_or_its_binary_is_an_error() {
        let error = breakdown(SMAPS, "/usr/bin/vmm", 256 << 20).unwrap_err();
        assert!(error.to_string().contains("guest's RAM"), "{error}");
        let error = breakdown(SMAPS, "/usr/bin/other", 128 << 20).unwrap_err();
        assert!(error.to_string().contains("/usr/bin/other"), "{error}");
    }

    #[test]
    fn ratios_are_sie_over_the_peer() {
        let mut sie = [0.0; COLUMNS];
        let mut peer = [0.0; COLUMNS];
        (sie[0], sie[1]) = (2.0, 0.5);
        (peer[0], peer[1]) = (4.0, 0.25);
        assert_eq!(
            ratio_line(&sie, &peer),
            "  sie/peer: RSS x0.50, anonymous x2.00"
        );
        peer[1] = 0.0;
        assert!(ratio_line(&sie, &peer).ends_with("anonymous -"));
    }
}
