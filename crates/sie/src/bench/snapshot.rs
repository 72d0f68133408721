//! `sie bench snapshot`: how long a Full snapshot of a running guest takes
//! to write, then a Diff after the guest dirtied 1% of its RAM, and how long
//! a new process takes from its start to a running restored guest, per
//! guest size; for sie and, with `--peer`, another VMM
//! that speaks Firecracker's API. Every restore is checked: the guest (the
//! `counter` guest, which counts in its RAM) must print the next count.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::api_vmm::in_counter_scratch;
use super::api_vmm::{
    SNAPSHOT_CALL, Vmm, counts, counts_continuing, dirty_pages, median, paused_counter,
    restore_fresh, set_state, wait_until,
};

use crate::cli::BenchSnapshotArgs;
use crate::ctl::request_within;

type BoxError = Box<dyn std::error::Error>;

/// One snapshot and restore.
struct Sample {
    create_ms: f64,
    diff_ms: f64,
    load_ms: f64,
    start_to_running_ms: f64,
    memory_file_mib: f64,
}

fn once(program: &Path, dir: &Path, guest: &Path, mib: u32) -> Result<Sample, BoxError> {
    let config = json!({
        "boot-source": {
            "kernel_image_path": guest,
            "boot_args": format!("limit=100000000 delay=20000 dirty={}", dirty_pages(mib)),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mib, "track_dirty_pages": true},
        // Firecracker's config file requires the list, empty or not.
        "drives": [],
    });
    let (snap, mem) = (dir.join("vm.snap"), dir.join("vm.mem"));
    let source = paused_counter(program, dir, "source", &config)?;
    let last = counts(&source.console).last().copied().unwrap_or(0);
    let started = Instant::now();
    request_within(
        &source.sock,
        "PUT",
        "/snapshot/create",
        Some(&json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})),
        SNAPSHOT_CALL,
    )?;
    let create_ms = started.elapsed().as_secs_f64() * 1e3;
    let diff_ms = diff_after_a_tick(&source, dir)?;
    let source_console = source.console.clone();
    drop(source);
    let memory_file_mib = std::fs::metadata(&mem)?.blocks() as f64 * 512.0 / f64::from(1 << 20);

    let (restored, process_start, load_ms) =
        restore_fresh(program, dir, "restored", (&snap, &mem), "File")?;
    let start_to_running_ms = process_start.elapsed().as_secs_f64() * 1e3;
    // The check: the restored guest goes on from its last count.
    let next = last + 1;
    wait_until(&format!("the restored guest to print count {next}"), || {
        counts_continuing(&source_console, &restored.console).first() == Some(&next)
    })?;
    Ok(Sample {
        create_ms,
        diff_ms,
        load_ms,
        start_to_running_ms,
        memory_file_mib,
    })
}

/// Resumes the paused `source` until it has counted twice more (so it
/// rewrote its 1% of RAM after the Full snapshot), pauses it, and times a
/// Diff snapshot; in ms.
fn diff_after_a_tick(source: &Vmm, dir: &Path) -> Result<f64, BoxError> {
    let seen = counts(&source.console).len();
    set_state(source, "Resumed")?;
    wait_until("two more counts", || {
        counts(&source.console).len() >= seen + 2
    })?;
    set_state(source, "Paused")?;
    let (snap, mem) = (dir.join("diff.snap"), dir.join("diff.mem"));
    let started = Instant::now();
    request_within(
        &source.sock,
        "PUT",
        "/snapshot/create",
        Some(&json!({"snapshot_type": "Diff", "snapshot_path": snap, "mem_file_path": mem})),
        SNAPSHOT_CALL,
    )?;
    Ok(started.elapsed().as_secs_f64() * 1e3)
}

/// The files one run leaves in `dir`.
const RUN_FILES: [&str; 4] = ["vm.snap", "vm.mem", "diff.snap", "diff.mem"];

/// Removes the files a run left in `dir`, so the next run (the other
/// VMM's, interleaved) does not wait behind this one's writeback:
/// Firecracker leaves a whole guest's RAM dirty in the page cache, and
/// sie's fsync or a throttled write paid for it. An unlinked file's dirty
/// pages are dropped, not written. (Not `syncfs`: on a shared host it
/// waits for everyone's dirty data.)
fn settle(dir: &Path) -> Result<(), BoxError> {
    for name in RUN_FILES {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// `runs` rounds of `measure(0)`, `measure(1)` … `measure(count - 1)`,
/// each VMM's samples apart: interleaved, so drift on a busy host (another
/// job starting, the page cache filling) hits every VMM alike.
fn interleaved<T>(
    runs: u32,
    count: usize,
    mut measure: impl FnMut(usize) -> Result<T, BoxError>,
) -> Result<Vec<Vec<T>>, BoxError> {
    let mut samples: Vec<Vec<T>> = (0..count).map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, of_one) in samples.iter_mut().enumerate() {
            of_one.push(measure(i)?);
        }
    }
    Ok(samples)
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchSnapshotArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.sizes_mib.contains(&0) {
        return Err("--runs and every --sizes-mib must be at least 1".into());
    }
    in_counter_scratch("snapshot", |dir, guest| measure(args, dir, guest))
}

fn measure(args: &BenchSnapshotArgs, dir: &Path, guest: &Path) -> Result<u8, BoxError> {
    let mut vmms = vec![("sie".to_string(), std::env::current_exe()?)];
    if let Some(peer) = &args.peer {
        let name = peer
            .file_name()
            .map_or_else(|| "peer".to_string(), |n| n.to_string_lossy().into_owned());
        vmms.push((format!("peer ({name})"), peer.clone()));
    }
    println!(
        "sie bench snapshot: counter guest, 1 vCPU, dirty page tracking on; Full snapshot of a running guest, then a Diff with 1% of RAM dirty; the Full one restored in a new process; median of {} runs",
        args.runs
    );
    println!(
        "  {:<22} {:>8} {:>11} {:>9} {:>9} {:>17} {:>14}",
        "vmm", "MiB", "create ms", "diff ms", "load ms", "start→running ms", "mem file MiB"
    );
    let mut rows: Vec<(String, u32, [f64; 5])> = Vec::new();
    for &mib in &args.sizes_mib {
        let per_vmm = interleaved(args.runs, vmms.len(), |i| {
            let (name, program) = &vmms[i];
            let sample =
                once(program, dir, guest, mib).map_err(|e| format!("{name}, {mib} MiB: {e}"))?;
            settle(dir)?;
            Ok(sample)
        })?;
        for ((name, _), samples) in vmms.iter().zip(per_vmm) {
            let figures = [
                median(samples.iter().map(|s| s.create_ms).collect()),
                median(samples.iter().map(|s| s.diff_ms).collect()),
                median(samples.iter().map(|s| s.load_ms).collect()),
                median(samples.iter().map(|s| s.start_to_running_ms).collect()),
                median(samples.iter().map(|s| s.memory_file_mib).collect()),
            ];
            println!(
                "  {name:<22} {mib:>8} {:>11.2} {:>9.2} {:>9.2} {:>17.2} {:>14.2}",
                figures[0], figures[1], figures[2], figures[3], figures[4]
            );
            rows.push((name.clone(), mib, figures));
        }
    }
    if vmms.len() == 2 {
        for &mib in &args.sizes_mib {
            let of = |who: &str| {
                rows.iter()
                    .find(|(n, m, _)| n.starts_with(who) && *m == mib)
            };
            if let (Some((_, _, sie)), Some((_, _, peer))) = (of("sie"), of("peer")) {
                println!(
                    "  sie/peer at {mib} MiB: create x{:.2}, diff x{:.2}, load x{:.2}, start→running x{:.2}",
                    sie[0] / peer[0],
                    sie[1] / peer[1],
                    sie[2] / peer[2],
                    sie[3] / peer[3]
                );
            }
        }
    }
    super::restore_backends::print(args, dir, guest)?;
    println!("  checked: every restore went on counting from the count its snapshot was taken at");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settling_removes_a_runs_files_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("sie-bench-settle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["vm.snap", "vm.mem", "counter.elf"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        settle(&dir).unwrap();
        assert!(!dir.join("vm.snap").exists() && !dir.join("vm.mem").exists());
        assert!(dir.join("counter.elf").exists(), "the guest stays");
        // Nothing left to remove is no error.
        settle(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runs_alternate_between_the_vmms() {
        let mut order = Vec::new();
        let samples = interleaved(3, 2, |i| {
            order.push(i);
            Ok(order.len())
        })
        .unwrap();
        assert_eq!(order, [0, 1, 0, 1, 0, 1]);
        assert_eq!(samples, [vec![1, 3, 5], vec![2, 4, 6]]);
        let error = interleaved(3, 2, |i| {
            if i == 1 {
                Err("the peer failed".into())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(error.to_string(), "the peer failed");
    }
}
