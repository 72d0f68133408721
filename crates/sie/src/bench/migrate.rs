//! `sie bench migrate`: live migration of the counter guest between two sie
//! processes over a Unix socket, idle and dirtying memory at set rates, per
//! guest size: total time, pre-copy rounds, bytes sent, the downtime the
//! guest saw and the throttle auto-converge reached, as the source reports
//! them in its last line (optionally over a link capped with
//! `max_bandwidth_mib_s`, with or without auto-converge), or in local mode
//! (`--local`: shared guest RAM handed over, no page copied). Every move is
//! checked: the destination's first count follows the source's last.

use std::path::Path;

use serde_json::json;

use super::api_vmm::in_counter_scratch;
use super::api_vmm::{counts, counts_continuing, median, spawn, spawn_logged, wait_until};
use crate::cli::BenchMigrateArgs;
use crate::ctl::request;

type BoxError = Box<dyn std::error::Error>;

/// What one move took, from the source's last line.
struct Sample {
    total_ms: f64,
    rounds: f64,
    mib_sent: f64,
    downtime_ms: f64,
    throttle_percent: f64,
    /// The downtime's parts the source names (pause and state, last pages,
    /// the receiver's build, go to done), 0 where it names none.
    parts: [f64; 4],
}

/// The parts " (pause and state A ms, last pages B ms, state out and the
/// receiver's build C ms, go to done D ms)" of a source's last line.
fn downtime_parts(line: &str) -> [f64; 4] {
    let labels = [
        "pause and state ",
        "last pages ",
        "state out and the receiver's build ",
        "go to done ",
    ];
    labels.map(|label| {
        line.split(label)
            .nth(1)
            .and_then(|rest| rest.split(" ms").next())
            .and_then(|number| number.parse().ok())
            .unwrap_or(0.0)
    })
}

/// Reads "... after N pre-copy rounds: X MiB sent, D ms of downtime, T ms
/// in all[, the vCPUs throttled P% at the end] ..." from the source's
/// stderr.
fn parse_line(stderr: &str) -> Option<Sample> {
    let line = stderr
        .lines()
        .find(|l| l.contains("pre-copy rounds") || l.contains("in local mode"))?;
    let number_before = |marker: &str| -> Option<f64> {
        let head = line.split(marker).next()?;
        head.rsplit(' ').next()?.parse().ok()
    };
    // "... in local mode: M MiB of guest RAM handed over, K KiB sent, ..."
    if line.contains("in local mode") {
        return Some(Sample {
            rounds: 0.0,
            mib_sent: number_before(" KiB sent")? / 1024.0,
            downtime_ms: number_before(" ms of downtime")?,
            total_ms: number_before(" ms in all")?,
            throttle_percent: 0.0,
            parts: downtime_parts(line),
        });
    }
    Some(Sample {
        rounds: number_before(" pre-copy rounds")?,
        mib_sent: number_before(" MiB sent")?,
        downtime_ms: number_before(" ms of downtime")?,
        total_ms: number_before(" ms in all")?,
        throttle_percent: line
            .contains("% at the end")
            .then(|| number_before("% at the end"))
            .flatten()
            .unwrap_or(0.0),
        parts: downtime_parts(line),
    })
}

/// The downtime's parts, named as the source names them.
fn parts_line(parts: [f64; 4]) -> String {
    format!(
        "pause and state {:.1} ms, last pages {:.1} ms, state out and the receiver's build {:.1} ms, go to done {:.1} ms",
        parts[0], parts[1], parts[2], parts[3]
    )
}

/// The `percent`th percentile of sorted `values`, nearest rank (NaN when
/// there are none).
fn nearest_rank(sorted: &[f64], percent: usize) -> f64 {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied().unwrap_or(f64::NAN)
}

fn once(
    program: &Path,
    dir: &Path,
    guest: &Path,
    mib: u32,
    dirty_pages: u64,
    args: &BenchMigrateArgs,
) -> Result<Sample, BoxError> {
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        json!({
            "boot-source": {
                "kernel_image_path": guest,
                "boot_args": format!("limit=100000000 delay=20000 dirty={dirty_pages}"),
            },
            "machine-config": {"vcpu_count": 1, "mem_size_mib": mib, "shared_memory": args.local},
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
        Some(&send_body(&url, args)),
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
        || counts_continuing(&source.console, &dest.console).first() == Some(&(last + 1)),
    )?;
    Ok(sample)
}

/// `PUT /migration/send`'s body for `args`.
fn send_body(url: &str, args: &BenchMigrateArgs) -> serde_json::Value {
    let mut body = json!({ "destination_url": url, "local": args.local });
    // Local mode refuses the copy-only settings (it pauses once).
    if !args.local {
        body["downtime_ms"] = json!(300);
        body["auto_converge"] = json!(!args.no_auto_converge);
    }
    if let Some(cap) = args.max_bandwidth_mib_s {
        body["max_bandwidth_mib_s"] = json!(cap);
    }
    body
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchMigrateArgs) -> Result<u8, BoxError> {
    if args.local && (args.no_auto_converge || args.max_bandwidth_mib_s.is_some()) {
        return Err(
            "--local copies no memory: --no-auto-converge and --max-bandwidth-mib-s do not apply"
                .into(),
        );
    }
    if args.runs == 0 || args.sizes_mib.contains(&0) || args.max_bandwidth_mib_s == Some(0) {
        return Err(
            "--runs, every --sizes-mib and --max-bandwidth-mib-s must be at least 1".into(),
        );
    }
    in_counter_scratch("migrate", |dir, guest| measure(args, dir, guest))
}

fn measure(args: &BenchMigrateArgs, dir: &Path, guest: &Path) -> Result<u8, BoxError> {
    let program = std::env::current_exe()?;
    let link = args
        .max_bandwidth_mib_s
        .map_or("uncapped".to_string(), |cap| {
            format!("capped at {cap} MiB/s")
        });
    let converge = if args.no_auto_converge { "off" } else { "on" };
    let how = if args.local {
        "local mode (shared RAM handed over)"
    } else {
        "pre-copy"
    };
    println!(
        "sie bench migrate: counter guest, 1 vCPU, moved between two sie processes over a Unix socket ({link}), {how}, downtime_ms 300, auto-converge {converge}; median of {} runs (p99: the 99th percentile of the downtimes, nearest rank; worst: the longest)",
        args.runs
    );
    println!(
        "  {:>8} {:>18} {:>10} {:>8} {:>10} {:>12} {:>10} {:>10} {:>10}",
        "MiB",
        "dirtying",
        "total ms",
        "rounds",
        "MiB sent",
        "downtime ms",
        "p99 ms",
        "worst ms",
        "throttle %"
    );
    for &mib in &args.sizes_mib {
        for &percent in &args.dirty_percent {
            // `percent` of RAM rewritten on every count (a few per second).
            let pages = (u64::from(mib) * 256 * u64::from(percent)).div_ceil(100);
            let mut samples = Vec::with_capacity(args.runs as usize);
            for _ in 0..args.runs {
                samples.push(
                    once(&program, dir, guest, mib, pages, args)
                        .map_err(|e| format!("{mib} MiB, {percent}% dirty: {e}"))?,
                );
            }
            let label = if percent == 0 {
                "idle".to_string()
            } else {
                format!("{percent}% a tick")
            };
            let mut downtimes: Vec<f64> = samples.iter().map(|s| s.downtime_ms).collect();
            downtimes.sort_by(f64::total_cmp);
            let p99 = nearest_rank(&downtimes, 99);
            let worst = downtimes.last().copied().unwrap_or(f64::NAN);
            println!(
                "  {mib:>8} {label:>18} {:>10.1} {:>8.0} {:>10.1} {:>12.1} {p99:>10.1} {worst:>10.1} {:>10.0}",
                median(samples.iter().map(|s| s.total_ms).collect()),
                median(samples.iter().map(|s| s.rounds).collect()),
                median(samples.iter().map(|s| s.mib_sent).collect()),
                median(downtimes.clone()),
                median(samples.iter().map(|s| s.throttle_percent).collect()),
            );
            let part = |index: usize| median(samples.iter().map(|s| s.parts[index]).collect());
            println!(
                "  {:>8} downtime, medians: {}",
                "",
                parts_line([part(0), part(1), part(2), part(3)])
            );
            // What made the slowest move slow.
            if let Some(slowest) = samples
                .iter()
                .max_by(|a, b| a.downtime_ms.total_cmp(&b.downtime_ms))
            {
                println!(
                    "  {:>8} downtime, worst run: {}",
                    "",
                    parts_line(slowest.parts)
                );
            }
        }
    }
    println!("  checked: every destination went on counting from the source's last count");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p99_is_the_nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&hundred, 99), 99.0);
        assert_eq!(nearest_rank(&hundred[..10], 99), 10.0);
        assert_eq!(nearest_rank(&[7.0], 99), 7.0);
        assert!(nearest_rank(&[], 99).is_nan());
    }

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
        assert_eq!(sample.throttle_percent, 0.0);
        let throttled = "sie: the VM migrated to unix:/t/m.sock after 9 pre-copy rounds: 5.1 MiB sent, 16 ms of downtime, 5286 ms in all, the vCPUs throttled 99% at the end; it runs there now";
        let sample = parse_line(throttled).unwrap();
        assert_eq!(
            (sample.rounds, sample.throttle_percent, sample.total_ms),
            (9.0, 99.0, 5286.0)
        );
        assert_eq!(sample.parts, [0.0; 4], "an older sie names no parts");
        assert!(parse_line("sie: stopped by signal 15").is_none());
        let parted = "sie: the VM migrated to unix:/t/m.sock after 2 pre-copy rounds: 5.0 MiB sent, 20 ms of downtime (pause and state 1.5 ms, last pages 3.0 ms, state out and the receiver's build 14.2 ms, go to done 0.8 ms), 700 ms in all; it runs there now";
        let sample = parse_line(parted).unwrap();
        assert_eq!((sample.downtime_ms, sample.total_ms), (20.0, 700.0));
        assert_eq!(sample.parts, [1.5, 3.0, 14.2, 0.8]);
        let local = "sie: the VM migrated to unix:/t/m.sock in local mode: 1024.0 MiB of guest RAM handed over, 20.5 KiB sent, 12 ms of downtime, 30 ms in all; it runs there now";
        let sample = parse_line(local).unwrap();
        assert_eq!(
            (sample.rounds, sample.downtime_ms, sample.total_ms),
            (0.0, 12.0, 30.0)
        );
        assert!((sample.mib_sent - 20.5 / 1024.0).abs() < 1e-9);
    }
}
