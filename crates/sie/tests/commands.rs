//! `sie doctor` and `sie bench exits` on the real /dev/kvm: they run, print
//! their figures and verdict, and exit as documented.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn sie(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sie");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sie {args:?} did not finish in 120 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn doctor_reports_the_host_measures_and_gives_a_verdict() {
    let out = sie(&["doctor"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "KVM API version",
        "backend module",
        "IRQCHIP",
        "guest instruction rate",
        "port-I/O exit round trip",
        "VMM resident",
        "thread stacks",
        "verdict:",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    assert!(
        !stdout.contains("failed:"),
        "a measurement failed:\n{stdout}"
    );
    let rate_line = stdout
        .lines()
        .find(|l| l.contains("guest instruction rate"))
        .unwrap();
    assert!(rate_line.contains("million/s"), "{rate_line}");
}

#[test]
fn bench_exits_prints_both_loops_and_their_ratio() {
    let out = sie(&["bench", "exits", "--count", "200", "--runs", "3"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for phase in ["port write", "port read", "MMIO write"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(phase))
            .unwrap_or_else(|| panic!("no {phase} row in:\n{stdout}"));
        let figures: Vec<f64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        assert_eq!(figures.len(), 3, "{line}");
        assert!(figures.iter().all(|f| *f > 0.0), "{line}");
    }
    assert!(stdout.contains("observatory record cost"), "{stdout}");
}

#[test]
fn bench_rejects_a_zero_count_in_one_line() {
    let out = sie(&["bench", "exits", "--count", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("sie: error:"), "{stderr}");
}
