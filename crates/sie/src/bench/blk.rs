//! `sie bench blk`: sequential throughput (1 MiB blocks) and random 4 KiB
//! IOPS, read and write, in a guest on a virtio-blk disk, against the same
//! pattern run by sie on the host file backing that disk. The guest side is
//! the initrd's job for `case=bench_blk` (the rig's runs `sietool
//! blk-bench /dev/vda MIB OPS`); it prints `@@BENCH key=value` lines.
//!
//! The guest runs over virtio-MMIO, virtio-PCI or both (`--transport`),
//! side by side, each with its virtio interrupts per operation (the guest's
//! `@@BENCH virtio_irqs=`, counted in /proc/interrupts around the pattern)
//! and the exits its registers caused per operation (`sie run --stats`).
//!
//! Each guest boot starts on a disk holding a known pattern; the guest's
//! sequential read must return the disk's size in bytes and the pattern's
//! checksum ([`word_sum`]), or the run fails: a figure always stands for
//! data that really crossed the device.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::peer_guest::PeerGuest;
use super::transport::Transport;
use super::{BoxError, finish_sie_run, guest_cmdline, guest_figures, median, spawn_sie_run};
use crate::cli::BenchBlkArgs;

const BLOCK: usize = 1 << 20;
const SMALL: usize = 4096;
const ALIGN: usize = 4096;

/// The figures, as `@@BENCH` keys, with their table labels.
const ROWS: [(&str, &str); 4] = [
    ("seq_read_mib_s", "seq read MiB/s"),
    ("seq_write_mib_s", "seq write MiB/s"),
    ("rand_read_iops", "rand read IOPS"),
    ("rand_write_iops", "rand write IOPS"),
];

/// The random 4 KiB blocks `sietool blk-bench` uses: a 64-bit LCG whose
/// high bits pick a block; seed 1 for reads, 2 for writes.
struct Offsets {
    state: u64,
    blocks: u64,
}

impl Iterator for Offsets {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        self.state = self
            .state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Some(((self.state >> 33) % self.blocks) * SMALL as u64)
    }
}

/// A 4096-aligned window of a `Vec` (O_DIRECT needs aligned buffers).
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Result<Self, BoxError> {
        let bytes = vec![0x5a; len + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        if start >= ALIGN {
            return Err("cannot align an I/O buffer".into());
        }
        Ok(Self { bytes, start })
    }
    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + len]
    }
}

/// A temporary directory removed on drop.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(path: &Path, direct: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

/// Whether the file system takes O_DIRECT I/O on `path` (tmpfs before
/// Linux 6.6 refuses it with EINVAL).
fn direct_works(path: &Path) -> Result<bool, BoxError> {
    let refused = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    let file = match open(path, true) {
        Ok(file) => file,
        Err(e) if refused(&e) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let mut buf = AlignedBuf::new(SMALL)?;
    match file.read_exact_at(buf.get(SMALL), 0) {
        Ok(()) => Ok(true),
        Err(e) if refused(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// FNV-1a over little-endian 64-bit words (`sietool`'s checksum of what
/// its sequential read got); the caller keeps the top 48 bits.
pub fn word_sum(mut hash: u64, bytes: &[u8]) -> u64 {
    for word in bytes.chunks_exact(8) {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        hash = (hash ^ u64::from_le_bytes(le)).wrapping_mul(0x100000001b3);
    }
    hash
}

/// The FNV-1a offset basis `word_sum` starts from.
pub const WORD_SUM_START: u64 = 0xcbf29ce484222325;

/// Block `index` of the disk pattern: each 8-byte word holds its own
/// offset times an odd constant, so a block read from the wrong place, or
/// not at all, changes the checksum.
pub fn pattern_block(index: u64, block: &mut [u8]) {
    let base = index * block.len() as u64;
    for (i, word) in block.chunks_exact_mut(8).enumerate() {
        let offset = base + 8 * i as u64;
        word.copy_from_slice(&offset.wrapping_mul(0x9e3779b97f4a7c15).to_le_bytes());
    }
}

/// Writes `mib` MiB of the pattern (no holes) and syncs; the checksum the
/// guest must report for it.
fn fill(path: &Path, mib: u64) -> Result<u64, BoxError> {
    let mut file = File::create(path)?;
    let mut block = vec![0u8; BLOCK];
    let mut sum = WORD_SUM_START;
    for index in 0..mib {
        pattern_block(index, &mut block);
        sum = word_sum(sum, &block);
        file.write_all(&block)?;
    }
    file.sync_all()?;
    Ok(sum >> 16)
}

/// The guest's pattern on the host file; figures keyed like `@@BENCH`.
fn host_pass(
    path: &Path,
    mib: u64,
    ops: u64,
    direct: bool,
) -> Result<BTreeMap<String, f64>, BoxError> {
    let file = open(path, direct)?;
    let mut buf = AlignedBuf::new(BLOCK)?;
    let mut figures = BTreeMap::new();
    let rate = |count: u64, start: Instant| count as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    for i in 0..mib {
        file.read_exact_at(buf.get(BLOCK), i * BLOCK as u64)?;
    }
    figures.insert(ROWS[0].0.to_string(), rate(mib, start));
    let start = Instant::now();
    for i in 0..mib {
        file.write_all_at(buf.get(BLOCK), i * BLOCK as u64)?;
    }
    file.sync_all()?;
    figures.insert(ROWS[1].0.to_string(), rate(mib, start));

    let blocks = mib * (BLOCK / SMALL) as u64;
    let start = Instant::now();
    for offset in (Offsets { state: 1, blocks }).take(ops as usize) {
        file.read_exact_at(buf.get(SMALL), offset)?;
    }
    figures.insert(ROWS[2].0.to_string(), rate(ops, start));
    let start = Instant::now();
    for offset in (Offsets { state: 2, blocks }).take(ops as usize) {
        file.write_all_at(buf.get(SMALL), offset)?;
    }
    file.sync_all()?;
    figures.insert(ROWS[3].0.to_string(), rate(ops, start));
    Ok(figures)
}

/// What every guest pass prints: the figures of [`ROWS`] and what its
/// sequential read got ([`check_read`]).
const GUEST_KEYS: [&str; 6] = [
    ROWS[0].0,
    ROWS[1].0,
    ROWS[2].0,
    ROWS[3].0,
    "read_bytes",
    "read_sum",
];

/// The guest's command line for `case=bench_blk` with the bench's sizes.
fn bench_cmdline(args: &BenchBlkArgs) -> String {
    guest_cmdline(
        args.cmdline.as_deref(),
        "bench_blk",
        &format!("bench_size_mib={} bench_ops={}", args.size_mib, args.ops),
    )
}

/// One guest boot running the pattern once over `transport`; with the
/// guest's figures, `device_exits` (the disk's register exits).
fn guest_pass(
    args: &BenchBlkArgs,
    disk: &Path,
    transport: Transport,
) -> Result<BTreeMap<String, f64>, BoxError> {
    let (mut argv, cmdline) = transport.run_args(&bench_cmdline(args));
    argv.extend([
        "--kernel".into(),
        args.kernel.display().to_string(),
        "--initrd".into(),
        args.initrd.display().to_string(),
        "--disk".into(),
        format!("{},io={}", disk.display(), args.io),
        "--memory".into(),
        args.memory.clone(),
        "--cmdline".into(),
        cmdline,
    ]);
    let output = finish_sie_run(spawn_sie_run(&argv)?)?;
    let mut figures = guest_figures(&output, &GUEST_KEYS)?;
    if let Some(exits) = transport.device_exits(&output, "virtio-blk:") {
        figures.insert("device_exits".to_string(), exits as f64);
    }
    Ok(figures)
}

/// The same boot as [`guest_pass`] in the peer VMM `peer` (`--peer`): the
/// disk as its only drive (the guest's /dev/vda), on the same engine.
fn peer_pass(
    args: &BenchBlkArgs,
    (disk, dir): (&Path, &Path),
    transport: Transport,
    peer: &Path,
) -> Result<BTreeMap<String, f64>, BoxError> {
    let (_, cmdline) = transport.run_args(&bench_cmdline(args));
    let guest = PeerGuest {
        program: peer,
        kernel: &args.kernel,
        initrd: &args.initrd,
        cmdline,
        memory_mib: sie_config::parse_mem_size_mib(&args.memory)
            .map_err(|e| format!("--memory {:?}: {e}", args.memory))?,
        pci: transport == Transport::Pci,
    };
    let engine = if args.io == "async" { "Async" } else { "Sync" };
    let drives = serde_json::json!([{
        "drive_id": "bench",
        "path_on_host": disk,
        "is_root_device": false,
        "is_read_only": false,
        "io_engine": engine,
    }]);
    guest_figures(&guest.boot(drives, dir)?, &GUEST_KEYS)
}

/// `key` per operation of one pass (`ops_per_pass` of them), per run.
fn per_op(passes: &[BTreeMap<String, f64>], key: &str, ops_per_pass: f64) -> Vec<f64> {
    passes
        .iter()
        .filter_map(|p| p.get(key).map(|v| v / ops_per_pass))
        .collect()
}

/// Fails unless the guest's sequential read got `bytes` bytes with
/// checksum `sum`.
fn check_read(figures: &BTreeMap<String, f64>, bytes: u64, sum: u64) -> Result<(), BoxError> {
    let (got_bytes, got_sum) = (figures["read_bytes"], figures["read_sum"]);
    if got_bytes != bytes as f64 || got_sum != sum as f64 {
        return Err(format!(
            "the guest read {got_bytes} bytes with checksum {got_sum}; the disk holds {bytes} bytes with checksum {sum}"
        )
        .into());
    }
    Ok(())
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchBlkArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.size_mib == 0 || args.ops == 0 {
        return Err("--runs, --size-mib and --ops must be at least 1".into());
    }
    let dir =
        ScratchDir(std::env::temp_dir().join(format!("sie-bench-blk-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let disk = dir.0.join("disk.img");
    if disk.display().to_string().contains(',') {
        return Err(format!("{}: a --disk path cannot hold a comma", disk.display()).into());
    }
    fill(&disk, args.size_mib)?;
    let direct = direct_works(&disk)?;
    let bytes = args.size_mib << 20;

    let transports = Transport::chosen(&args.transport);
    // A column per transport: sie's, then the peer's.
    let mut columns: Vec<(String, Transport, Option<&Path>)> = transports
        .iter()
        .map(|t| (format!("guest {}", t.label()), *t, None))
        .collect();
    if let Some(peer) = &args.peer {
        let name = peer
            .file_name()
            .map_or("peer".into(), |n| n.to_string_lossy().into_owned());
        for t in &transports {
            columns.push((format!("{name} {}", t.label()), *t, Some(peer.as_path())));
        }
    }
    let mut host = Vec::new();
    let mut guest: Vec<Vec<BTreeMap<String, f64>>> = vec![Vec::new(); columns.len()];
    for _ in 0..args.runs {
        host.push(host_pass(&disk, args.size_mib, args.ops, direct)?);
        for (index, (label, transport, peer)) in columns.iter().enumerate() {
            // The last pass rewrote the disk: the pattern again for the guest.
            let sum = fill(&disk, args.size_mib)?;
            let figures = match peer {
                None => guest_pass(args, &disk, *transport)?,
                Some(peer) => peer_pass(args, (&disk, &dir.0), *transport, peer)
                    .map_err(|e| format!("{label}: {e}"))?,
            };
            check_read(&figures, bytes, sum).map_err(|e| format!("{label}: {e}"))?;
            guest[index].push(figures);
        }
    }

    println!(
        "sie bench blk: {} MiB file, 1 MiB sequential blocks, {} random 4 KiB ops each way, {} runs; median (spread)",
        args.size_mib, args.ops, args.runs
    );
    if direct {
        println!("  host: O_DIRECT on {}", disk.display());
    } else {
        println!(
            "  host: buffered + fsync on {} (O_DIRECT refused by its file system; reads may come from the page cache)",
            disk.display()
        );
    }
    println!("  guest: O_DIRECT on /dev/vda, sie's virtio-blk on that file");
    if let Some(peer) = &args.peer {
        println!(
            "  peer: {} on the same disk, initrd and command line",
            peer.display()
        );
    }
    for ((label, transport, peer), passes) in columns.iter().zip(&guest) {
        // sie's rows keep their old wording (the rig's check reads it).
        let who = match peer {
            None => transport.label().to_string(),
            Some(_) => label.clone(),
        };
        for (run, figures) in passes.iter().enumerate() {
            println!(
                "  {who} run {}: guest seq read {} bytes, checksum {}: equal to the disk's",
                run + 1,
                figures["read_bytes"],
                figures["read_sum"]
            );
        }
    }
    print!("  {:<22}{:>22}", "operation", "host");
    for (label, _, _) in &columns {
        print!("{label:>22}{:>12}", "guest/host");
    }
    println!();
    let pick = |passes: &[BTreeMap<String, f64>], key: &str| -> Vec<f64> {
        passes.iter().filter_map(|p| p.get(key).copied()).collect()
    };
    for (key, label) in ROWS {
        let host_values = pick(&host, key);
        let host_median = median(&mut host_values.clone()).unwrap_or(0.0);
        print!("  {label:<22}{}", super::median_spread(&host_values, 22));
        for passes in &guest {
            let guest_values = pick(passes, key);
            let guest_median = median(&mut guest_values.clone()).unwrap_or(0.0);
            let ratio = if host_median > 0.0 {
                guest_median / host_median
            } else {
                0.0
            };
            print!(
                "{}{:>12}",
                super::median_spread(&guest_values, 22),
                format!("x{ratio:.3}")
            );
        }
        println!();
    }
    // One operation: a 1 MiB block each way, a random 4 KiB block each way.
    let ops = (2 * args.size_mib + 2 * args.ops) as f64;
    for (key, label) in [
        ("virtio_irqs", "interrupts/op"),
        ("device_exits", "device exits/op"),
    ] {
        print!("  {label:<22}{:>22}", "-");
        for passes in &guest {
            let values = per_op(passes, key, ops);
            let text = match median(&mut values.clone()) {
                Some(m) => format!("{m:.3}"),
                None => "-".to_string(),
            };
            print!("{text:>22}{:>12}", "");
        }
        println!();
    }
    // sie over the peer, per transport: throughput and IOPS, higher is
    // better for sie.
    let median_of = |passes: &[BTreeMap<String, f64>], key: &str| {
        median(
            &mut passes
                .iter()
                .filter_map(|p| p.get(key).copied())
                .collect::<Vec<_>>(),
        )
    };
    let (ours, theirs) = guest.split_at(transports.len());
    for ((transport, ours), theirs) in transports.iter().zip(ours).zip(theirs) {
        let ratios: Vec<String> = ROWS
            .iter()
            .map(
                |(key, label)| match (median_of(ours, key), median_of(theirs, key)) {
                    (Some(a), Some(b)) if b > 0.0 => format!("{label} x{:.2}", a / b),
                    _ => format!("{label} -"),
                },
            )
            .collect();
        println!("  sie/peer {}: {}", transport.label(), ratios.join(", "));
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_sietool_and_stay_in_the_file() {
        // sietool's LCG from state 1: 1 * a + c.
        let first = 6364136223846793005u64.wrapping_add(1442695040888963407);
        let mut offsets = Offsets {
            state: 1,
            blocks: 16384,
        };
        assert_eq!(offsets.next(), Some(((first >> 33) % 16384) * 4096));
        assert!(offsets.take(1000).all(|o| o % 4096 == 0 && o < 64 << 20));
    }

    #[test]
    fn the_pattern_checksum_sees_a_misplaced_block_and_the_guest_read_is_checked() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        pattern_block(0, &mut a);
        pattern_block(1, &mut b);
        let ab = word_sum(word_sum(WORD_SUM_START, &a), &b);
        let ba = word_sum(word_sum(WORD_SUM_START, &b), &a);
        assert_ne!(ab, ba);
        // sietool's checksum of 16 zero bytes, computed by hand: two rounds.
        let round = |h: u64| h.wrapping_mul(0x100000001b3);
        assert_eq!(
            word_sum(WORD_SUM_START, &[0; 16]),
            round(round(WORD_SUM_START))
        );
        let figures: BTreeMap<String, f64> = [
            ("read_bytes".to_string(), 8.0),
            ("read_sum".to_string(), 5.0),
        ]
        .into();
        assert!(check_read(&figures, 8, 5).is_ok());
        assert!(check_read(&figures, 16, 5).is_err());
        assert!(check_read(&figures, 8, 6).is_err());
    }

    #[test]
    fn host_pass_on_a_small_file() {
        let dir =
            ScratchDir(std::env::temp_dir().join(format!("sie-blk-test-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).unwrap();
        let disk = dir.0.join("d.img");
        let sum = fill(&disk, 2).unwrap();
        let data = std::fs::read(&disk).unwrap();
        assert_eq!(word_sum(WORD_SUM_START, &data) >> 16, sum);
        let direct = direct_works(&disk).unwrap();
        let figures = host_pass(&disk, 2, 10, direct).unwrap();
        assert!(ROWS.iter().all(|(key, _)| figures[*key] > 0.0));
        assert_eq!(std::fs::metadata(&disk).unwrap().len(), 2 << 20);
    }
}
