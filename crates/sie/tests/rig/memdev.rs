//! Memory devices: virtio-pmem files the guest reads and writes as
//! `/dev/pmemN`.

use super::*;

/// Two pmem files from a Firecracker config file: an ext4 image (4 KiB
/// blocks) the guest mounts with DAX, reads and writes, and that L1 then
/// checks with e2fsck and debugfs; and a read-only file whose marker the
/// guest reads, and whose bytes stay as they were (for the guest too) after
/// it wrote to it. The guest's fsync reaches sie as FLUSH requests (counted in
/// the metrics).
pub(crate) fn virtio_pmem() -> Case {
    Case {
        name: "virtio_pmem",
        l1_command: format!(
            r#"cp "$GUEST/disk.ext4" /tmp/pm0.img
echo "@@L2 RESULT host_sha=$(cat "$GUEST/data.sha256")"
head -c 3145728 /dev/zero > /tmp/pm1.img
printf 'read-only-marker' | dd of=/tmp/pm1.img conv=notrunc 2>/dev/null
before=$(sha256sum /tmp/pm1.img | cut -c1-64)
cat > /tmp/pm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "pmem": [{{"id": "pm0", "path_on_host": "/tmp/pm0.img"}},
          {{"id": "pm1", "path_on_host": "/tmp/pm1.img", "read_only": true, "rate_limiter": {{}}}}]}}
EOF
sie --no-api --config-file /tmp/pm.json --metrics-path /tmp/pm-metrics.json > /tmp/console 2>&1
status=$?
cat /tmp/console
e2fsck -fn /tmp/pm0.img >/dev/null 2>&1; echo "@@L2 RESULT fsck=$?"
echo "@@L2 RESULT new_file=$(debugfs -R 'cat /new.txt' /tmp/pm0.img 2>/dev/null)"
[ "$(sha256sum /tmp/pm1.img | cut -c1-64)" = "$before" ] && echo "@@L2 RESULT ro_file=unchanged"
requests() {{ tail -1 /tmp/pm-metrics.json | grep -o "\"$1\":{{[^}}]*}}" | grep -o '"requests":[0-9]*' | tail -1 | cut -d: -f2; }}
echo "@@L2 RESULT pm0_flushes=$(requests virtio-pmem:pm0)"
exit $status"#,
            sie_e2e::l2_boot_args("virtio_pmem")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio libnvdimm nd_virtio virtio_pmem nd_btt nd_pmem crc16 mbcache jbd2 crc32c_generic ext4; do insmod /modules/$m.ko; done
i=0; until [ -b /dev/pmem1 ]; do i=$((i+1)); [ $i -gt 50 ] && break; sleep 0.1; done
[ -b /dev/pmem0 ] && [ -b /dev/pmem1 ] && echo "@@L2 RESULT devices=pmem0,pmem1"
echo "@@L2 RESULT pm1_head=$(dd if=/dev/pmem1 bs=16 count=1 2>/dev/null)"
mkdir -p /mnt
echo "@@L2 RESULT queue_dax=$(cat /sys/block/pmem0/queue/dax)"
if mount -t ext4 -o dax /dev/pmem0 /mnt; then echo "@@L2 RESULT dax=yes"; else echo "@@L2 RESULT dax=no"; dmesg | tail -5; mount -t ext4 /dev/pmem0 /mnt; fi
grep -q ' /mnt ext4 [^ ]*dax' /proc/mounts && echo "@@L2 RESULT mounted_dax=yes"
echo "@@L2 RESULT guest_sha=$(sha256sum /mnt/data.bin | cut -c1-64)"
echo written-through-pmem > /mnt/new.txt && sync && umount /mnt && echo "@@L2 RESULT wrote=yes"
printf 'overwritten-by-l2' | dd of=/dev/pmem1 conv=notrunc,fsync 2>/dev/null
echo 3 > /proc/sys/vm/drop_caches
echo "@@L2 RESULT pm1_after_write=$(dd if=/dev/pmem1 bs=16 count=1 2>/dev/null)"
echo "@@L2 RESULT pm1_size=$(cat /sys/block/pmem1/size)""#,
        ),
        check: |run| {
            status_0_and(run, "devices", "pmem0,pmem1")?;
            status_0_and(run, "pm1_head", "read-only-marker")?;
            let want = run.result("host_sha").ok_or("no host_sha")?;
            status_0_and(run, "guest_sha", &want)?;
            // ext4 on /dev/pmem0 with -o dax: the file's pages are the host
            // file's mapping, written without the page cache.
            status_0_and(run, "queue_dax", "1")?;
            status_0_and(run, "dax", "yes")?;
            status_0_and(run, "mounted_dax", "yes")?;
            status_0_and(run, "wrote", "yes")?;
            status_0_and(run, "fsck", "0")?;
            status_0_and(run, "new_file", "written-through-pmem")?;
            status_0_and(run, "ro_file", "unchanged")?;
            // The read-only slot dropped the guest's stores.
            status_0_and(run, "pm1_after_write", "read-only-marker")?;
            // 3 MiB rounded up to 4 MiB: 8192 sectors of 512 bytes.
            status_0_and(run, "pm1_size", "8192")?;
            match run
                .result("pm0_flushes")
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(n) if n > 0 => Ok(()),
                other => Err(format!("no FLUSH reached sie for pm0: {other:?}")),
            }
        },
    }
}

/// Hotpluggable memory through Firecracker's API: a 256 MiB guest with a
/// 512 MiB virtio-mem region; `PATCH /hotplug/memory` to 256 MiB grows the
/// guest's MemTotal by about that much (Debian's `virtio_mem`, blocks
/// onlined movable), `GET` reports it plugged; the guest fills 128 MiB of
/// it and frees it again, and a PATCH back to 0 shrinks MemTotal back and
/// sie's RSS in L1 falls by at least 64 MiB (the unplugged blocks given
/// back).
pub(crate) fn virtio_mem() -> Case {
    Case {
        name: "virtio_mem",
        l1_command: format!(
            r#"cat > /tmp/hp.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "memory-hotplug": {{"total_size_mib": 512, "block_size_mib": 2, "slot_size_mib": 128}}}}
EOF
sie --api-sock /tmp/hp.sock --config-file /tmp/hp.json > /tmp/console 2>&1 & pid=$!
wait_for() {{ i=0; until grep -q "$1" /tmp/console; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1; done; }}
plugged() {{ sie ctl --sock /tmp/hp.sock request GET /hotplug/memory | tr -d ' \n' | grep -o '"plugged_size_mib":[0-9]*' | cut -d: -f2; }}
wait_for "hp=ready"
echo "@@L2 RESULT plugged_at_start=$(plugged)"
echo "@@L2 RESULT too_big=$(sie ctl --sock /tmp/hp.sock request PATCH /hotplug/memory '{{"requested_size_mib": 1024}}' 2>&1 | grep -c 'requested_size_mib 1024')"
sie ctl --sock /tmp/hp.sock request PATCH /hotplug/memory '{{"requested_size_mib": 256}}'
wait_for "grown="
echo "@@L2 RESULT plugged_after_grow=$(plugged)"
rss() {{ for s in /proc/[0-9]*/status; do grep -q '^Name:[[:space:]]*sie.real$' "$s" 2>/dev/null || continue; sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "$s"; done | head -1; }}
echo "@@L2 RESULT rss_grown=$(rss)"
wait_for "touched=yes"
touched=$(rss)
wait_for "freed=yes"
sie ctl --sock /tmp/hp.sock request PATCH /hotplug/memory '{{"requested_size_mib": 0}}'
wait_for "shrunk="
echo "@@L2 RESULT plugged_after_shrink=$(plugged)"
after=$(rss)
echo "@@L2 RESULT rss_touched=$touched rss_after=$after"
echo "@@L2 RESULT rss_fell_kib=$(( ${{touched:-0}} - ${{after:-0}} ))"
wait $pid; status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("virtio_mem")
        ),
        l2_script: Some(
            r#"echo online_movable > /sys/devices/system/memory/auto_online_blocks
for m in virtio_ring virtio virtio_mmio virtio_mem; do insmod /modules/$m.ko; done
total() { sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo; }
before=$(total)
echo "@@L2 RESULT mem_before=$before"
echo "@@L2 RESULT hp=ready"
i=0; until [ "$(total)" -ge $((before + 250000)) ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "@@L2 RESULT grown=$(( $(total) - before ))"
dd if=/dev/zero of=/fill bs=1M count=128 2>/dev/null; echo "@@L2 RESULT touched=yes"
sleep 3; rm /fill; echo "@@L2 RESULT freed=yes"
i=0; until [ "$(total)" -le $((before + 1024)) ]; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "@@L2 RESULT shrunk=$(( $(total) - before ))"
sleep 3"#,
        ),
        check: |run| {
            status_0_and(run, "plugged_at_start", "0")?;
            status_0_and(run, "plugged_after_grow", "256")?;
            status_0_and(run, "plugged_after_shrink", "0")?;
            status_0_and(run, "too_big", "1")?;
            let kib = |key: &str| {
                run.result(key)
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or(format!("no {key}"))
            };
            let grown = kib("grown")?;
            if !(250_000..=262_144).contains(&grown) {
                return Err(format!("MemTotal grew by {grown} KiB, not about 256 MiB"));
            }
            let fell = kib("rss_fell_kib")?;
            if fell < 65_536 {
                return Err(format!(
                    "sie's RSS fell by only {fell} KiB after the unplug"
                ));
            }
            let shrunk = kib("shrunk")?;
            if shrunk > 1024 {
                return Err(format!(
                    "MemTotal stayed {shrunk} KiB above where it started"
                ));
            }
            Ok(())
        },
    }
}
