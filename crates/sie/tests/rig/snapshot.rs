//! Snapshot cases: a Debian guest restored in a new process, and clones.

use super::*;

/// The L1 script that boots the case's Debian guest under the API at
/// `/tmp/NAME.sock` with `DEVICES` (more config-file sections, each after a
/// comma) (console in `/tmp/NAME-console`), waits for the guest to
/// print `tick=TICK `, pauses it, writes `/tmp/NAME.snap` and `/tmp/NAME.mem`
/// with `sie ctl`, and stops that sie.
fn boot_and_snapshot(case: &str, name: &str, tick: u32, devices: &str) -> String {
    format!(
        r#"cat > /tmp/{name}-vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{args}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}{devices}}}
EOF
sie --api-sock /tmp/{name}.sock --config-file /tmp/{name}-vm.json > /tmp/{name}-console 2>&1 &
pid=$!
i=0
until grep -q "tick={tick} " /tmp/{name}-console; do
  i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1
done
sie ctl --sock /tmp/{name}.sock pause
sie ctl --sock /tmp/{name}.sock snapshot create /tmp/{name}.snap /tmp/{name}.mem
kill $pid; wait $pid
"#,
        args = sie_e2e::l2_boot_args(case)
    )
}

/// Two clones restored from one snapshot of a Debian guest: each gets a new
/// VM generation id and the event device's interrupt, so Linux reseeds its
/// RNG and the clones read different bytes from /dev/urandom.
pub(crate) fn snapshot_clones() -> Case {
    Case {
        name: "snapshot_clones",
        l1_command: boot_and_snapshot("snapshot_clones", "clone", 2, "")
            + r#"echo "@@L2 RESULT source=$(grep -o 'tick=2 .*' /tmp/clone-console | head -1)"
status=0
for clone in a b; do
  sie run --restore /tmp/clone.snap --mem /tmp/clone.mem > /tmp/clone-$clone 2>&1 || status=$?
  echo "@@L2 RESULT clone_$clone=$(grep -o 'tick=3 .*' /tmp/clone-$clone | head -1)"
done
tail -3 /tmp/clone-b
rm -f /tmp/clone.snap /tmp/clone.mem
exit $status"#,
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

/// A Debian guest with a disk, an entropy device and a vsock listener,
/// that counts seconds and keeps a file in its RAM-backed root, is paused,
/// snapshotted through `sie ctl`, stopped, and restored by `sie run
/// --restore` in a new process: it goes on counting from where it was,
/// still has its file, reads its disk and entropy device on every tick,
/// its listener answers a host client, and it finishes its script (exit 0).
pub(crate) fn snapshot_restore() -> Case {
    Case {
        name: "snapshot_restore",
        l1_command: r#"cp "$GUEST/disk.ext4" /tmp/snap-disk.ext4
"#
        .to_string()
            + &boot_and_snapshot(
                "snapshot_restore",
                "snap",
                3,
                r#", "drives": [{"drive_id": "data", "path_on_host": "/tmp/snap-disk.ext4", "is_root_device": false, "is_read_only": true}], "entropy": {}, "vsock": {"guest_cid": 3, "uds_path": "/tmp/snap-v.sock"}"#,
            )
            + r#"last=$(grep -o 'tick=[0-9]*' /tmp/snap-console | tail -1)
grep 'tick=' /tmp/snap-console
echo "@@L2 RESULT source_last=$last"
echo "@@L2 RESULT mem_file_kib=$(du -k /tmp/snap.mem | cut -f1)"
sie run --restore /tmp/snap.snap --mem /tmp/snap.mem > /tmp/snap-restored 2>&1 &
rpid=$!
i=0
until grep -q "tick=5 " /tmp/snap-restored; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "@@L2 RESULT vsock_after=$(sietool uds-ask /tmp/snap-v.sock 1024 after-restore | tr '\n' ' ')"
wait $rpid
status=$?
echo "@@L2 RESULT restored_first=$(grep -o 'tick=[0-9]*' /tmp/snap-restored | head -1)"
cat /tmp/snap-restored
rm -f /tmp/snap.snap /tmp/snap.mem /tmp/snap-disk.ext4
exit $status"#,
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do insmod /modules/$m.ko; done
sietool vsock-echo 1024 > /dev/null &
echo "kept-$(cat /proc/sys/kernel/random/uuid)" > /kept
n=0
while [ $n -lt 10 ]; do
  n=$((n+1))
  blk=$(dd if=/dev/vda bs=4096 count=1 skip=$n iflag=direct 2>/dev/null | wc -c)
  rng=$(head -c 8 /dev/hwrng 2>/dev/null | wc -c)
  echo "@@L2 RESULT tick=$n kept=$(cat /kept) blk=$blk rng=$rng "
  sleep 1
done
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
            // The file the guest wrote before the snapshot is still there,
            // and its disk and entropy device answer on every tick, the
            // ones after the restore included.
            let ticks: Vec<&str> = run
                .output
                .lines()
                .filter(|line| line.contains("@@L2 RESULT tick="))
                .collect();
            if ticks.len() < 10
                || ticks
                    .iter()
                    .any(|t| !t.contains(" blk=4096 ") || !t.contains(" rng=8 "))
            {
                return Err(format!(
                    "a tick without its disk or entropy read: {ticks:#?}"
                ));
            }
            let kept: Vec<&str> = ticks
                .iter()
                .filter_map(|line| line.split("kept=").nth(1))
                .filter_map(|rest| rest.split_whitespace().next())
                .collect();
            if kept.len() < 10
                || kept.iter().any(|k| *k != kept[0])
                || !kept[0].starts_with("kept-")
            {
                return Err(format!(
                    "the guest's file changed across the restore: {kept:?}"
                ));
            }
            // The guest's vsock listener, opened before the snapshot, answers
            // a host client after the restore (its connections were reset).
            match run.result("vsock_after") {
                Some(reply)
                    if reply.starts_with("OK ") && reply.trim_end().ends_with("after-restore") => {}
                other => return Err(format!("vsock echo after the restore: got {other:?}")),
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

/// A clone restored with `--net-override`, `--vsock-override` and
/// `--clock-realtime` (the `network_overrides`, `vsock_override` and
/// `clock_realtime` of `PUT /snapshot/load`): its network answers on the
/// new tap, its vsock listener on the new socket, and its wall clock
/// agrees with the host's although the snapshot sat as files for seconds.
pub(crate) fn snapshot_overrides() -> Case {
    Case {
        name: "snapshot_overrides",
        l1_command: boot_and_snapshot(
            "snapshot_overrides",
            "ov",
            2,
            r#", "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "ovtap0", "guest_mac": "06:00:ac:10:00:02"}], "vsock": {"guest_cid": 3, "uds_path": "/tmp/ov-a.sock"}"#,
        ) + r#"rm -f /tmp/ov-a.sock
sleep 6
sie run --restore /tmp/ov.snap --mem /tmp/ov.mem --net-override eth0=ovtap1 \
  --vsock-override /tmp/ov-b.sock --clock-realtime > /tmp/ov-restored 2>&1 &
rpid=$!
i=0
until [ -e /sys/class/net/ovtap1 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
ip addr add 172.16.0.1/24 dev ovtap1; ip link set ovtap1 up
i=0
until grep -q "tick=4 " /tmp/ov-restored; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1; done
echo "@@L2 RESULT host_now=$(date +%s)"
echo "@@L2 RESULT guest_now=$(grep -o 'tick=4 now=[0-9]*' /tmp/ov-restored | head -1 | cut -d= -f3)"
ping -c 2 -w 20 172.16.0.2 >/dev/null && echo "@@L2 RESULT ping_new_tap=ok"
echo "@@L2 RESULT vsock_new_socket=$(sietool uds-ask /tmp/ov-b.sock 1024 clone | tr '\n' ' ')"
echo "@@L2 RESULT old_socket=$([ -e /tmp/ov-a.sock ] && echo present || echo absent)"
wait $rpid
status=$?
cat /tmp/ov-restored
rm -f /tmp/ov.snap /tmp/ov.mem
exit $status"#,
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do insmod /modules/$m.ko; done
ip link set lo up
ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
sietool vsock-echo 1024 > /dev/null &
n=0
while [ $n -lt 8 ]; do
  n=$((n+1))
  echo "@@L2 RESULT tick=$n now=$(date +%s) "
  sleep 1
done
echo "@@L2 RESULT finished=yes""#,
        ),
        check: |run| {
            status_0_and(run, "finished", "yes")?;
            status_0_and(run, "ping_new_tap", "ok")?;
            match run.result("vsock_new_socket") {
                Some(reply) if reply.starts_with("OK ") && reply.trim_end().ends_with("clone") => {}
                other => return Err(format!("vsock echo on the new socket: got {other:?}")),
            }
            status_0_and(run, "old_socket", "absent")?;
            // Without clock_realtime the guest would be 6 s or more behind.
            let seconds = |key: &str| run.result(key).and_then(|v| v.parse::<i64>().ok());
            match (seconds("host_now"), seconds("guest_now")) {
                (Some(host), Some(guest)) if (host - guest).abs() <= 3 => Ok(()),
                other => Err(format!(
                    "(host, guest) wall clock after the restore: {other:?}"
                )),
            }
        },
    }
}

/// A Debian guest restored twice with the `Lazy` memory backend: the first
/// restore serves its page faults from the memory file and records the
/// pages it touched; the second finds that working set and installs it
/// before the vCPUs run. Both go on counting from where it was paused.
pub(crate) fn snapshot_lazy() -> Case {
    Case {
        name: "snapshot_lazy",
        l1_command: boot_and_snapshot("snapshot_lazy", "lazy", 2, "")
            + r#"status=0
for run in first second; do
  sie run --restore /tmp/lazy.snap --mem /tmp/lazy.mem --mem-backend lazy --log-level info > /tmp/lazy-$run 2>&1 || status=$?
  echo "@@L2 RESULT ${run}_tick=$(grep -o 'tick=3 ' /tmp/lazy-$run | head -1 | tr -d ' ')"
  echo "@@L2 RESULT ${run}_pages=$(grep -o 'prefetched [0-9]* pages\|recorded a working set of [0-9]* pages' /tmp/lazy-$run | tail -1 | tr ' ' '_')"
done
grep 'lazy restore' /tmp/lazy-first /tmp/lazy-second
tail -3 /tmp/lazy-second
rm -f /tmp/lazy.snap /tmp/lazy.mem /tmp/lazy.mem.ws
exit $status"#,
        l2_script: Some(
            r#"n=0
while [ $n -lt 4 ]; do
  n=$((n+1))
  echo "@@L2 RESULT tick=$n "
  sleep 1
done
echo "@@L2 RESULT finished=yes""#,
        ),
        check: |run| {
            status_0_and(run, "finished", "yes")?;
            for key in ["first_tick", "second_tick"] {
                if run.result(key).as_deref() != Some("tick=3") {
                    return Err(format!(
                        "{key}: {:?}: a restore did not go on at tick 3",
                        run.result(key)
                    ));
                }
            }
            let count = |key: &str, prefix: &str| -> Option<u64> {
                run.result(key)?
                    .strip_prefix(prefix)?
                    .strip_suffix("_pages")?
                    .parse()
                    .ok()
            };
            let recorded = count("first_pages", "recorded_a_working_set_of_");
            let prefetched = count("second_pages", "prefetched_");
            match (recorded, prefetched) {
                (Some(r), Some(p)) if r > 0 && r == p => Ok(()),
                other => Err(format!("working set (recorded, prefetched): {other:?}")),
            }
        },
    }
}
