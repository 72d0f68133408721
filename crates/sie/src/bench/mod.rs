//! `sie bench`: micro-benchmarks that print figures (median of several runs,
//! and a ratio against a baseline measured in the same invocation).

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};

mod api_vmm;
pub mod blk;
pub mod boot;
pub mod exits;
pub mod idle_memory;
pub mod lifecycle;
pub mod migrate;
pub mod net;
mod peer_guest;
mod restore_backends;
pub mod snapshot;
pub mod transport;

type BoxError = Box<dyn std::error::Error>;

/// Kernel arguments of a guest bench when `--cmdline` is not given (the
/// rig's L2 arguments).
const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd quiet";

/// The median of `values` (which it sorts); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// Largest minus smallest of `values` (0 when empty).
pub fn spread(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    max - min
}

/// `median (spread)` of `values`, formatted to `width` characters.
pub fn median_spread(values: &[f64], width: usize) -> String {
    let mut sorted = values.to_vec();
    let text = match median(&mut sorted) {
        Some(m) => format!("{m:.1} ({:.1})", spread(values)),
        None => "-".to_string(),
    };
    format!("{text:>width$}")
}

/// The `@@BENCH key=value` lines a guest printed on its console.
pub fn bench_lines(output: &str) -> BTreeMap<String, f64> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("@@BENCH ")?;
            let (key, value) = rest.split_once('=')?;
            Some((key.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// The guest's kernel command line: `cmdline` (or the default), with
/// `case=<case>` unless it names a case already, and `extra` appended.
pub fn guest_cmdline(cmdline: Option<&str>, case: &str, extra: &str) -> String {
    let mut line = cmdline.unwrap_or(DEFAULT_CMDLINE).trim().to_string();
    if !line.split_whitespace().any(|arg| arg.starts_with("case=")) {
        line.push_str(&format!(" case={case}"));
    }
    format!("{line} {extra}")
}

/// Starts `sie run ARGS` (this executable) with its console captured.
pub fn spawn_sie_run(args: &[String]) -> Result<Child, BoxError> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("run")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

/// Waits for a `sie run` started by [`spawn_sie_run`]; its stdout and
/// stderr, or an error with the last lines when it failed.
pub fn finish_sie_run(child: Child) -> Result<String, BoxError> {
    finish_child(child, "sie run")
}

/// Waits for `child` (`what` names it in errors), started with its stdout
/// and stderr piped; both, or an error with the last lines when it failed.
pub fn finish_child(mut child: Child, what: &str) -> Result<String, BoxError> {
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });
    let output = child.wait_with_output()?;
    let stderr = reader.join().unwrap_or_default();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&stderr);
    if !output.status.success() {
        return Err(format!("{what} failed ({}):\n{}", output.status, tail(&text, 40)).into());
    }
    Ok(text)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The `@@BENCH` values for `keys` from a guest's output, or an error
/// quoting the output's end.
pub fn guest_figures(output: &str, keys: &[&str]) -> Result<BTreeMap<String, f64>, BoxError> {
    let lines = bench_lines(output);
    match keys.iter().find(|key| !lines.contains_key(**key)) {
        Some(missing) => Err(format!(
            "the guest printed no @@BENCH {missing}= line; its console ended with:\n{}",
            tail(output, 15)
        )
        .into()),
        None => Ok(lines),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn bench_lines_and_cmdline() {
        let out = "boot\r\n@@BENCH seq_read_mib_s=12.5\r\n@@BENCH bad=x\n @@BENCH iops=300\n";
        let lines = bench_lines(out);
        assert_eq!(lines.get("seq_read_mib_s"), Some(&12.5));
        assert_eq!(lines.get("iops"), Some(&300.0));
        assert!(!lines.contains_key("bad"));
        assert!(guest_figures(out, &["iops", "missing"]).is_err());
        assert_eq!(guest_cmdline(Some("a case=x"), "y", "k=1"), "a case=x k=1");
        assert!(guest_cmdline(None, "y", "k=1").ends_with("quiet case=y k=1"));
        assert_eq!(spread(&[1.0, 4.0, 2.0]), 3.0);
        assert_eq!(median_spread(&[1.0, 3.0], 0), "2.0 (2.0)");
    }
}
