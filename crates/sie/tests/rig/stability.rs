//! The workload under which L1's kernel died in 3 of 5 rig runs before
//! (issue #15): sie running a Debian L2 with 2 vCPUs that reads a 128 MiB
//! virtio-blk disk with `dd`. It runs ten times here, each in a fresh sie,
//! so an L1 death, a hang or an early L2 crash (status 3 before /init) in
//! any of them fails the case with that boot's output. Each boot takes
//! about 30 s in the nested rig on a quiet host and over 90 s on a busy
//! one, so each sie gets 240 s and the case asks L1 for 1200 s.

use super::*;

/// How many times the workload runs.
const BOOTS: usize = 10;

/// The disk's size: 128 MiB.
const DISK_BYTES: u64 = 128 << 20;

pub(crate) fn blk_dd_ten_boots() -> Case {
    Case {
        name: "blk_dd_ten_boots",
        l1_command: format!(
            r#"# rig-limit 1200
dd if=/dev/zero of=/tmp/dd.img bs=1M count={mib} 2>/dev/null
for boot in $(seq {BOOTS}); do
  SIE_RUN_TIMEOUT=240 sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args}" \
    --vcpus 2 --memory 256 --disk /tmp/dd.img,ro
  echo "@@DD boot $boot status $?"
done
rm -f /tmp/dd.img"#,
            mib = DISK_BYTES >> 20,
            args = sie_e2e::l2_boot_args("blk_dd_ten_boots"),
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko; done
echo "@@L2 RESULT cpus=$(nproc)"
echo "@@L2 RESULT dd_bytes=$(dd if=/dev/vda bs=1M 2>/dev/null | wc -c)""#,
        ),
        check: check_ten_boots,
    }
}

fn check_ten_boots(run: &CaseRun) -> Result<(), String> {
    run.expect_status(0)?;
    let statuses: Vec<&str> = run
        .output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("@@DD boot "))
        .collect();
    if statuses.len() != BOOTS {
        return Err(format!(
            "{} of {BOOTS} boots finished: {statuses:?}",
            statuses.len()
        ));
    }
    if let Some(bad) = statuses.iter().find(|s| !s.ends_with(" status 0")) {
        return Err(format!("boot {bad} (0 wanted)"));
    }
    let count = |line: &str| run.output.lines().filter(|l| l.trim() == line).count();
    let cpus = count("@@L2 RESULT cpus=2");
    let reads = count(&format!("@@L2 RESULT dd_bytes={DISK_BYTES}"));
    if cpus != BOOTS || reads != BOOTS {
        return Err(format!(
            "{cpus} boots saw 2 CPUs and {reads} read all {DISK_BYTES} bytes; {BOOTS} of each wanted"
        ));
    }
    Ok(())
}
