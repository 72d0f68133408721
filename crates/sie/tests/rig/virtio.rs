//! Paravirtual I/O cases: virtio-blk, -net and -vsock with real Linux drivers, and rate limits.

use super::*;

/// A tap in L1, an address on each side: ping, then 10 MiB each way over
/// TCP with matching checksums.
pub(crate) fn virtio_net() -> Case {
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
pub(crate) fn virtio_vsock() -> Case {
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

/// An ext4 disk read, written and checked on both sides (`cache=writeback`,
/// `io=async`: io_uring); a read-only disk the guest cannot write (the
/// defaults: `cache=unsafe`, `io=sync`); 4 MiB of random data written raw
/// through io_uring and read back with the same checksum on both sides.
/// Linux shows the flush feature as `write back` on the writeback disk only.
pub(crate) fn virtio_blk() -> Case {
    Case {
        name: "virtio_blk",
        l1_command: format!(
            r#"cp "$GUEST/disk.ext4" /tmp/rw.ext4; cp "$GUEST/disk.ext4" /tmp/ro.ext4
before=$(sha256sum /tmp/ro.ext4 | cut -c1-64)
echo "@@L2 RESULT host_sha=$(cat "$GUEST/data.sha256")"
dd if=/dev/zero of=/tmp/raw.img bs=1M count=4 2>/dev/null
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{}" \
  --disk /tmp/rw.ext4,id=data,cache=writeback,io=async --disk /tmp/ro.ext4,ro,id=readonly \
  --disk /tmp/raw.img,id=raw,io=async
status=$?
echo "@@L2 RESULT raw_host_sha=$(sha256sum /tmp/raw.img | cut -c1-64)"
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
mount -t ext4 -o ro /dev/vdb /ro && echo "@@L2 RESULT ro_mount=ok"
for d in vda vdb vdc; do echo "@@L2 RESULT cache_$d=$(cat /sys/block/$d/queue/write_cache | tr ' ' _)"; done
dd if=/dev/urandom of=/tmp/raw bs=64k count=64 2>/dev/null
echo "@@L2 RESULT raw_sent_sha=$(sha256sum /tmp/raw | cut -c1-64)"
dd if=/tmp/raw of=/dev/vdc bs=64k conv=fsync 2>/dev/null
echo "@@L2 RESULT raw_back_sha=$(dd if=/dev/vdc bs=64k count=64 iflag=direct 2>/dev/null | sha256sum | cut -c1-64)""#,
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
                ("cache_vda", "write_back"),
                ("cache_vdb", "write_through"),
                ("cache_vdc", "write_through"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            let sent = run.result("raw_sent_sha").ok_or("no raw_sent_sha")?;
            for key in ["raw_back_sha", "raw_host_sha"] {
                if run.result(key).as_deref() != Some(sent.as_str()) {
                    return Err(format!("{key}: got {:?}, want {sent:?}", run.result(key)));
                }
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
pub(crate) fn virtio_blk_rate_limit() -> Case {
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
pub(crate) fn virtio_net_rate_limit_patch() -> Case {
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
