//! `sie bench lifecycle` on the real /dev/kvm: every lifecycle it times is
//! checked by the bench itself (it fails otherwise), and its table carries a
//! number in every cell. sie stands in for the peer VMM: it takes
//! Firecracker's `--no-api --config-file` too.

mod common;

use common::sie;

/// The numbers in the table row starting with `label`.
fn row(stdout: &str, label: &str) -> Vec<f64> {
    let line = stdout
        .lines()
        .find(|line| line.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} row in:\n{stdout}"));
    line.trim_start()[label.len()..]
        .split_whitespace()
        .map(|cell| {
            cell.trim_start_matches('x')
                .parse()
                .unwrap_or_else(|_| panic!("{cell:?} in {line:?} is not a number"))
        })
        .collect()
}

#[test]
fn three_lifecycles_of_each_kind_are_checked_and_timed() {
    let peer = env!("CARGO_BIN_EXE_sie");
    let run = sie(&[
        "bench",
        "lifecycle",
        "--runs",
        "3",
        "--peer",
        peer,
        "--parallel",
        "2",
    ]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(
        out.contains("checked: all 4 lifecycles of each exited 0"),
        "{out}"
    );
    for label in ["bare KVM loop", "sie run", "peer (sie)"] {
        let cells = row(out, label);
        // wall, cpu, four ratios; then the throughput row: three rates and
        // the rate over bare's and over the peer's.
        assert_eq!(cells.len(), 6, "{label}: {cells:?}");
        assert!(cells.iter().all(|v| *v > 0.0), "{label}: {cells:?}");
        let rates: Vec<f64> = out
            .lines()
            .filter(|l| l.trim_start().starts_with(label))
            .nth(1)
            .map(|l| row(l, label))
            .unwrap_or_else(|| panic!("no throughput row for {label}:\n{out}"));
        assert_eq!(rates.len(), 5, "{label}: {rates:?}");
        assert!(rates.iter().all(|v| *v > 0.0), "{label}: {rates:?}");
        if label == "bare KVM loop" {
            assert_eq!(rates[3], 1.0, "{rates:?}");
        }
        if label == "peer (sie)" {
            assert_eq!(rates[4], 1.0, "{rates:?}");
        }
    }
    let teardown = out
        .lines()
        .find(|l| l.trim_start().starts_with("bare VM teardown"))
        .unwrap_or_else(|| panic!("no teardown row:\n{out}"));
    let ms: f64 = teardown.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(ms > 0.0, "{teardown}");
    // Each variant is its own baseline.
    assert_eq!(row(out, "bare KVM loop")[2], 1.0);
    assert_eq!(row(out, "peer (sie)")[4], 1.0);
}

#[test]
fn a_peer_that_fails_fails_the_bench() {
    let run = sie(&["bench", "lifecycle", "--runs", "1", "--peer", "/bin/true"]);
    run.expect_code(1);
    assert!(run.stderr.contains("no guest line"), "{}", run.stderr);
}
