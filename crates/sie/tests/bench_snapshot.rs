//! `sie bench snapshot` on the real /dev/kvm: it snapshots and restores the
//! counter guest, checks each restore went on counting, and prints numbers.

mod common;

use common::sie;

#[test]
fn the_snapshot_bench_checks_each_restore_and_prints_figures() {
    let exe = env!("CARGO_BIN_EXE_sie");
    let run = sie(&[
        "bench",
        "snapshot",
        "--runs",
        "1",
        "--sizes-mib",
        "64",
        "--peer",
        exe,
    ]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("checked: every restore went on counting"),
        "{}",
        run.stdout
    );
    for vmm in ["sie 64 ", "peer (sie) 64 "] {
        let row = run
            .stdout
            .lines()
            .find(|line| {
                line.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .starts_with(vmm)
            })
            .unwrap_or_else(|| panic!("no {vmm} row in {}", run.stdout));
        let numbers: Vec<f64> = row
            .split_whitespace()
            .filter_map(|cell| cell.parse().ok())
            .collect();
        // MiB, create, diff, load, start→running, memory file.
        assert_eq!(numbers.len(), 6, "{row}");
        assert!(numbers[1..5].iter().all(|&n| n > 0.0), "{row}");
    }
    assert!(run.stdout.contains("sie/peer at 64 MiB"), "{}", run.stdout);
    // sie's memory backends side by side: load ms, first count ms, and the
    // working set the first lazy restore recorded.
    for backend in ["File", "Lazy, recording", "Lazy, working set"] {
        let row = run
            .stdout
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{backend} ")))
            .unwrap_or_else(|| panic!("no {backend} row in {}", run.stdout));
        let numbers: Vec<f64> = row
            .split_whitespace()
            .filter_map(|cell| cell.parse().ok())
            .collect();
        if backend == "File" {
            assert_eq!(numbers.len(), 3, "{row}");
        } else {
            assert_eq!(numbers.len(), 4, "{row}");
            assert!(numbers[3] >= 1.0, "a recorded working set: {row}");
        }
        assert_eq!(numbers[0], 64.0, "{row}");
        assert!(numbers[1..3].iter().all(|&n| n > 0.0), "{row}");
    }
    // The lazy restore's first request against File's, as a ratio (a
    // figure, not a bound).
    let ratio = run
        .stdout
        .lines()
        .find_map(|line| {
            line.trim_start()
                .strip_prefix("first count at 64 MiB, Lazy with its working set / File: x")
        })
        .unwrap_or_else(|| panic!("no first-request ratio in {}", run.stdout));
    let value: f64 = ratio
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a number: {ratio}"));
    assert!(value > 0.0, "{ratio}");
}

#[test]
fn a_peer_that_cannot_restore_fails_the_bench() {
    let run = sie(&[
        "bench",
        "snapshot",
        "--runs",
        "1",
        "--sizes-mib",
        "64",
        "--peer",
        "/bin/true",
    ]);
    run.expect_one_line_error("peer (true)");
}
