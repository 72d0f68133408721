//! `sie bench snapshot`, second table: sie's memory backends side by side.
//! One snapshot of the running `counter` guest per size and run is
//! restored with `File` (the memory file mapped copy-on-write, its pages in
//! the page cache), `Lazy` with no working set (faults served by sie while
//! it records one) and `Lazy` again with the working set it recorded
//! (prefetched before the vCPUs run). The guest rewrites 1% of its RAM
//! every tick (`dirty=N`) and ticks often (`delay=1000`), so its first
//! count after the restore is a "request" that needs its working set. For
//! each: the load call, and the time from the new process's start to the
//! restored guest's next count on its console; then the lazy restore with
//! a working set against `File` (the goal: within 5%). Every restore must
//! go on from its count.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::api_vmm::{
    Vmm, counts, counts_continuing, dirty_pages, median, paused_counter, restore_fresh, wait_until,
};
use crate::cli::BenchSnapshotArgs;
use crate::ctl::request;

type BoxError = Box<dyn std::error::Error>;

/// The backends timed, in the order printed.
const BACKENDS: [(&str, &str); 3] = [
    ("File", "File"),
    ("Lazy, recording", "Lazy"),
    ("Lazy, working set", "Lazy"),
];

/// A snapshot of the counter guest and the count it was taken at.
struct Taken {
    snap: PathBuf,
    mem: PathBuf,
    last: u64,
    /// The source's console (its last line may be unfinished).
    console: PathBuf,
}

fn take(program: &Path, dir: &Path, guest: &Path, mib: u32) -> Result<Taken, BoxError> {
    let config = json!({
        "boot-source": {
            "kernel_image_path": guest,
            "boot_args": format!("limit=100000000 delay=1000 dirty={}", dirty_pages(mib)),
        },
        "machine-config": {"vcpu_count": 1, "mem_size_mib": mib},
    });
    let (snap, mem) = (dir.join("backends.snap"), dir.join("backends.mem"));
    let source = paused_counter(program, dir, "backends-source", &config)?;
    // Give the console's last line time to reach the file before reading
    // where the guest stopped.
    std::thread::sleep(std::time::Duration::from_millis(50));
    let last = counts(&source.console).last().copied().unwrap_or(0);
    request(
        &source.sock,
        "PUT",
        "/snapshot/create",
        Some(&json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})),
    )?;
    Ok(Taken {
        snap,
        mem,
        last,
        console: source.console.clone(),
    })
}

/// Restores `taken` with `backend`: (load ms, start → next count ms), and
/// the still-running VMM.
fn restore(
    program: &Path,
    dir: &Path,
    taken: &Taken,
    backend: &str,
) -> Result<(f64, f64, Vmm), BoxError> {
    let (restored, process_start, load_ms) = restore_fresh(
        program,
        dir,
        "backends-restored",
        (&taken.snap, &taken.mem),
        backend,
    )?;
    let next = taken.last + 1;
    wait_until(
        &format!("the {backend} guest to print count {next}"),
        || counts_continuing(&taken.console, &restored.console).first() == Some(&next),
    )?;
    let first_count_ms = process_start.elapsed().as_secs_f64() * 1e3;
    Ok((load_ms, first_count_ms, restored))
}

/// Pages in the working set at `path` (its header's count).
fn working_set_pages(path: &Path) -> Result<u64, BoxError> {
    let bytes = std::fs::read(path)?;
    let count = bytes
        .get(24..32)
        .ok_or("a working set shorter than its header")?;
    Ok(u64::from_le_bytes(count.try_into()?))
}

/// Measures and prints the table.
pub fn print(args: &BenchSnapshotArgs, dir: &Path, guest: &Path) -> Result<(), BoxError> {
    let program = std::env::current_exe()?;
    println!(
        "sie restore backends: load call, and process start → the restored guest's next count (its first request); median of {} runs",
        args.runs
    );
    println!(
        "  {:<22} {:>8} {:>9} {:>16} {:>17}",
        "backend", "MiB", "load ms", "first count ms", "working set pages"
    );
    let mut ratios = Vec::new();
    for &mib in &args.sizes_mib {
        let mut figures = vec![(Vec::new(), Vec::new()); BACKENDS.len()];
        let mut pages = 0;
        for _ in 0..args.runs {
            let taken = take(&program, dir, guest, mib)?;
            let ws = sie_vmm::snapshot::working_set::path_for(&taken.mem);
            for (index, (name, backend)) in BACKENDS.iter().enumerate() {
                let (load_ms, first_ms, vmm) = restore(&program, dir, &taken, backend)
                    .map_err(|e| format!("{name}, {mib} MiB: {e}"))?;
                if index == 1 {
                    wait_until("the working set", || ws.exists())?;
                    pages = working_set_pages(&ws)?;
                }
                drop(vmm);
                figures[index].0.push(load_ms);
                figures[index].1.push(first_ms);
            }
            let _ = std::fs::remove_file(&ws);
        }
        let mut first_counts = Vec::new();
        for ((name, _), (load, first)) in BACKENDS.iter().zip(figures) {
            let shown = if name.starts_with("Lazy") {
                pages.to_string()
            } else {
                "-".to_string()
            };
            first_counts.push(median(first));
            println!(
                "  {name:<22} {mib:>8} {:>9.2} {:>16.2} {shown:>17}",
                median(load),
                first_counts[first_counts.len() - 1]
            );
        }
        ratios.push((mib, first_counts[2] / first_counts[0]));
    }
    for (mib, ratio) in ratios {
        println!(
            "  first count at {mib} MiB, Lazy with its working set / File: x{ratio:.3} (goal: at most x1.05)"
        );
    }
    Ok(())
}
