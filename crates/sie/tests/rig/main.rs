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
use sie_e2e::{Case, CaseRun, Layout, Rig, RigRun, case_times, run_cases};

mod bench;
mod console;
mod control;
mod cpu;
mod faults;
mod firecracker_peer;
mod inspect;
mod memdev;
mod memory;
mod migration;
mod migration_peer;
mod pci;
mod snapshot;
mod stability;
mod vfio;
mod virtio;

use bench::*;
use console::*;
use control::*;
use cpu::*;
use faults::*;
use firecracker_peer::*;
use inspect::*;
use memdev::*;
use memory::*;
use migration::*;
use migration_peer::*;
use pci::*;
use snapshot::*;
use stability::*;
use vfio::*;
use virtio::*;

fn status_0_and(run: &CaseRun, key: &str, want: &str) -> Result<(), String> {
    run.expect_status(0)?;
    match run.result(key) {
        Some(value) if value == want => Ok(()),
        other => Err(format!("{key}: got {other:?}, want {want:?}")),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
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
        blk_dd_ten_boots(),
        virtio_pmem(),
        virtio_mem(),
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
        pci_bus(),
        virtio_pci(),
        pci_hotplug(),
        virtio_vsock(),
        bench_blk(),
        bench_net(),
        direct_runner(),
        hang_reported(),
        snapshot_restore(),
        snapshot_clones(),
        snapshot_lazy(),
        snapshot_overrides(),
        virtio_blk_rate_limit(),
        virtio_net_rate_limit_patch(),
        host_faults(),
        mmds(),
        console_attach_later(),
        console_virtio(),
        panic_core(),
        gdb_kernel(),
        gdb_attach_running(),
        gdb_breakpoints(),
        cpu_template_custom(),
        nested_svm(),
        cpu_template_static(),
        vfio_edu(),
        vfio_msi(),
        vfio_msix(),
        vfio_dma_fault(),
        vfio_refused(),
        vfio_no_snapshot(),
        balloon(),
        balloon_deflate_on_oom(),
        balloon_hinting(),
        balloon_snapshot(),
        migration_live(),
        migration_live_local(),
    ];
    // Only with SIE_RIG_CLOUD_HYPERVISOR or SIE_RIG_FIRECRACKER: CI builds
    // neither peer.
    cases.extend(peer_cases());
    cases.extend(firecracker_cases());
    cases
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
            limit: Duration::from_secs(60 * 60),
        };
        let run = run_cases(&rig, all, selected);
        eprint!("{}", case_times(&run));
        run
    })
}

fn failure(run: &RigRun, detail: String, console: &str) -> Failed {
    let mut message = detail;
    if let Some(error) = &run.error {
        message.push_str(&format!("\nrig: {error}"));
    }
    for death in &run.l1_deaths {
        message.push_str(&format!("\nrig: {death}"));
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
