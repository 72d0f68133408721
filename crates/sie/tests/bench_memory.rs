//! `sie bench memory` on the real /dev/kvm: sie and a peer (sie itself,
//! started Firecracker's way) idle side by side, and each row shows the
//! VMM's resident memory with the guest's RAM found and set apart.

mod common;

use common::sie;

#[test]
fn each_idle_vmm_gets_a_row_of_figures_and_a_ratio() {
    let peer = env!("CARGO_BIN_EXE_sie");
    let run = sie(&[
        "bench",
        "memory",
        "--runs",
        "1",
        "--settle-ms",
        "200",
        "--memory-mib",
        "64",
        "--peer",
        peer,
    ]);
    run.expect_code(0);
    let out = &run.stdout;
    for label in ["sie ", "peer (sie) "] {
        let line = out
            .lines()
            // Rows are indented; the title line starts with "sie bench".
            .find(|line| line.starts_with(&format!("  {label}")))
            .unwrap_or_else(|| panic!("no {label:?} row in:\n{out}"));
        let cells: Vec<f64> = line.trim_start()[label.len()..]
            .split_whitespace()
            .map(|cell| {
                cell.parse()
                    .unwrap_or_else(|_| panic!("{cell:?} in {line:?}"))
            })
            .collect();
        // RSS, anonymous, binary, libraries, heap, stacks, other, guest RAM.
        assert_eq!(cells.len(), 8, "{line}");
        assert!(cells[0] > 0.0 && cells[2] > 0.0, "RSS and binary: {line}");
        assert!(cells[7] > 0.0, "the guest's RAM was found: {line}");
        assert!(cells[1] <= cells[0], "anonymous is part of RSS: {line}");
    }
    assert!(out.contains("sie/peer: RSS x"), "{out}");
}

#[test]
fn a_peer_that_does_not_serve_the_api_fails_the_bench() {
    let run = sie(&["bench", "memory", "--runs", "1", "--peer", "/bin/true"]);
    run.expect_one_line_error("peer (true)");
}
