//! End-to-end cases: a stock Debian kernel booted by sie, in the nested rig
//! (or directly on a host with VT-x/AMD-V). L1 boots once for all cases;
//! each case is reported as its own test, with its console on failure.
//! Run one case: `cargo test -p sie --test rig -- boot_vmlinux`.
//!
//! This binary is also the direct runner inside L1 (`sie-rig` there): with
//! `SIE_RIG_DIRECT=1` it runs the named cases' scripts through
//! [`sie_e2e::run_direct`], as a host with VT-x/AMD-V does, and checks them.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use libtest_mimic::{Arguments, Failed, Trial};
use sie_e2e::{Case, CaseRun, Layout, Rig, RigRun, run_cases};

fn status_0_and(run: &CaseRun, key: &str, want: &str) -> Result<(), String> {
    run.expect_status(0)?;
    match run.result(key) {
        Some(value) if value == want => Ok(()),
        other => Err(format!("{key}: got {other:?}, want {want:?}")),
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case::sie_run(
            "boot_vmlinux",
            "vmlinux",
            "",
            Some("echo \"@@L2 RESULT init=ok\""),
            |run| status_0_and(run, "init", "ok"),
        ),
        Case::sie_run(
            "boot_bzimage",
            "bzImage",
            "--log-level info",
            Some("echo \"@@L2 RESULT init=ok\""),
            |run| {
                status_0_and(run, "init", "ok")?;
                if run.output.contains("xz payload decompressed on the host") {
                    Ok(())
                } else {
                    Err("sie did not boot the bzImage through host-side decompression".to_string())
                }
            },
        ),
        Case::sie_run(
            "boot_bzimage_classic",
            "bzImage",
            "--no-host-decompress",
            Some("echo \"@@L2 RESULT init=ok\""),
            |run| status_0_and(run, "init", "ok"),
        ),
        Case {
            name: "bench_boot",
            l1_command: format!(
                "sie bench boot --kernel \"$GUEST/bzImage\" --vmlinux \"$GUEST/vmlinux\" \
                 --initrd \"$GUEST/l2.cpio\" --runs 3 --cmdline \"{}\"",
                sie_e2e::l2_boot_args("bench_boot")
            ),
            l2_script: Some("printf '\\101' | dd of=/dev/port bs=1 seek=128 count=1 2>/dev/null"),
            check: |run| {
                run.expect_status(0)?;
                // Every boot of every variant exited 0 and reached the
                // guest's marker: three rows of each, one per variant.
                for variant in ["vmlinux", "bzImage, host decompression", "bzImage, classic"] {
                    let row = run
                        .output
                        .lines()
                        .find(|l| l.trim_start().starts_with(variant) && l.contains(" exit "))
                        .ok_or(format!("no {variant:?} row in the benchmark's output"))?;
                    if !row.trim_end().ends_with("3/3 exited 0") {
                        return Err(format!("not every boot exited 0: {row:?}"));
                    }
                }
                let reached = run
                    .output
                    .lines()
                    .filter(|l| {
                        l.contains("port 0x80 0x41") && l.trim_end().ends_with("in 3/3 runs")
                    })
                    .count();
                if reached != 3 {
                    return Err(format!(
                        "{reached} of 3 variants reached marker 0x41 in all 3 runs"
                    ));
                }
                Ok(())
            },
        },
        Case::sie_run(
            "smp_2",
            "vmlinux",
            "--vcpus 2",
            Some("echo \"@@L2 RESULT cpus=$(grep -c ^processor /proc/cpuinfo)\""),
            |run| status_0_and(run, "cpus", "2"),
        ),
        Case::sie_run(
            "memory_256",
            "vmlinux",
            "--memory 256",
            Some("echo \"@@L2 RESULT memtotal_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)\""),
            |run| {
                run.expect_status(0)?;
                let kib: u64 = run
                    .result("memtotal_kib")
                    .and_then(|v| v.parse().ok())
                    .ok_or("no MemTotal reported")?;
                if (200 * 1024..=256 * 1024).contains(&kib) {
                    Ok(())
                } else {
                    Err(format!(
                        "MemTotal {kib} KiB is not within the kernel's reservations of 256 MiB"
                    ))
                }
            },
        ),
        Case::sie_run_with_args(
            "cmdline_token",
            "vmlinux",
            "",
            &format!(
                "{} sie_token=abc123",
                sie_e2e::l2_boot_args("cmdline_token")
            ),
            Some("grep -q sie_token=abc123 /proc/cmdline && echo \"@@L2 RESULT token=found\""),
            |run| status_0_and(run, "token", "found"),
        ),
        Case::sie_run(
            "initrd_files",
            "vmlinux",
            "",
            Some("echo \"@@L2 RESULT marker=$(cat /etc/sie-rig-marker)\""),
            |run| status_0_and(run, "marker", "sie rig initrd file"),
        ),
        Case::sie_run(
            "rtc_clock",
            "vmlinux",
            "",
            Some("echo \"@@L2 RESULT epoch=$(date +%s)\""),
            |run| {
                run.expect_status(0)?;
                let guest: u64 = run
                    .result("epoch")
                    .and_then(|v| v.parse().ok())
                    .ok_or("no guest time")?;
                let host = run.started_at.ok_or("no L1 time")?;
                if guest.abs_diff(host) <= 60 {
                    Ok(())
                } else {
                    Err(format!(
                        "guest clock {guest} vs host {host}: more than a minute apart"
                    ))
                }
            },
        ),
        Case::sie_run(
            "reboot_exit0",
            "vmlinux",
            "",
            Some("echo \"@@L2 RESULT rebooting=yes\"; reboot -f"),
            |run| status_0_and(run, "rebooting", "yes"),
        ),
        Case::sie_run(
            "panic_exit",
            "vmlinux",
            "",
            Some(
                "insmod /modules/pvpanic.ko; insmod /modules/pvpanic-mmio.ko; \
                 echo 1 > /proc/sys/kernel/sysrq; echo \"@@L2 RESULT panicking=yes\"; \
                 echo c > /proc/sysrq-trigger",
            ),
            |run| {
                run.expect_status(4)?;
                if run.output.contains("panicked") {
                    Ok(())
                } else {
                    Err("sie did not say the guest panicked".to_string())
                }
            },
        ),
        Case::sie_run(
            "boot_markers",
            "vmlinux",
            "--stats",
            Some(
                "printf '\\101' | dd of=/dev/port bs=1 seek=128 count=1 2>/dev/null; \
                 devmem 0xc0000000 8 123; echo \"@@L2 RESULT markers=written\"",
            ),
            |run| {
                status_0_and(run, "markers", "written")?;
                if !run
                    .output
                    .lines()
                    .any(|l| l.contains("port 0x80") && l.trim_end().ends_with("0x41"))
                {
                    return Err("no port 0x80 marker 0x41 in --stats".to_string());
                }
                if !run.output.contains("boot timer 0x7b") {
                    return Err("no boot-timer marker in --stats".to_string());
                }
                Ok(())
            },
        ),
        virtio_blk(),
        Case::sie_run(
            "virtio_rng",
            "vmlinux",
            "--rng",
            Some(
                "for m in virtio_ring virtio virtio_mmio virtio-rng; do insmod /modules/$m.ko; done
echo \"@@L2 RESULT rng_current=$(cat /sys/class/misc/hw_random/rng_current)\"
echo \"@@L2 RESULT hwrng_bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)\"",
            ),
            |run| {
                status_0_and(run, "hwrng_bytes", "64")?;
                match run.result("rng_current") {
                    Some(current) if current.starts_with("virtio_rng") => Ok(()),
                    other => Err(format!("rng_current is {other:?}, not virtio_rng")),
                }
            },
        ),
        api_ctrl_alt_del(),
        virtio_net(),
        virtio_vsock(),
        bench_blk(),
        bench_net(),
        direct_runner(),
        hang_reported(),
        snapshot_restore(),
        snapshot_clones(),
        virtio_blk_rate_limit(),
        virtio_net_rate_limit_patch(),
    ]
}

/// Two clones restored from one snapshot of a Debian guest: each gets a new
/// VM generation id and the event device's interrupt, so Linux reseeds its
/// RNG and the clones read different bytes from /dev/urandom.
fn snapshot_clones() -> Case {
    Case {
        name: "snapshot_clones",
        l1_command: format!(
            r#"cat > /tmp/clone-vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}
EOF
sie --api-sock /tmp/clone.sock --config-file /tmp/clone-vm.json > /tmp/clone-source 2>&1 &
pid=$!
i=0
until grep -q "tick=2 " /tmp/clone-source; do
  i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1
done
sie ctl --sock /tmp/clone.sock pause
sie ctl --sock /tmp/clone.sock snapshot create /tmp/clone.snap /tmp/clone.mem
kill $pid; wait $pid
echo "@@L2 RESULT source=$(grep -o 'tick=2 .*' /tmp/clone-source | head -1)"
status=0
for clone in a b; do
  sie run --restore /tmp/clone.snap --mem /tmp/clone.mem > /tmp/clone-$clone 2>&1 || status=$?
  echo "@@L2 RESULT clone_$clone=$(grep -o 'tick=3 .*' /tmp/clone-$clone | head -1)"
done
tail -3 /tmp/clone-b
rm -f /tmp/clone.snap /tmp/clone.mem
exit $status"#,
            sie_e2e::l2_boot_args("snapshot_clones")
        ),
        l2_script: Some(
            r#"n=0
while [ $n -lt 4 ]; do
  n=$((n+1))
  rand=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  ged=$(grep -i ged /proc/interrupts | tr -s ' ' | cut -d' ' -f3)
  echo "@@L2 RESULT tick=$n rand=$rand ged=${ged:-none} "
  sleep 1
done
echo "@@L2 RESULT finished=yes""#,
        ),
        check: |run| {
            status_0_and(run, "finished", "yes")?;
            let field = |line: &str, key: &str| -> Option<String> {
                line.split_whitespace()
                    .find_map(|word| word.strip_prefix(key))
                    .map(str::to_string)
            };
            let a = run.result("clone_a").unwrap_or_default();
            let b = run.result("clone_b").unwrap_or_default();
            let (Some(rand_a), Some(rand_b)) = (field(&a, "rand="), field(&b, "rand=")) else {
                return Err(format!("a clone printed no random bytes: {a:?} / {b:?}"));
            };
            if rand_a.len() != 32 || rand_a == rand_b {
                return Err(format!(
                    "the clones read the same random bytes: {rand_a} / {rand_b}"
                ));
            }
            // The event device's interrupt reached each clone (none before).
            let source = run.result("source").unwrap_or_default();
            let count = |line: &str| field(line, "ged=").and_then(|g| g.parse::<u64>().ok());
            match (count(&source), count(&a), count(&b)) {
                (Some(0), Some(x), Some(y)) if x >= 1 && y >= 1 => Ok(()),
                other => Err(format!("GED interrupt counts (source, a, b): {other:?}")),
            }
        },
    }
}

/// A Debian guest that counts seconds and keeps a file in its RAM-backed
/// root is paused, snapshotted through `sie ctl`, stopped, and restored by
/// `sie run --restore` in a new process: it goes on counting from where it
/// was, still has its file, and finishes its script (exit 0).
fn snapshot_restore() -> Case {
    Case {
        name: "snapshot_restore",
        l1_command: format!(
            r#"cat > /tmp/snap-vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}
EOF
sie --api-sock /tmp/snap.sock --config-file /tmp/snap-vm.json > /tmp/snap-console 2>&1 &
pid=$!
i=0
until grep -q "tick=3 " /tmp/snap-console; do
  i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1
done
sie ctl --sock /tmp/snap.sock pause
sie ctl --sock /tmp/snap.sock snapshot create /tmp/vm.snap /tmp/vm.mem
kill $pid; wait $pid
last=$(grep -o 'tick=[0-9]*' /tmp/snap-console | tail -1)
grep 'tick=' /tmp/snap-console
echo "@@L2 RESULT source_last=$last"
echo "@@L2 RESULT mem_file_kib=$(du -k /tmp/vm.mem | cut -f1)"
sie run --restore /tmp/vm.snap --mem /tmp/vm.mem > /tmp/snap-restored 2>&1
status=$?
echo "@@L2 RESULT restored_first=$(grep -o 'tick=[0-9]*' /tmp/snap-restored | head -1)"
cat /tmp/snap-restored
rm -f /tmp/vm.snap /tmp/vm.mem
exit $status"#,
            sie_e2e::l2_boot_args("snapshot_restore")
        ),
        l2_script: Some(
            r#"echo "kept-$(cat /proc/sys/kernel/random/uuid)" > /kept
n=0
while [ $n -lt 10 ]; do n=$((n+1)); echo "@@L2 RESULT tick=$n kept=$(cat /kept) "; sleep 1; done
echo "@@L2 RESULT finished=yes""#,
        ),
        check: |run| {
            status_0_and(run, "finished", "yes")?;
            let source = run.result("source_last").unwrap_or_default();
            let first = run.result("restored_first").unwrap_or_default();
            let number = |tick: &str| -> Option<u32> { tick.strip_prefix("tick=")?.parse().ok() };
            match (number(&source), number(&first)) {
                (Some(before), Some(after)) if after == before + 1 => {}
                _ => {
                    return Err(format!(
                        "the restored guest did not go on counting: last before {source:?}, first after {first:?}"
                    ));
                }
            }
            // The file the guest wrote before the snapshot is still there.
            let kept: Vec<&str> = run
                .output
                .lines()
                .filter_map(|line| line.split("kept=").nth(1))
                .map(str::trim)
                .collect();
            if kept.len() < 10
                || kept.iter().any(|k| *k != kept[0])
                || !kept[0].starts_with("kept-")
            {
                return Err(format!(
                    "the guest's file changed across the restore: {kept:?}"
                ));
            }
            // Only what the guest touched is written (128 MiB of RAM).
            let kib: u64 = run
                .result("mem_file_kib")
                .and_then(|k| k.parse().ok())
                .unwrap_or(u64::MAX);
            if kib >= 128 * 1024 {
                return Err(format!("the memory file is not sparse: {kib} KiB on disk"));
            }
            Ok(())
        },
    }
}

/// A guest that never ends: the deadline on each `sie` stops it, and the
/// case fails as a hang quoting the guest's last words (this check inverts
/// that: it passes when the failure is reported that way).
fn hang_reported() -> Case {
    Case {
        name: "hang_reported",
        l1_command: format!(
            "SIE_RUN_TIMEOUT=30 sie run --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" \
             --cmdline \"{}\"",
            sie_e2e::l2_boot_args("hang_reported")
        ),
        l2_script: Some("echo \"@@L2 RESULT last_words=going to sleep\"; sleep 600"),
        check: |run| {
            let Err(error) = run.expect_status(0) else {
                return Err("sie exited 0 for a guest that never ends".to_string());
            };
            if !error.starts_with("hang: @@HANG sie run still running after 30 s") {
                return Err(format!("not reported as a hang: {error}"));
            }
            if !error.contains("last_words=going to sleep") {
                return Err(format!("the guest's last words are not quoted: {error}"));
            }
            Ok(())
        },
    }
}

/// The case `direct_runner` runs through the direct runner.
const DIRECT_INNER: &str = "boot_vmlinux";

/// The direct runner, tested inside L1 (emulated AMD-V): `sie-rig` (this
/// binary) runs another case's script the way a VT-x/AMD-V host runs every
/// case, without QEMU, and applies that case's own check.
fn direct_runner() -> Case {
    Case {
        name: "direct_runner",
        l1_command: format!("SIE_RIG_DIRECT=1 sie-rig {DIRECT_INNER}"),
        l2_script: None,
        check: |run| {
            status_0_and(run, "hardware_virtualization", "yes")?;
            status_0_and(run, &format!("direct_{DIRECT_INNER}"), "pass")
        },
    }
}

/// `SIE_RIG_DIRECT=1 sie-rig CASE...`: runs each case's script from the
/// layout it was started in, checks it, and prints `@@L2 RESULT
/// direct_CASE=pass` (or the failure) with the case's output quoted.
fn direct_main() -> ExitCode {
    let layout = Layout::from_env();
    let hw = sie_e2e::hardware_virtualization();
    println!(
        "@@L2 RESULT hardware_virtualization={}",
        if hw { "yes" } else { "no" }
    );
    let all = cases();
    let mut failed = !hw;
    for name in std::env::args().skip(1) {
        let Some(case) = all.iter().find(|c| c.name == name) else {
            println!("@@L2 RESULT direct_{name}=fail: no such case");
            failed = true;
            continue;
        };
        let result = sie_e2e::run_direct(&layout, case.name, sie_e2e::CASE_LIMIT);
        for line in result.output.lines() {
            // Quoted, so the inner case's result lines stay its own.
            println!("  | {line}");
        }
        match (case.check)(&result) {
            Ok(()) => println!("@@L2 RESULT direct_{name}=pass"),
            Err(error) => {
                println!(
                    "@@L2 RESULT direct_{name}=fail: {}",
                    error.lines().next().unwrap_or("")
                );
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The output holds every one of `rows`.
fn has_rows(run: &CaseRun, rows: &[&str]) -> Result<(), String> {
    run.expect_status(0)?;
    match rows.iter().find(|row| !run.output.contains(**row)) {
        Some(row) => Err(format!("no {row:?} row in the benchmark's output")),
        None => Ok(()),
    }
}

/// `sie bench blk`: the guest runs `sietool blk-bench` on /dev/vda.
fn bench_blk() -> Case {
    Case {
        name: "bench_blk",
        l1_command: format!(
            "sie bench blk --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" \
             --size-mib 32 --ops 500 --runs 2 --cmdline \"{}\"",
            sie_e2e::l2_boot_args("bench_blk")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko; done
arg() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" /proc/cmdline; }
sietool blk-bench /dev/vda "$(arg bench_size_mib)" "$(arg bench_ops)""#,
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
            // pattern, in each of the 2 runs.
            let want = format!(
                "guest seq read {} bytes, checksum {}: equal to the disk's",
                32u64 << 20,
                blk_pattern_sum(32)
            );
            for index in 1..=2 {
                let line = format!("run {index}: {want}");
                if !run.output.contains(&line) {
                    return Err(format!("no {line:?} in the benchmark's output"));
                }
            }
            Ok(())
        },
    }
}

/// The checksum `sie bench blk`'s disk pattern has, computed here on its
/// own: word `o / 8` of the disk is `o * 0x9e3779b97f4a7c15`, summed by
/// FNV-1a over 64-bit words, top 48 bits (`sietool blk-bench`'s read_sum).
fn blk_pattern_sum(mib: u64) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for offset in (0..mib << 20).step_by(8) {
        hash = (hash ^ offset.wrapping_mul(0x9e3779b97f4a7c15)).wrapping_mul(0x100000001b3);
    }
    hash >> 16
}

/// `sie bench net`: the guest runs `sietool net-bench` against the host.
fn bench_net() -> Case {
    Case {
        name: "bench_net",
        l1_command: format!(
            "sie bench net --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" --tap tap0 \
             --mib 32 --runs 2 --cmdline \"{}\"",
            sie_e2e::l2_boot_args("bench_net")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do insmod /modules/$m.ko; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
sietool net-bench 172.16.0.1 5001 5002 "$(sed -n 's/.*bench_mib=\([0-9]*\).*/\1/p' /proc/cmdline)""#,
        ),
        check: |run| {
            has_rows(run, &["guest->host", "host->guest"])?;
            // Every byte sent each way arrived, counted at both ends.
            let bytes = 32u64 << 20;
            for index in 1..=2 {
                let line = format!(
                    "run {index}: guest->host sent {bytes} received {bytes}; \
                     host->guest sent {bytes} received {bytes} bytes"
                );
                if !run.output.contains(&line) {
                    return Err(format!("no {line:?} in the benchmark's output"));
                }
            }
            Ok(())
        },
    }
}

/// A tap in L1, an address on each side: ping, then 10 MiB each way over
/// TCP with matching checksums.
fn virtio_net() -> Case {
    Case {
        name: "virtio_net",
        l1_command: format!(
            r#"dd if=/dev/urandom of=/tmp/to_guest.bin bs=1M count=10 2>/dev/null
echo "@@L2 RESULT host_sent_sha=$(sha256sum /tmp/to_guest.bin | cut -c1-64)"
sietool tcp-recv 5001 /tmp/from_guest.bin & recv=$!
sietool tcp-serve 5002 /tmp/to_guest.bin & serve=$!
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --memory 256 --cmdline "{}" \
  --net tap0,mac=06:00:ac:10:00:02 > /tmp/console 2>&1 & pid=$!
i=0
until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up
wait $pid; status=$?
cat /tmp/console
wait $recv
echo "@@L2 RESULT host_received_sha=$(sha256sum /tmp/from_guest.bin | cut -c1-64)"
kill $serve 2>/dev/null
exit $status"#,
            sie_e2e::l2_boot_args("virtio_net")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do insmod /modules/$m.ko; done
ip link set lo up
echo "@@L2 RESULT mac=$(cat /sys/class/net/eth0/address)"
ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 3 -w 20 172.16.0.1 >/dev/null && echo "@@L2 RESULT ping=ok"
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=10 2>/dev/null
echo "@@L2 RESULT guest_sent_sha=$(sha256sum /tmp/tx.bin | cut -c1-64)"
sietool tcp-send 172.16.0.1 5001 /tmp/tx.bin
sietool tcp-get 172.16.0.1 5002 /tmp/rx.bin
echo "@@L2 RESULT guest_received_sha=$(sha256sum /tmp/rx.bin | cut -c1-64)""#,
        ),
        check: |run| {
            status_0_and(run, "ping", "ok")?;
            status_0_and(run, "mac", "06:00:ac:10:00:02")?;
            for (sent, received) in [
                ("guest_sent_sha", "host_received_sha"),
                ("host_sent_sha", "guest_received_sha"),
            ] {
                let want = run.result(sent).ok_or(format!("no {sent}"))?;
                status_0_and(run, received, &want)?;
            }
            Ok(())
        },
    }
}

/// Firecracker's hybrid vsock: host→guest through `CONNECT <port>` on the
/// Unix socket, guest→host to `<uds_path>_<port>`; an echo each way.
fn virtio_vsock() -> Case {
    Case {
        name: "virtio_vsock",
        l1_command: format!(
            r#"sietool uds-echo /tmp/v.sock_5000 & echo_pid=$!
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{}" \
  --vsock 3,/tmp/v.sock > /tmp/console 2>&1 & pid=$!
i=0
until grep -q "listening" /tmp/console; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "@@L2 RESULT host_asked=$(sietool uds-ask /tmp/v.sock 1024 from-host | tr '\n' ' ')"
wait $pid; status=$?
cat /tmp/console
kill $echo_pid 2>/dev/null
exit $status"#,
            sie_e2e::l2_boot_args("virtio_vsock")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do insmod /modules/$m.ko; done
echo "@@L2 RESULT guest_asked=$(sietool vsock-ask 2 5000 from-guest)"
sietool vsock-echo 1024"#,
        ),
        check: |run| {
            status_0_and(run, "guest_asked", "from-guest")?;
            match run.result("host_asked") {
                Some(reply) if reply.starts_with("OK ") && reply.ends_with("from-host") => Ok(()),
                other => Err(format!("host→guest echo: got {other:?}")),
            }
        },
    }
}

/// An ext4 disk read, written and checked on both sides; a read-only disk
/// the guest cannot write.
fn virtio_blk() -> Case {
    Case {
        name: "virtio_blk",
        l1_command: format!(
            r#"cp "$GUEST/disk.ext4" /tmp/rw.ext4; cp "$GUEST/disk.ext4" /tmp/ro.ext4
before=$(sha256sum /tmp/ro.ext4 | cut -c1-64)
echo "@@L2 RESULT host_sha=$(cat "$GUEST/data.sha256")"
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{}" \
  --disk /tmp/rw.ext4,id=data --disk /tmp/ro.ext4,ro,id=readonly
status=$?
e2fsck -fn /tmp/rw.ext4 >/dev/null 2>&1; echo "@@L2 RESULT fsck=$?"
echo "@@L2 RESULT new_file=$(debugfs -R 'cat /new.txt' /tmp/rw.ext4 2>/dev/null)"
[ "$(sha256sum /tmp/ro.ext4 | cut -c1-64)" = "$before" ] && echo "@@L2 RESULT ro_image=unchanged"
exit $status"#,
            sie_e2e::l2_boot_args("virtio_blk")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk crc16 mbcache jbd2 crc32c_generic ext4; do insmod /modules/$m.ko; done
mkdir -p /mnt /ro
mount -t ext4 /dev/vda /mnt && echo "@@L2 RESULT guest_sha=$(sha256sum /mnt/data.bin | cut -c1-64)"
echo written-by-l2 > /mnt/new.txt && sync && umount /mnt && echo "@@L2 RESULT wrote=yes"
if dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; then echo "@@L2 RESULT ro_write=accepted"; else echo "@@L2 RESULT ro_write=refused"; fi
mount -t ext4 -o ro /dev/vdb /ro && echo "@@L2 RESULT ro_mount=ok""#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let host = run.result("host_sha").ok_or("no host checksum")?;
            for (key, want) in [
                ("guest_sha", host.as_str()),
                ("wrote", "yes"),
                ("fsck", "0"),
                ("new_file", "written-by-l2"),
                ("ro_write", "refused"),
                ("ro_mount", "ok"),
                ("ro_image", "unchanged"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            Ok(())
        },
    }
}

/// Firecracker-style: started with `--api-sock --config-file`, stopped with
/// `SendCtrlAltDel` once the guest is up; the guest's keyboard driver gets
/// the keys, the kernel restarts and sie exits 0.
fn api_ctrl_alt_del() -> Case {
    Case {
        name: "api_ctrl_alt_del",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}
EOF
sie --api-sock /tmp/api.sock --config-file /tmp/vm.json > /tmp/console 2>&1 &
pid=$!
i=0
until grep -q "waiting=yes" /tmp/console; do
  i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1
done
echo "@@L2 RESULT state=$(sie ctl --sock /tmp/api.sock info | sed -n 's/^state *//p')"
sie ctl --sock /tmp/api.sock ctrl-alt-del
wait $pid
status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("api_ctrl_alt_del")
        ),
        l2_script: Some(
            r#"echo "@@L2 RESULT waiting=yes"; sleep 60; echo "@@L2 RESULT cad=missed""#,
        ),
        check: |run| {
            status_0_and(run, "state", "Running")?;
            if !run.output.contains("Ctrl-Alt-Del sent") {
                return Err("sie ctl did not send Ctrl-Alt-Del".to_string());
            }
            // The guest must restart because of the keys, not because its
            // script ran out and /init rebooted.
            if run.result("cad").is_some() {
                return Err("the guest ignored Ctrl-Alt-Del".to_string());
            }
            Ok(())
        },
    }
}

/// Firecracker-style rate limiters on drives: 4 MiB read in 64 KiB
/// requests from a drive limited to 1 MiB/s (a 256 KiB bucket, full at
/// first, refilled every 250 ms) takes about 3.75 s, the same read from an
/// unlimited drive far less; 100 4 KiB reads from a drive limited to 20
/// operations/s (a bucket of 2) take about 4.9 s (unlimited: about 1 s in
/// the nested rig); and sie counts the throttling.
fn virtio_blk_rate_limit() -> Case {
    Case {
        name: "virtio_blk_rate_limit",
        l1_command: format!(
            r#"for d in fast slow iops; do dd if=/dev/urandom of=/tmp/$d.img bs=1M count=4 2>/dev/null; done
cat > /tmp/rl.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}},
 "drives": [
  {{"drive_id": "fast", "path_on_host": "/tmp/fast.img", "is_root_device": false}},
  {{"drive_id": "slow", "path_on_host": "/tmp/slow.img", "is_root_device": false,
    "rate_limiter": {{"bandwidth": {{"size": 262144, "refill_time": 250}}}}}},
  {{"drive_id": "iops", "path_on_host": "/tmp/iops.img", "is_root_device": false,
    "rate_limiter": {{"ops": {{"size": 2, "refill_time": 100}}}}}}]}}
EOF
sie --no-api --config-file /tmp/rl.json --metrics-path /tmp/rl-metrics.json
status=$?
throttled() {{ tail -1 /tmp/rl-metrics.json | grep -o "\"virtio-blk:$1\":{{[^}}]*}}" | grep -o '"throttled":[0-9]*' | tail -1 | cut -d: -f2; }}
echo "@@L2 RESULT slow_throttled=$(throttled slow)"
echo "@@L2 RESULT iops_throttled=$(throttled iops)"
echo "@@L2 RESULT fast_throttled=$(throttled fast)"
exit $status"#,
            sie_e2e::l2_boot_args("virtio_blk_rate_limit")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko; done
up() { cut -d' ' -f1 /proc/uptime; }
timed() { key=$1; shift; a=$(up); "$@" 2>/dev/null; b=$(up); echo "@@L2 RESULT $key=$(awk "BEGIN {print int(($b - $a) * 1000)}")"; }
timed fast_read_ms dd if=/dev/vda of=/dev/null bs=64k count=64 iflag=direct
timed slow_read_ms dd if=/dev/vdb of=/dev/null bs=64k count=64 iflag=direct
timed fast_ops_ms dd if=/dev/vda of=/dev/null bs=4096 count=100 iflag=direct
timed iops_ops_ms dd if=/dev/vdc of=/dev/null bs=4096 count=100 iflag=direct"#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let ms = |key: &str| -> Result<u64, String> {
                run.result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key}"))
            };
            let (fast, slow) = (ms("fast_read_ms")?, ms("slow_read_ms")?);
            if !(3000..=8000).contains(&slow) || fast * 2 > slow {
                return Err(format!(
                    "4 MiB at 1 MiB/s took {slow} ms (want 3000-8000), unlimited {fast} ms"
                ));
            }
            let (fast_ops, limited_ops) = (ms("fast_ops_ms")?, ms("iops_ops_ms")?);
            if !(3500..=12000).contains(&limited_ops) || fast_ops * 2 > limited_ops {
                return Err(format!(
                    "100 reads at 20 ops/s took {limited_ops} ms (want 3500-12000), \
                     unlimited {fast_ops} ms"
                ));
            }
            for key in ["slow_throttled", "iops_throttled"] {
                if ms(key)? == 0 {
                    return Err(format!("{key}: sie counted no throttling"));
                }
            }
            status_0_and(run, "fast_throttled", "0")
        },
    }
}

/// Network rate limits set at run time: 2 MiB each way over TCP without a
/// limit (about 1.3 s each in the nested rig), then `PATCH
/// /network-interfaces` limits both directions to 256 KiB/s (a 96 KiB
/// bucket refilled every 375 ms) and the same transfers take about 7.6 s
/// each, intact.
fn virtio_net_rate_limit_patch() -> Case {
    Case {
        name: "virtio_net_rate_limit_patch",
        l1_command: format!(
            r#"dd if=/dev/urandom of=/tmp/to_guest.bin bs=1M count=2 2>/dev/null
(sietool tcp-recv 5001 /tmp/from_guest1.bin; sietool tcp-recv 5001 /tmp/from_guest2.bin) & recv=$!
(sietool tcp-serve 5002 /tmp/to_guest.bin; sietool tcp-serve 5002 /tmp/to_guest.bin) & serve=$!
cat > /tmp/nrl.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}}]}}
EOF
sie --api-sock /tmp/nrl.sock --config-file /tmp/nrl.json --metrics-path /tmp/nrl-metrics.json \
  > /tmp/console 2>&1 & pid=$!
i=0
until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up
i=0
until grep -q "patch=now" /tmp/console; do i=$((i+1)); [ $i -gt 1800 ] && break; sleep 0.1; done
limit='{{"bandwidth": {{"size": 98304, "refill_time": 375}}}}'
sie ctl --sock /tmp/nrl.sock request PATCH /network-interfaces/eth0 \
  "{{\"iface_id\": \"eth0\", \"rx_rate_limiter\": $limit, \"tx_rate_limiter\": $limit}}" \
  && echo "@@L2 RESULT patched=yes"
wait $pid; status=$?
cat /tmp/console
wait $recv
echo "@@L2 RESULT host_received_sha=$(sha256sum /tmp/from_guest2.bin | cut -c1-64)"
echo "@@L2 RESULT net_throttled=$(tail -1 /tmp/nrl-metrics.json | grep -o '"virtio-net:eth0":{{[^}}]*}}' | grep -o '"throttled":[0-9]*' | tail -1 | cut -d: -f2)"
kill $serve 2>/dev/null
exit $status"#,
            sie_e2e::l2_boot_args("virtio_net_rate_limit_patch")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do insmod /modules/$m.ko; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 3 -w 20 172.16.0.1 >/dev/null && echo "@@L2 RESULT ping=ok"
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=2 2>/dev/null
echo "@@L2 RESULT guest_sent_sha=$(sha256sum /tmp/tx.bin | cut -c1-64)"
up() { cut -d' ' -f1 /proc/uptime; }
timed() { key=$1; shift; a=$(up); "$@"; b=$(up); echo "@@L2 RESULT $key=$(awk "BEGIN {print int(($b - $a) * 1000)}")"; }
timed tx_fast_ms sietool tcp-send 172.16.0.1 5001 /tmp/tx.bin
timed rx_fast_ms sietool tcp-get 172.16.0.1 5002 /tmp/rx1.bin
echo "@@L2 RESULT patch=now"; sleep 3
timed tx_slow_ms sietool tcp-send 172.16.0.1 5001 /tmp/tx.bin
timed rx_slow_ms sietool tcp-get 172.16.0.1 5002 /tmp/rx2.bin
echo "@@L2 RESULT rx_bytes=$(wc -c < /tmp/rx2.bin)""#,
        ),
        check: |run| {
            status_0_and(run, "ping", "ok")?;
            status_0_and(run, "patched", "yes")?;
            status_0_and(run, "rx_bytes", "2097152")?;
            let sent = run.result("guest_sent_sha").ok_or("no guest_sent_sha")?;
            status_0_and(run, "host_received_sha", &sent)?;
            let ms = |key: &str| -> Result<u64, String> {
                run.result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key}"))
            };
            for side in ["tx", "rx"] {
                let fast = ms(&format!("{side}_fast_ms"))?;
                let slow = ms(&format!("{side}_slow_ms"))?;
                if !(6000..=25000).contains(&slow) || fast * 2 > slow {
                    return Err(format!(
                        "{side}: 2 MiB at 256 KiB/s took {slow} ms (want 6000-25000), \
                         unlimited {fast} ms"
                    ));
                }
            }
            if ms("net_throttled")? == 0 {
                return Err("sie counted no throttling".to_string());
            }
            Ok(())
        },
    }
}

fn rig_run(all: &[&Case], selected: &[&Case]) -> &'static RigRun {
    static RUN: OnceLock<RigRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
        let sie = PathBuf::from(env!("CARGO_BIN_EXE_sie"));
        let runner = std::env::current_exe().ok();
        let rig = Rig {
            repo: &repo,
            sie: &sie,
            runner: runner.as_deref(),
            limit: Duration::from_secs(25 * 60),
        };
        run_cases(&rig, all, selected)
    })
}

fn failure(run: &RigRun, detail: String, console: &str) -> Failed {
    let mut message = detail;
    if let Some(error) = &run.error {
        message.push_str(&format!("\nrig: {error}"));
    }
    message.push_str("\n--- console ---\n");
    message.push_str(console);
    Failed::from(message)
}

fn main() -> ExitCode {
    if std::env::var_os("SIE_RIG_DIRECT").is_some() {
        return direct_main();
    }
    let args = Arguments::from_args();
    let wanted = |name: &str| match &args.filter {
        Some(filter) if args.exact => name == filter,
        Some(filter) => name.contains(filter.as_str()),
        None => true,
    };
    // Only the selected cases run in L1, so one case can be iterated on
    // alone; every case's scripts are installed (a case may run another).
    // The cases live for the whole test run: the trials borrow them.
    let all: &'static [Case] = Vec::leak(cases());
    let all_refs: &'static [&'static Case] = Vec::leak(all.iter().collect());
    let selected: &'static [&'static Case] = Vec::leak(
        all_refs
            .iter()
            .copied()
            .filter(|c| wanted(c.name))
            .collect(),
    );
    let mut trials = vec![Trial::test("l1_kvm_ready", move || {
        let run = rig_run(all_refs, selected);
        if run.ready && (run.npt == "Y" || run.npt == "host") {
            Ok(())
        } else {
            Err(failure(
                run,
                format!("L1 not ready (npt={:?})", run.npt),
                &run.log,
            ))
        }
    })];
    for case in selected {
        trials.push(Trial::test(case.name, move || {
            let run = rig_run(all_refs, selected);
            match run.cases.get(case.name) {
                Some(result) => {
                    (case.check)(result).map_err(|detail| failure(run, detail, &result.output))
                }
                None => Err(failure(run, "the case did not run".to_string(), &run.log)),
            }
        }));
    }
    if libtest_mimic::run(&args, trials).has_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
