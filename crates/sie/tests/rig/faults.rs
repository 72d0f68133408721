//! Faults from the host side under a running Linux guest: its drive's
//! filesystem fills up (with sie's log file on it), and its tap is
//! deleted. sie must keep running, the guest must see an I/O error and go
//! on with its other devices, and the errors must show in the log and the
//! metrics.

use super::*;

/// One guest, three faults. The drive `full` is an 8 MiB sparse image on a
/// 2 MiB tmpfs in L1, which holds sie's log file too: the guest's 4 MiB
/// write fails part way (ENOSPC on the host, an I/O error in the guest),
/// while the drive `spare` still works, and the log lines about it are
/// lost for want of space, and counted. Then L1 frees some space and
/// deletes `tap0` under the guest (`ip link delete`): sie goes on, the log
/// says how many lines it lost before saying the tap failed, the guest's
/// pings go unanswered, and it finishes its script with the spare drive.
pub(crate) fn host_faults() -> Case {
    Case {
        name: "host_faults",
        l1_command: format!(
            r#"mkdir -p /tmp/small && mount -t tmpfs -o size=2m tmpfs /tmp/small
dd if=/dev/zero of=/tmp/small/filler bs=64k count=4 2>/dev/null
truncate -s 8388608 /tmp/small/full.img
dd if=/dev/zero of=/tmp/spare.img bs=1M count=1 2>/dev/null
cat > /tmp/hf.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "drives": [
  {{"drive_id": "full", "path_on_host": "/tmp/small/full.img", "is_root_device": false}},
  {{"drive_id": "spare", "path_on_host": "/tmp/spare.img", "is_root_device": false}}],
 "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}}]}}
EOF
sie --no-api --config-file /tmp/hf.json --metrics-path /tmp/hf-metrics.json \
  --log-path /tmp/small/sie.log > /tmp/console 2>&1 & pid=$!
i=0
until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up
i=0
until grep -q "delete=now" /tmp/console; do i=$((i+1)); [ $i -gt 1800 ] && break; sleep 0.1; done
rm /tmp/small/filler
ip link delete tap0 && echo "@@L2 RESULT tap=deleted"
sleep 1
kill -0 $pid 2>/dev/null && echo "@@L2 RESULT sie_after_delete=running"
wait $pid; status=$?
cat /tmp/console
sed 's/^/sie.log: /' /tmp/small/sie.log
errors() {{ tail -1 /tmp/hf-metrics.json | grep -o "\"$1\":{{[^}}]*}}" | grep -o '"errors":[0-9]*' | tail -1 | cut -d: -f2; }}
echo "@@L2 RESULT full_errors=$(errors virtio-blk:full)"
echo "@@L2 RESULT spare_errors=$(errors virtio-blk:spare)"
echo "@@L2 RESULT net_errors=$(errors virtio-net:eth0)"
echo "@@L2 RESULT net_tx_dropped=$(tail -1 /tmp/hf-metrics.json | grep -o '"virtio-net:eth0":{{[^}}]*}}' | grep -o '"tx_dropped":[0-9]*' | cut -d: -f2)"
echo "@@L2 RESULT log_write_errors=$(tail -1 /tmp/hf-metrics.json | grep -o '"lines_dropped_write_error":[0-9]*' | cut -d: -f2)"
grep -q "sie: log file: [0-9]* lines lost (No space left on device" /tmp/small/sie.log && echo "@@L2 RESULT log_loss=reported"
grep -q "virtio-net backend read failed" /tmp/small/sie.log && echo "@@L2 RESULT net_logged=yes"
umount /tmp/small
exit $status"#,
            sie_e2e::l2_boot_args("host_faults")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk failover net_failover virtio_net; do insmod /modules/$m.ko; done
ip link set lo up; ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 3 -w 20 172.16.0.1 >/dev/null && echo "@@L2 RESULT ping_before=ok"
if dd if=/dev/zero of=/dev/vda bs=64k count=64 conv=fsync 2>/dev/null; then echo "@@L2 RESULT full_write=accepted"; else echo "@@L2 RESULT full_write=failed"; fi
[ "$(dmesg | grep -c 'I/O error')" -gt 0 ] && echo "@@L2 RESULT guest_saw=io_error"
spare() { echo "$1" > /tmp/m; dd if=/tmp/m of=/dev/vdb bs=512 count=1 conv=sync,fsync 2>/dev/null; dd if=/dev/vdb bs=512 count=1 iflag=direct 2>/dev/null | head -n 1; }
echo "@@L2 RESULT spare_before=$(spare before-delete)"
echo "@@L2 RESULT delete=now"
sleep 4
if ping -c 2 -w 4 172.16.0.1 >/dev/null 2>&1; then echo "@@L2 RESULT ping_after=answered"; else echo "@@L2 RESULT ping_after=lost"; fi
echo "@@L2 RESULT spare_after=$(spare after-delete)""#,
        ),
        check: |run| {
            run.expect_status(0)?;
            for (key, want) in [
                ("ping_before", "ok"),
                ("full_write", "failed"),
                ("guest_saw", "io_error"),
                ("spare_before", "before-delete"),
                ("tap", "deleted"),
                ("sie_after_delete", "running"),
                ("ping_after", "lost"),
                ("spare_after", "after-delete"),
                ("spare_errors", "0"),
                ("log_loss", "reported"),
                ("net_logged", "yes"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            for key in [
                "full_errors",
                "net_errors",
                "net_tx_dropped",
                "log_write_errors",
            ] {
                let count: u64 = run
                    .result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key} in the metrics"))?;
                if count == 0 {
                    return Err(format!("{key}: sie counted no error"));
                }
            }
            Ok(())
        },
    }
}
