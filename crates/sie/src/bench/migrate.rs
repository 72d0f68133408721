//! `sie bench migrate`: live migration of the counter guest between two sie
//! processes over a Unix socket, idle and dirtying memory at set rates, per
//! guest size: total time, pre-copy rounds, bytes sent and the downtime the
//! guest saw, as the source reports them in its last line. Every move is
//! checked: the destination's first count follows the source's last.

use std::path::Path;

use serde_json::json;

use super::api_vmm::{counts, median, spawn, spawn_logged, wait_until};
use crate::cli::BenchMigrateArgs;
use crate::ctl::request;

type BoxError = Box<dyn std::error::Error>;

/// What one move took, from the source's last line.
struct Sample {
    total_ms: f64,
    rounds: f64,
    mib_sent: f64,
    downtime_ms: f64,
}

/// Reads "... after N pre-copy rounds: X MiB sent, D ms of downtime, T ms
/// in all ..." from the source's stderr.
fn parse_line(stderr: &str) -> Option<Sample> {
    let line = stderr.lines().find(|l| l.contains("pre-copy rounds"))?;
    let number_before = |marker: &str| -> Option<f64> {
        let head = line.split(marker).next()?;
        head.rsplit(' ').next()?.parse().ok()
    };
    Some(Sample {
        rounds: number_before(" pre-copy rounds")?,
        mib_sent: number_before(" MiB sent")?,
        downtime_ms: number_before(" ms of downtime")?,
        total_ms: number_before(" ms in all")?,
    })
}

fn once(
    program: &Path,
    dir: &Path,
    guest: &Path,
    mib: u32,
    dirty_pages: u64,
) -> Result<Sample, BoxError> {
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        json!({
            "boot-source": {
                "kernel_image_path": guest,
                "boot_args": format!("limit=100000000 delay=20000 dirty={dirty_pages}"),
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": mib},
            "drives": [],
        })
        .to_string(),
    )?;
    let url = format!("unix:{}", dir.join("migrate.sock").display());
    let dest = spawn(program, dir, "dest", &[])?;
    request(
        &dest.sock,
        "PUT",
        "/migration/receive",
        Some(&json!({ "receiver_url": url })),
    )?;
    let mut source = spawn_logged(
        program,
        dir,
        "source",
        &["--config-file", &config.to_string_lossy()],
    )?;
    wait_until("the guest's second count", || {
        counts(&source.console).len() >= 2
    })?;
    request(
        &source.sock,
        "PUT",
        "/migration/send",
        Some(&json!({ "destination_url": url, "downtime_ms": 300 })),
    )?;
    let (code, stderr) = source.wait_for_exit()?;
    if code != 0 {
        return Err(format!("the source exited {code}: {}", stderr.trim()).into());
    }
    let sample = parse_line(&stderr)
        .ok_or_else(|| format!("no figures in the source's last line: {}", stderr.trim()))?;
    // The check: the destination goes on from the source's last count.
    let last = counts(&source.console).last().copied().unwrap_or(0);
    wait_until(
        &format!("the destination to print count {}", last + 1),
        || counts(&dest.console).first() == Some(&(last + 1)),
    )?;
    Ok(sample)
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchMigrateArgs) -> Result<u8, BoxError> {
    if args.runs == 0 || args.sizes_mib.contains(&0) {
        return Err("--runs and every --sizes-mib must be at least 1".into());
    }
    let dir = std::env::temp_dir().join(format!("sie-bench-migrate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn measure(args: &BenchMigrateArgs, dir: &Path) -> Result<u8, BoxError> {
    let guest = dir.join("counter.elf");
    std::fs::write(&guest, sie_guests::COUNTER.bytes)?;
    let program = std::env::current_exe()?;
    println!(
        "sie bench migrate: counter guest, 1 vCPU, moved between two sie processes over a Unix socket, downtime_ms 300; median of {} runs",
        args.runs
    );
    println!(
        "  {:>8} {:>18} {:>10} {:>8} {:>10} {:>12}",
        "MiB", "dirtying", "total ms", "rounds", "MiB sent", "downtime ms"
    );
    for &mib in &args.sizes_mib {
        for &percent in &args.dirty_percent {
            // `percent` of RAM rewritten on every count (a few per second).
            let pages = (u64::from(mib) * 256 * u64::from(percent)).div_ceil(100);
            let mut samples = Vec::with_capacity(args.runs as usize);
            for _ in 0..args.runs {
                samples.push(
                    once(&program, dir, &guest, mib, pages)
                        .map_err(|e| format!("{mib} MiB, {percent}% dirty: {e}"))?,
                );
            }
            let label = if percent == 0 {
                "idle".to_string()
            } else {
                format!("{percent}% a tick")
            };
            println!(
                "  {mib:>8} {label:>18} {:>10.1} {:>8.0} {:>10.1} {:>12.1}",
                median(samples.iter().map(|s| s.total_ms).collect()),
                median(samples.iter().map(|s| s.rounds).collect()),
                median(samples.iter().map(|s| s.mib_sent).collect()),
                median(samples.iter().map(|s| s.downtime_ms).collect()),
            );
        }
    }
    println!("  checked: every destination went on counting from the source's last count");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sources_last_line_gives_the_figures() {
        let line = "sie: the VM migrated to unix:/t/m.sock after 3 pre-copy rounds: 12.5 MiB sent, 41 ms of downtime, 900 ms in all; it runs there now";
        let sample = parse_line(line).unwrap();
        assert_eq!(
            (
                sample.rounds,
                sample.mib_sent,
                sample.downtime_ms,
                sample.total_ms
            ),
            (3.0, 12.5, 41.0, 900.0)
        );
        assert!(parse_line("sie: stopped by signal 15").is_none());
    }
}
