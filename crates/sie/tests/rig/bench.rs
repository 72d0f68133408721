//! Benchmark cases: each checks that the work it timed was really done.

use super::*;

/// The output holds every one of `rows`.
pub(crate) fn has_rows(run: &CaseRun, rows: &[&str]) -> Result<(), String> {
    run.expect_status(0)?;
    match rows.iter().find(|row| !run.output.contains(**row)) {
        Some(row) => Err(format!("no {row:?} row in the benchmark's output")),
        None => Ok(()),
    }
}

/// `sie bench blk`: the guest runs `sietool blk-bench` on /dev/vda, with
/// the disk on each engine (`--io sync` over both transports, virtio-MMIO
/// and virtio-PCI side by side; then `--io async` over MMIO), counting the
/// virtio interrupts around it.
pub(crate) fn bench_blk() -> Case {
    Case {
        name: "bench_blk",
        l1_command: format!(
            "for run in 'sync both' 'async mmio'; do set -- $run; echo \"engine $1\"; \
             sie bench blk --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" \
             --size-mib 32 --ops 500 --runs 2 --io $1 --transport $2 --cmdline \"{}\" || exit 1; done",
            sie_e2e::l2_boot_args("bench_blk")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk; do insmod /modules/$m.ko; done
arg() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
irqs() { grep virtio /proc/interrupts | awk '{n += $2} END {print n + 0}'; }
before=$(irqs)
sietool blk-bench /dev/vda "$(arg bench_size_mib)" "$(arg bench_ops)"
echo "@@BENCH virtio_irqs=$(( $(irqs) - before ))""#,
        ),
        check: |run| {
            let rows = [
                "seq read MiB/s",
                "seq write MiB/s",
                "rand read IOPS",
                "rand write IOPS",
            ];
            has_rows(run, &rows)?;
            // The guest read the whole 32 MiB disk, holding the bench's
            // pattern, in each of the 2 runs: over MMIO on each engine, over
            // PCI on the sync one.
            let want = format!(
                "guest seq read {} bytes, checksum {}: equal to the disk's",
                32u64 << 20,
                blk_pattern_sum(32)
            );
            for (transport, times) in [("mmio", 2), ("pci", 1)] {
                for index in 1..=2 {
                    let line = format!("{transport} run {index}: {want}");
                    if run.output.matches(&line).count() != times {
                        return Err(format!(
                            "{line:?} is not in the benchmark's output {times} time(s)"
                        ));
                    }
                }
            }
            // Both transports interrupted the guest and took register exits
            // (the first table: sync engine, mmio then pci).
            for row in ["interrupts/op", "device exits/op"] {
                let line = run
                    .output
                    .lines()
                    .find(|l| l.trim_start().starts_with(row))
                    .ok_or(format!("no {row:?} row"))?;
                let values: Vec<f64> = line
                    .split_whitespace()
                    .filter_map(|w| w.parse().ok())
                    .collect();
                if values.len() != 2 || values.iter().any(|v| *v <= 0.0) {
                    return Err(format!("{row}: want two positive figures, got {line:?}"));
                }
            }
            Ok(())
        },
    }
}

/// The checksum `sie bench blk`'s disk pattern has, computed here on its
/// own: word `o / 8` of the disk is `o * 0x9e3779b97f4a7c15`, summed by
/// FNV-1a over 64-bit words, top 48 bits (`sietool blk-bench`'s read_sum).
pub(crate) fn blk_pattern_sum(mib: u64) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for offset in (0..mib << 20).step_by(8) {
        hash = (hash ^ offset.wrapping_mul(0x9e3779b97f4a7c15)).wrapping_mul(0x100000001b3);
    }
    hash >> 16
}

/// `sie bench net`: the guest runs `sietool net-bench` against the host,
/// over virtio-MMIO and virtio-PCI side by side, counting the virtio
/// interrupts around it.
pub(crate) fn bench_net() -> Case {
    Case {
        name: "bench_net",
        l1_command: format!(
            "sie bench net --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" --tap tap0 \
             --mib 32 --runs 1 --transport both --cmdline \"{}\"",
            sie_e2e::l2_boot_args("bench_net")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do insmod /modules/$m.ko; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
irqs() { grep virtio /proc/interrupts | awk '{n += $2} END {print n + 0}'; }
before=$(irqs)
sietool net-bench 172.16.0.1 5001 5002 "$(sed -n 's/.*bench_mib=\([0-9]*\).*/\1/p' /proc/cmdline)"
echo "@@BENCH virtio_irqs=$(( $(irqs) - before ))""#,
        ),
        check: |run| {
            has_rows(run, &["guest->host", "host->guest"])?;
            // Every byte sent each way arrived, counted at both ends, over
            // each transport (one run each: two boots fit the case's time).
            let bytes = 32u64 << 20;
            for transport in ["mmio", "pci"] {
                for index in 1..=1 {
                    let line = format!(
                        "{transport} run {index}: guest->host sent {bytes} received {bytes}; \
                         host->guest sent {bytes} received {bytes} bytes"
                    );
                    if !run.output.contains(&line) {
                        return Err(format!("no {line:?} in the benchmark's output"));
                    }
                }
                let figures = run
                    .output
                    .lines()
                    .find(|l| {
                        l.trim_start()
                            .starts_with(&format!("{transport} interrupts/packet"))
                    })
                    .ok_or(format!("no {transport} interrupts/packet line"))?;
                let interrupts: f64 = figures
                    .split_whitespace()
                    .nth(2)
                    .and_then(|v| v.trim_end_matches(',').parse().ok())
                    .ok_or(format!("no interrupt figure in {figures:?}"))?;
                if interrupts <= 0.0 {
                    return Err(format!(
                        "{transport}: no virtio interrupt counted: {figures:?}"
                    ));
                }
            }
            Ok(())
        },
    }
}
