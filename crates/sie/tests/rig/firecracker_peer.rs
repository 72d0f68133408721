//! Boot and disk next to Firecracker: `sie bench boot` with a Firecracker
//! boot of the same kernel as its compare command, and `sie bench blk
//! --peer`, in one L1 (issue #15's side-by-side figures).
//!
//! A benchmark for people, not CI: CI does not build Firecracker. The case
//! exists only when `SIE_RIG_FIRECRACKER` names a `firecracker` binary
//! (build-images puts it in L1's /bin).

use super::*;

/// The variable naming the Firecracker binary.
const PEER: &str = "SIE_RIG_FIRECRACKER";

/// The cases comparing sie with Firecracker: none unless [`PEER`] is set.
pub(crate) fn firecracker_cases() -> Vec<Case> {
    match std::env::var_os(PEER) {
        Some(path) if !path.is_empty() => vec![bench_firecracker_peer()],
        _ => Vec::new(),
    }
}

/// L1's limit for this case (`# rig-limit`): 2 variants of 8 boots (one
/// untimed), then 2 runs of 4 disk boots.
const LIMIT_S: u32 = 900;

fn bench_firecracker_peer() -> Case {
    // The guest of `bench_boot` (its L2 script writes a boot marker and
    // /init resets), 2 vCPUs and 256 MiB as in issue #15's figure.
    let boot_args = sie_e2e::l2_boot_args("bench_boot");
    let blk_args = sie_e2e::l2_boot_args("bench_blk");
    Case {
        name: "bench_firecracker_peer",
        l1_command: format!(
            "# rig-limit {LIMIT_S}\n\
             cat > /tmp/fc-boot.json <<EOF\n\
             {{\"boot-source\": {{\"kernel_image_path\": \"$GUEST/vmlinux\", \"initrd_path\": \"$GUEST/l2.cpio\", \"boot_args\": \"{boot_args}\"}}, \
             \"drives\": [], \"machine-config\": {{\"vcpu_count\": 2, \"mem_size_mib\": 256}}}}\n\
             EOF\n\
             sie bench boot --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" \
             --runs 7 --vcpus 2 --memory 256 --cmdline \"{boot_args}\" \
             --compare 'firecracker --no-api --config-file /tmp/fc-boot.json --log-path /dev/null' || exit 1\n\
             sie bench blk --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" --size-mib 32 --ops 500 \
             --runs 2 --io sync --transport both --peer /bin/firecracker --cmdline \"{blk_args}\""
        ),
        l2_script: None,
        check: check_firecracker_peer,
    }
}

/// Every boot of both VMMs exited 0, and every disk run of both read the
/// disk's pattern back whole.
fn check_firecracker_peer(run: &CaseRun) -> Result<(), String> {
    run.expect_status(0)?;
    let row = run
        .output
        .lines()
        .find(|l| l.trim_start().starts_with("compare command") && l.contains(" exit "))
        .ok_or("no Firecracker row in the boot table")?;
    if !row.trim_end().ends_with("7/7 exited 0") {
        return Err(format!("not every Firecracker boot exited 0: {row:?}"));
    }
    let want = format!(
        "guest seq read {} bytes, checksum {}: equal to the disk's",
        32u64 << 20,
        blk_pattern_sum(32)
    );
    for who in ["mmio", "pci", "firecracker mmio", "firecracker pci"] {
        for index in 1..=2 {
            let line = format!("  {who} run {index}: {want}");
            if !run.output.contains(&line) {
                return Err(format!("{line:?} is not in the benchmark's output"));
            }
        }
    }
    for transport in ["mmio", "pci"] {
        let prefix = format!("sie/peer {transport}: seq read MiB/s x");
        if !run
            .output
            .lines()
            .any(|l| l.trim_start().starts_with(&prefix))
        {
            return Err(format!("no {prefix:?} line"));
        }
    }
    Ok(())
}
