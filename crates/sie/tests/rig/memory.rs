//! Memory cases: the balloon with a stock Debian guest's virtio_balloon
//! driver, driven through the API.

use super::*;

/// MiB in kB, as /proc reports memory.
const MIB_KB: i64 = 1024;

/// A Debian guest with the balloon (statistics every second, free page
/// reporting): most of 80 MiB it touched and freed leave sie's RSS once
/// reported;
/// `PATCH /balloon` to 64 MiB takes about 64 MiB off the guest's
/// MemAvailable, the statistics say the balloon holds 64 MiB, and back to
/// 0 MiB gives them back.
pub(crate) fn balloon() -> Case {
    Case {
        name: "balloon",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "balloon": {{"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1,
  "free_page_reporting": true}}}}
EOF
SIE_RUN_TIMEOUT=240 sie --api-sock /tmp/api.sock --config-file /tmp/vm.json > /tmp/console 2>&1 &
pid=$!
wait_for() {{
  i=0
  until grep -q "$1" /tmp/console; do
    i=$((i+1))
    if [ $i -gt 1000 ] || ! kill -0 $pid 2>/dev/null; then
      echo "@@L2 RESULT timeout=$1"; tail -20 /tmp/console | sed 's/^/  console: /'; return 1
    fi
    sleep 0.1
  done
}}
# The VMM: the sie.real with the most resident memory (its threads carry
# other names, and `sie ctl` is a sie.real too).
rss() {{
  for p in /proc/[0-9]*; do
    case "$(tr '\0' '\n' < $p/cmdline 2>/dev/null | head -1)" in
      */sie.real) sed -n 's/^VmRSS:[^0-9]*\([0-9]*\) kB/\1/p' $p/status ;;
    esac
  done | sort -n | tail -1
}}
api() {{ sie ctl --sock /tmp/api.sock request "$@"; }}
wait_for "touched=yes" && sleep 1 && echo "@@L2 RESULT rss_touched_kb=$(rss)" &&
# Free page reporting waits ~2 s before it reports.
wait_for "freed=yes" && sleep 8 && echo "@@L2 RESULT rss_freed_kb=$(rss)" &&
wait_for "avail_before_kb" && api PATCH /balloon '{{"amount_mib": 64}}' &&
wait_for "avail_inflated_kb" && sleep 2 && echo "@@L2 RESULT stats=$(api GET /balloon/statistics | tr -d ' \n')" &&
api PATCH /balloon '{{"amount_mib": 0}}' || kill $pid
wait $pid
status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("balloon")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_balloon; do insmod /modules/$m.ko; done
echo "@@L2 RESULT driver=$(ls /sys/bus/virtio/drivers/virtio_balloon | grep -c virtio)"
avail() { sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
echo "@@L2 RESULT filling_since=$(cut -d' ' -f1 /proc/uptime)"
dd if=/dev/zero of=/tmp/fill bs=1M count=80 2>/dev/null
echo "@@L2 RESULT filled_kb=$(du -k /tmp/fill | cut -f1)"
echo "@@L2 RESULT touched=yes at $(cut -d' ' -f1 /proc/uptime)"
sleep 4
rm /tmp/fill
echo "@@L2 RESULT freed=yes"
sleep 1
a0=$(avail)
echo "@@L2 RESULT avail_before_kb=$a0"
i=0; while [ $i -lt 240 ] && [ $((a0 - $(avail))) -lt 57344 ]; do i=$((i+1)); sleep 0.5; done
# The driver may still be inflating: read once it settled.
sleep 2
echo "@@L2 RESULT avail_inflated_kb=$(avail)"
i=0; while [ $i -lt 240 ] && [ $((a0 - $(avail))) -gt 8192 ]; do i=$((i+1)); sleep 0.5; done
echo "@@L2 RESULT avail_deflated_kb=$(avail)""#,
        ),
        check: |run| {
            status_0_and(run, "driver", "1")?;
            let kb = |key: &str| -> Result<i64, String> {
                run.result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key}"))
            };
            // /tmp is the initramfs' tmpfs: RAM the guest touches.
            status_0_and(run, "filled_kb", "81920")?;
            let given_back = kb("rss_touched_kb")? - kb("rss_freed_kb")?;
            if given_back < 56 * MIB_KB {
                return Err(format!(
                    "sie's RSS fell by {given_back} kB after the guest freed 80 MiB with reporting on"
                ));
            }
            let before = kb("avail_before_kb")?;
            let inflated = before - kb("avail_inflated_kb")?;
            if !(56 * MIB_KB..=72 * MIB_KB).contains(&inflated) {
                return Err(format!(
                    "MemAvailable fell by {inflated} kB for a 64 MiB balloon"
                ));
            }
            let left = before - kb("avail_deflated_kb")?;
            if left > 8 * MIB_KB {
                return Err(format!(
                    "MemAvailable is still {left} kB short after deflating"
                ));
            }
            let stats = run.result("stats").ok_or("no balloon statistics")?;
            if !stats.contains("\"actual_mib\":64") || !stats.contains("\"free_memory\":") {
                return Err(format!("balloon statistics: {stats}"));
            }
            Ok(())
        },
    }
}

/// `deflate_on_oom`: a 160 MiB balloon in a 256 MiB guest leaves too
/// little for 72 MiB the guest then writes to its RAM-backed /tmp; the
/// driver gives balloon pages back instead of killing anything, the write
/// completes, and the balloon holds less than its target.
pub(crate) fn balloon_deflate_on_oom() -> Case {
    Case {
        name: "balloon_deflate_on_oom",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "balloon": {{"amount_mib": 160, "deflate_on_oom": true, "stats_polling_interval_s": 1}}}}
EOF
SIE_RUN_TIMEOUT=240 sie --api-sock /tmp/api.sock --config-file /tmp/vm.json > /tmp/console 2>&1 &
pid=$!
i=0
until grep -q "filled_kb=" /tmp/console || ! kill -0 $pid 2>/dev/null; do
  i=$((i+1)); [ $i -gt 1500 ] && break; sleep 0.1
done
sleep 2
echo "@@L2 RESULT stats=$(sie ctl --sock /tmp/api.sock request GET /balloon/statistics | tr -d ' \n')"
wait $pid
status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("balloon_deflate_on_oom")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_balloon; do insmod /modules/$m.ko; done
avail() { sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
i=0; while [ $i -lt 240 ] && [ $(avail) -gt 61440 ]; do i=$((i+1)); sleep 0.5; done
sleep 2
echo "@@L2 RESULT inflated_avail_kb=$(avail)"
dd if=/dev/zero of=/tmp/fill bs=1M count=72 2>/dev/null
echo "@@L2 RESULT filled_kb=$(du -k /tmp/fill | cut -f1)"
echo "@@L2 RESULT survived=yes"
# The host reads the balloon's statistics meanwhile.
sleep 10"#,
        ),
        check: |run| {
            status_0_and(run, "survived", "yes")?;
            status_0_and(run, "filled_kb", "73728")?;
            let avail: i64 = run
                .result("inflated_avail_kb")
                .and_then(|v| v.parse().ok())
                .ok_or("no inflated_avail_kb")?;
            if avail > 60 * MIB_KB {
                return Err(format!(
                    "the 160 MiB balloon left {avail} kB available: too much for the test"
                ));
            }
            let stats = run.result("stats").ok_or("no balloon statistics")?;
            let actual = stats
                .split("\"actual_mib\":")
                .nth(1)
                .and_then(|rest| rest.split([',', '}']).next())
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or(format!("no actual_mib in {stats}"))?;
            if actual >= 160 {
                return Err(format!("the balloon did not deflate: {stats}"));
            }
            if run.output.contains("Out of memory: Killed process") {
                return Err("the guest killed a process for memory".to_string());
            }
            Ok(())
        },
    }
}

/// Free page hinting as Firecracker's endpoints drive it: after the guest
/// touched and freed 80 MiB, `PATCH /balloon/hinting/start` has the
/// driver hint its free pages, sie drops them (its RSS falls), the guest's
/// STOP is acknowledged with DONE (`acknowledge_on_stop`), and the status
/// says so.
pub(crate) fn balloon_hinting() -> Case {
    Case {
        name: "balloon_hinting",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "balloon": {{"amount_mib": 0, "deflate_on_oom": false, "free_page_hinting": true}}}}
EOF
SIE_RUN_TIMEOUT=240 sie --api-sock /tmp/api.sock --config-file /tmp/vm.json > /tmp/console 2>&1 &
pid=$!
rss() {{
  for p in /proc/[0-9]*; do
    case "$(tr '\0' '\n' < $p/cmdline 2>/dev/null | head -1)" in
      */sie.real) sed -n 's/^VmRSS:[^0-9]*\([0-9]*\) kB/\1/p' $p/status ;;
    esac
  done | sort -n | tail -1
}}
api() {{ sie ctl --sock /tmp/api.sock request "$@"; }}
i=0
until grep -q "freed=yes" /tmp/console || ! kill -0 $pid 2>/dev/null; do
  i=$((i+1)); [ $i -gt 1500 ] && break; sleep 0.1
done
sleep 1
echo "@@L2 RESULT rss_before_kb=$(rss)"
api PATCH /balloon/hinting/start '{{"acknowledge_on_stop": true}}'
sleep 6
echo "@@L2 RESULT rss_after_kb=$(rss)"
echo "@@L2 RESULT status=$(api GET /balloon/hinting/status | tr -d ' \n')"
# Done: an orderly stop (the guest would otherwise wait its 120 s).
sie ctl --sock /tmp/api.sock ctrl-alt-del
wait $pid
status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("balloon_hinting")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_balloon; do insmod /modules/$m.ko; done
dd if=/dev/zero of=/tmp/fill bs=1M count=80 2>/dev/null
rm /tmp/fill
echo "@@L2 RESULT freed=yes"
sleep 120
echo "@@L2 RESULT cad=missed""#,
        ),
        check: |run| {
            if run.result("cad").is_some() {
                return Err("the guest outlived the case (Ctrl-Alt-Del missed)".to_string());
            }
            let kb = |key: &str| -> Result<i64, String> {
                run.result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key}"))
            };
            let given_back = kb("rss_before_kb")? - kb("rss_after_kb")?;
            if given_back < 56 * MIB_KB {
                return Err(format!(
                    "sie's RSS fell by {given_back} kB after a hinting run over 80 MiB the guest freed"
                ));
            }
            // DONE (1) from the host after the guest's STOP (0).
            status_0_and(run, "status", r#"{"guest_cmd":0,"host_cmd":1}"#)
        },
    }
}

/// The balloon across a snapshot: a guest whose 32 MiB balloon is inflated
/// is snapshotted and restored into a fresh sie through the API; the
/// restored balloon still reports 32 MiB, and `PATCH /balloon` to 0 makes
/// the restored guest deflate (its MemTotal grows back).
pub(crate) fn balloon_snapshot() -> Case {
    Case {
        name: "balloon_snapshot",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
  "balloon": {{"amount_mib": 32, "deflate_on_oom": false, "stats_polling_interval_s": 1}}}}
EOF
wait_for() {{ # wait_for FILE PATTERN
  i=0
  until grep -q "$2" "$1"; do i=$((i+1)); [ $i -gt 1200 ] && echo "@@L2 RESULT timeout=$2" && return 1; sleep 0.1; done
}}
sie --api-sock /tmp/a.sock --config-file /tmp/vm.json > /tmp/a-console 2>&1 &
a=$!
wait_for /tmp/a-console "tick=3 "
sie ctl --sock /tmp/a.sock pause
sie ctl --sock /tmp/a.sock snapshot create /tmp/b.snap /tmp/b.mem
echo "@@L2 RESULT at_snapshot=$(grep -o 'tick=3 .*' /tmp/a-console | head -1)"
kill $a; wait $a
SIE_RUN_TIMEOUT=200 sie --api-sock /tmp/b.sock > /tmp/b-console 2>&1 &
b=$!
i=0; until [ -S /tmp/b.sock ]; do i=$((i+1)); [ $i -gt 100 ] && break; sleep 0.1; done
sie ctl --sock /tmp/b.sock snapshot load /tmp/b.snap /tmp/b.mem --resume
sleep 2
echo "@@L2 RESULT restored=$(sie ctl --sock /tmp/b.sock request GET /balloon/statistics | tr -d ' \n')"
sie ctl --sock /tmp/b.sock request PATCH /balloon '{{"amount_mib": 0}}'
wait_for /tmp/b-console "deflated=yes"
sie ctl --sock /tmp/b.sock ctrl-alt-del
wait $b
status=$?
cat /tmp/b-console
rm -f /tmp/b.snap /tmp/b.mem
exit $status"#,
            sie_e2e::l2_boot_args("balloon_snapshot")
        ),
        l2_script: Some(
            r#"tot() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
t0=$(tot)
for m in virtio_ring virtio virtio_mmio virtio_balloon; do insmod /modules/$m.ko; done
# Snapshot only once the 32 MiB are in the balloon.
i=0; while [ $i -lt 600 ] && [ $(( t0 - $(tot) )) -lt 31744 ]; do i=$((i+1)); sleep 0.2; done
n=0
while [ $n -lt 3 ]; do n=$((n+1)); sleep 1; echo "@@L2 RESULT tick=$n total=$(tot) "; done
t3=$(tot)
i=0; while [ $i -lt 600 ] && [ $(( $(tot) - t3 )) -lt 28672 ]; do i=$((i+1)); sleep 0.2; done
echo "@@L2 RESULT after_restore_total=$(tot)"
[ $(( $(tot) - t3 )) -ge 28672 ] && echo "@@L2 RESULT deflated=yes"
sleep 120
echo "@@L2 RESULT cad=missed""#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let restored = run
                .result("restored")
                .ok_or("no statistics after the restore")?;
            if !restored.contains("\"actual_mib\":32") || !restored.contains("\"target_mib\":32") {
                return Err(format!("the restored balloon says {restored}"));
            }
            status_0_and(run, "deflated", "yes")?;
            if run.result("cad").is_some() {
                return Err("the restored guest missed Ctrl-Alt-Del".to_string());
            }
            Ok(())
        },
    }
}
