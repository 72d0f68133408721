//! `sie bench boot`: boots a kernel several times and prints the median and
//! spread of the time to each boot marker and to sie's exit, for each way of
//! booting it: a bzImage decompressed on the host, the same bzImage the
//! classic way, its vmlinux (`--vmlinux`), and optionally another command
//! (`--compare`, e.g. another VMM on the same kernel) timed to its exit.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Instant;

use super::median;
use crate::cli::BenchBootArgs;

type BoxError = Box<dyn std::error::Error>;
/// Boots one variant once.
type RunOnce = dyn Fn() -> Result<Sample, BoxError>;

/// One timed run: milliseconds to each marker (by name) and to the exit.
struct Sample {
    markers: BTreeMap<String, f64>,
    exit_ms: f64,
}

/// Reads `--stats` boot-marker lines (`  12.345 ms  port 0x80  0x41`).
fn parse_markers(stats: &str) -> BTreeMap<String, f64> {
    let mut markers = BTreeMap::new();
    let mut in_markers = false;
    for line in stats.lines() {
        if line.starts_with("boot markers") {
            in_markers = true;
            continue;
        }
        if !in_markers {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() >= 4
            && words[1] == "ms"
            && let Ok(ms) = words[0].parse::<f64>()
        {
            markers.entry(words[2..].join(" ")).or_insert(ms);
        }
    }
    markers
}

fn run_sie(args: &[String]) -> Result<Sample, BoxError> {
    let exe = std::env::current_exe()?;
    let start = Instant::now();
    let output = Command::new(exe)
        .arg("run")
        .args(args)
        .arg("--stats")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let exit_ms = start.elapsed().as_secs_f64() * 1000.0;
    if !output.status.success() {
        return Err(format!(
            "sie run {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )
        .into());
    }
    Ok(Sample {
        markers: parse_markers(&String::from_utf8_lossy(&output.stderr)),
        exit_ms,
    })
}

fn run_command(command: &str) -> Result<Sample, BoxError> {
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("{command:?} failed with {status}").into());
    }
    Ok(Sample {
        markers: BTreeMap::new(),
        exit_ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

fn spread(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max - min
}

/// Runs the benchmark and prints its table.
pub fn run(args: &BenchBootArgs) -> Result<u8, BoxError> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let mut common = Vec::new();
    if let Some(initrd) = &args.initrd {
        common.extend(["--initrd".to_string(), initrd.display().to_string()]);
    }
    if let Some(cmdline) = &args.cmdline {
        common.extend(["--cmdline".to_string(), cmdline.clone()]);
    }
    common.extend(["--memory".to_string(), args.memory.clone()]);
    common.extend(["--vcpus".to_string(), args.vcpus.to_string()]);
    let kernel = args.kernel.display().to_string();
    let is_bzimage = std::fs::read(&args.kernel)
        .map(|bytes| sie_vmlinux::is_bzimage(&bytes))
        .unwrap_or(false);

    // (label, how to run once)
    let mut variants: Vec<(String, Box<RunOnce>)> = Vec::new();
    let with = |kernel: String, extra: &[&str]| {
        let mut argv = vec!["--kernel".to_string(), kernel];
        argv.extend(common.iter().cloned());
        argv.extend(extra.iter().map(|s| s.to_string()));
        move || run_sie(&argv)
    };
    if let Some(vmlinux) = &args.vmlinux {
        variants.push((
            "vmlinux".into(),
            Box::new(with(vmlinux.display().to_string(), &[])),
        ));
    }
    if is_bzimage {
        variants.push((
            "bzImage, host decompression".into(),
            Box::new(with(kernel.clone(), &[])),
        ));
        variants.push((
            "bzImage, classic".into(),
            Box::new(with(kernel.clone(), &["--no-host-decompress"])),
        ));
    } else {
        variants.push(("kernel".into(), Box::new(with(kernel.clone(), &[]))));
    }
    if let Some(command) = args.compare.clone() {
        variants.push((
            "compare command".into(),
            Box::new(move || run_command(&command)),
        ));
    }

    // Warm the page cache and the vmlinux cache once, untimed.
    for (_, run_once) in &variants {
        run_once()?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs {
        for (index, (_, run_once)) in variants.iter().enumerate() {
            samples[index].push(run_once()?);
        }
    }

    println!(
        "sie bench boot: {} runs each, median (spread) in ms",
        args.runs
    );
    let baseline = samples
        .first()
        .map(|s| median(&mut s.iter().map(|x| x.exit_ms).collect::<Vec<_>>()).unwrap_or(1.0))
        .unwrap_or(1.0);
    for ((label, _), runs) in variants.iter().zip(&samples) {
        let mut exits: Vec<f64> = runs.iter().map(|s| s.exit_ms).collect();
        let exit_spread = spread(&exits);
        let exit = median(&mut exits).unwrap_or(0.0);
        // run_sie fails the bench on any other status, so every run counted
        // here exited 0; the count says so in the table.
        println!(
            "  {label:<30} exit {exit:>9.1} ({exit_spread:>6.1})  x{:.3} vs {}  {}/{} exited 0",
            exit / baseline,
            variants[0].0,
            runs.len(),
            args.runs
        );
        let names: std::collections::BTreeSet<&String> =
            runs.iter().flat_map(|s| s.markers.keys()).collect();
        for name in names {
            let mut times: Vec<f64> = runs
                .iter()
                .filter_map(|s| s.markers.get(name).copied())
                .collect();
            let marker_spread = spread(&times);
            let at = median(&mut times).unwrap_or(0.0);
            println!(
                "  {:<30}   {name:<16} {at:>9.1} ({marker_spread:>6.1})  in {}/{} runs",
                "",
                times.len(),
                runs.len()
            );
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_read_from_the_stats_report() {
        let stats = "sie exit statistics\n  pio_out 3\nboot markers\n     12.500 ms  port 0x80  0x41\n     13.000 ms  boot timer 0x7b\n";
        let markers = parse_markers(stats);
        assert_eq!(markers.get("port 0x80 0x41"), Some(&12.5));
        assert_eq!(markers.get("boot timer 0x7b"), Some(&13.0));
        assert_eq!(spread(&[1.0, 4.0, 2.0]), 3.0);
    }
}
