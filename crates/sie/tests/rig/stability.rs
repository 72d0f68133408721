//! Rig stability: the workload that once took L1 down, run again and again.

use super::*;

/// How many times `blk_dd_2vcpu_x10` boots its guest.
const DD_RUNS: u32 = 10;

/// The MiB the guest reads in each run (its disk, 1 MiB per `dd` record).
const DD_MIB: u32 = 128;

/// A Debian guest with 2 vCPUs reads a 128 MiB virtio-blk disk with `dd`,
/// ten times over, each run in its own sie. This workload killed the L1
/// kernel in several rig runs (issue #15: a recursive page fault after
/// VMRUN); every run must boot, read the whole disk and exit 0.
pub(crate) fn blk_dd_2vcpu_x10() -> Case {
    Case {
        name: "blk_dd_2vcpu_x10",
        l1_command: format!(
            r#"dd if=/dev/zero of=/tmp/dd128.img bs=1M count={DD_MIB} 2>/dev/null
ok=0
for i in $(seq 1 {DD_RUNS}); do
  start=$(date +%s)
  sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --vcpus 2 --memory 256 \
    --cmdline "{}" --disk /tmp/dd128.img,id=data > /tmp/console 2>&1
  status=$?
  records=$(sed -n 's/^\([0-9]*\)+0 records out.*/\1/p' /tmp/console | head -n 1)
  echo "@@DD run $i status=$status mib=$records seconds=$(( $(date +%s) - start ))"
  if [ "$status" = 0 ] && [ "$records" = {DD_MIB} ]; then ok=$((ok+1)); else tail -n 40 /tmp/console; fi
done
echo "@@L2 RESULT dd_runs_ok=$ok""#,
            sie_e2e::l2_boot_args("blk_dd_2vcpu_x10")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko; done
dd if=/dev/vda of=/dev/null bs=1M 2>&1"#,
        ),
        check: |run| status_0_and(run, "dd_runs_ok", &DD_RUNS.to_string()),
    }
}
