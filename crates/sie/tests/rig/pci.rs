//! PCI cases: a stock Debian guest started the way Firecracker clients
//! start Firecracker with `--enable-pci` (a config file, no API) finds the
//! PCI bus through ACPI alone (no `pci=` argument), and its disk and
//! network on virtio-PCI with MSI-X.

use super::*;

/// L2's kernel arguments for a PCI VM: the rig's usual ones without `pci=off`.
fn pci_boot_args(case: &str) -> String {
    sie_e2e::l2_boot_args(case).replace(" pci=off", "")
}

/// The host bridge on bus 0 as Linux sees it, the root bridge found
/// through ACPI (`PCI0`), the ECAM window from the MCFG accepted (reserved
/// by the DSDT's motherboard resource), and native PCIe control granted by
/// `_OSC`; acpiphp registers the 31 hotpluggable slots the DSDT describes
/// and the GED driver binds the hotplug event device.
pub(crate) fn pci_bus() -> Case {
    Case {
        name: "pci_bus",
        l1_command: format!(
            r#"cat > /tmp/pci.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}}}}
EOF
sie --no-api --config-file /tmp/pci.json --enable-pci"#,
            pci_boot_args("pci_bus")
        ),
        l2_script: Some(
            r#"d=/sys/bus/pci/devices/0000:00:00.0
echo "@@L2 RESULT bridge=$(cat $d/vendor):$(cat $d/device):$(cat $d/class)"
echo "@@L2 RESULT cmdline_pci=$(grep -c 'pci=' /proc/cmdline)"
dmesg | grep -q 'PCI Root Bridge \[PCI0\] (domain 0000 \[bus 00\])' && echo "@@L2 RESULT root_bridge=PCI0"
dmesg | grep -q 'MMCONFIG at \[mem 0xe0000000-0xe00fffff\] reserved' && echo "@@L2 RESULT ecam=reserved"
dmesg | grep -q '_OSC: OS now controls' && echo "@@L2 RESULT osc=native"
echo "@@L2 RESULT acpiphp_slots=$(dmesg | grep -c 'acpiphp: Slot \[[0-9]*\] registered')"
echo "@@L2 RESULT sysfs_slots=$(ls /sys/bus/pci/slots | wc -l)"
echo "@@L2 RESULT ged=$(ls -d /sys/bus/platform/drivers/*/ACPI0013:* 2>/dev/null | wc -l)"
ls -d /sys/bus/platform/drivers/*/ACPI0013:* | sed 's/^/  ged: /'
dmesg | grep -iE 'acpiphp|ged' | head -5 | sed 's/^/  dmesg: /'
dmesg | grep -iE 'pci|mmconfig|_osc|acpi: .*table' | sed 's/^/  dmesg: /'"#,
        ),
        check: |run| {
            run.expect_status(0)?;
            for (key, want) in [
                ("bridge", "0x8086:0x0d57:0x060000"),
                ("cmdline_pci", "0"),
                ("root_bridge", "PCI0"),
                ("ecam", "reserved"),
                ("osc", "native"),
                // Hotplug: acpiphp took every slot 1-31 the DSDT
                // describes, and both event devices (vmgenid's and the
                // hotplug one) are bound to the GED driver.
                ("acpiphp_slots", "31"),
                ("sysfs_slots", "31"),
                ("ged", "2"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            Ok(())
        },
    }
}

/// A disk, a network interface, a vsock and an entropy device on
/// virtio-PCI: Linux lists them on bus 0 (blk 1af4:1042, net 1af4:1041,
/// vsock 1af4:1053, rng 1af4:1044) bound to `virtio-pci`, takes every
/// virtio interrupt as PCI-MSI (none on the I/O APIC), reads the disk's
/// data with the checksum the host computed, pings the host through the
/// tap and sends it 4 MiB over TCP that arrive with the same checksum,
/// reads the entropy device through /dev/hwrng, and echoes through the
/// host's vsock socket.
pub(crate) fn virtio_pci() -> Case {
    Case {
        name: "virtio_pci",
        l1_command: format!(
            r#"cp "$GUEST/disk.ext4" /tmp/pci-disk.ext4
echo "@@L2 RESULT host_sha=$(cat "$GUEST/data.sha256")"
cat > /tmp/vpci.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "drives": [{{"drive_id": "data", "path_on_host": "/tmp/pci-disk.ext4", "is_root_device": false}}],
 "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}}],
 "vsock": {{"guest_cid": 3, "uds_path": "/tmp/vpci.sock"}}, "entropy": {{}}}}
EOF
sietool tcp-recv 5001 /tmp/from_guest.bin & recv=$!
sietool uds-echo /tmp/vpci.sock_5000 & echo_pid=$!
sie --no-api --config-file /tmp/vpci.json --enable-pci > /tmp/console 2>&1 & pid=$!
i=0
until [ -e /sys/class/net/tap0 ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
ip addr add 172.16.0.1/24 dev tap0; ip link set tap0 up
wait $pid; status=$?
cat /tmp/console
i=0; while kill -0 $recv 2>/dev/null && [ $i -lt 50 ]; do i=$((i+1)); sleep 0.1; done
kill $recv 2>/dev/null
echo "@@L2 RESULT host_received_sha=$(sha256sum /tmp/from_guest.bin | cut -c1-64)"
kill $echo_pid 2>/dev/null
exit $status"#,
            pci_boot_args("virtio_pci")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4 failover net_failover virtio_net virtio-rng vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do insmod /modules/$m.ko; done
for d in /sys/bus/pci/devices/*; do
  id="$(cat $d/vendor):$(cat $d/device)"
  drv=$(basename "$(readlink $d/driver)")
  echo "  pci: $(basename $d) $id $(cat $d/class) $drv"
  case $id in
    0x1af4:0x1042) echo "@@L2 RESULT blk_pci=$drv";;
    0x1af4:0x1041) echo "@@L2 RESULT net_pci=$drv";;
    0x1af4:0x1053) echo "@@L2 RESULT vsock_pci=$drv";;
    0x1af4:0x1044) echo "@@L2 RESULT rng_pci=$drv";;
  esac
done
echo "@@L2 RESULT hwrng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "@@L2 RESULT hwrng_bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)"
echo "@@L2 RESULT vsock_asked=$(sietool vsock-ask 2 5000 over-pci)"
mkdir -p /mnt
mount -t ext4 /dev/vda /mnt && echo "@@L2 RESULT guest_sha=$(sha256sum /mnt/data.bin | cut -c1-64)"
umount /mnt
ip link set lo up
ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up
ping -c 3 -w 20 172.16.0.1 >/dev/null && echo "@@L2 RESULT ping=ok"
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=4 2>/dev/null
echo "@@L2 RESULT guest_sent_sha=$(sha256sum /tmp/tx.bin | cut -c1-64)"
sietool tcp-send 172.16.0.1 5001 /tmp/tx.bin
grep -E 'virtio|MSI' /proc/interrupts | sed 's/^/  irq: /'
echo "@@L2 RESULT msi_virtio_lines=$(grep 'PCI-MSI' /proc/interrupts | grep -c virtio)"
echo "@@L2 RESULT req_irqs=$(grep 'PCI-MSI' /proc/interrupts | awk '/virtio.-req/ {n += $2} END {print n + 0}')"
echo "@@L2 RESULT input_irqs=$(grep 'PCI-MSI' /proc/interrupts | awk '/virtio.-input/ {n += $2} END {print n + 0}')"
echo "@@L2 RESULT ioapic_virtio=$(grep 'IO-APIC' /proc/interrupts | grep -c virtio)""#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let host = run.result("host_sha").ok_or("no host checksum")?;
            let sent = run.result("guest_sent_sha").ok_or("no guest_sent_sha")?;
            for (key, want) in [
                ("blk_pci", "virtio-pci"),
                ("net_pci", "virtio-pci"),
                ("vsock_pci", "virtio-pci"),
                ("rng_pci", "virtio-pci"),
                ("hwrng", "virtio_rng.0"),
                ("hwrng_bytes", "64"),
                ("vsock_asked", "over-pci"),
                ("guest_sha", host.as_str()),
                ("ping", "ok"),
                ("host_received_sha", sent.as_str()),
                ("ioapic_virtio", "0"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            for key in ["msi_virtio_lines", "req_irqs", "input_irqs"] {
                let count: u64 = run
                    .result(key)
                    .and_then(|v| v.parse().ok())
                    .ok_or(format!("no {key}"))?;
                if count == 0 {
                    return Err(format!(
                        "{key} is 0: no virtio interrupt arrived as PCI-MSI"
                    ));
                }
            }
            Ok(())
        },
    }
}

/// Hotplug as a Firecracker client does it: a stock Debian L2 started
/// with `--enable-pci` and the API socket, one boot drive (/dev/vda); once
/// L2 has booted, `PUT /drives/scratch` through the socket adds the rig's
/// ext4 disk. Linux's acpiphp hears of the new slot from the ACPI event
/// device, binds virtio-pci to the new 1af4:1042 and /dev/vdb appears,
/// holding the data the host wrote (its checksum matches); `PUT
/// /network-interfaces/eth9` adds a 1af4:1041 whose interface has the MAC
/// asked for. Then `DELETE
/// /drives/scratch`: acpiphp unbinds and removes it, runs `_EJ0`, the
/// answer comes, and /dev/vdb and the second 1af4:1042 are gone; the
/// interface goes the same way.
pub(crate) fn pci_hotplug() -> Case {
    Case {
        name: "pci_hotplug",
        l1_command: format!(
            r#"cp "$GUEST/disk.ext4" /tmp/hp-scratch.ext4
dd if=/dev/zero of=/tmp/hp-boot.img bs=1M count=1 2>/dev/null
echo "@@L2 RESULT host_sha=$(cat "$GUEST/data.sha256")"
cat > /tmp/hp.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}},
 "drives": [{{"drive_id": "boot", "path_on_host": "/tmp/hp-boot.img", "is_root_device": false}}]}}
EOF
sie --api-sock /tmp/hp.sock --config-file /tmp/hp.json --enable-pci > /tmp/console 2>&1 & pid=$!
i=0
until grep -q "plug=now" /tmp/console; do i=$((i+1)); [ $i -gt 1800 ] && break; sleep 0.1; done
sie ctl --sock /tmp/hp.sock request PUT /drives/scratch \
  '{{"drive_id": "scratch", "path_on_host": "/tmp/hp-scratch.ext4", "is_root_device": false}}' \
  && echo "@@L2 RESULT put=yes"
sie ctl --sock /tmp/hp.sock request PUT /network-interfaces/eth9 \
  '{{"iface_id": "eth9", "host_dev_name": "tap9", "guest_mac": "06:00:ac:10:00:09"}}' \
  && echo "@@L2 RESULT put_net=yes"
i=0
until grep -q "unplug=now" /tmp/console; do i=$((i+1)); [ $i -gt 1800 ] && break; sleep 0.1; done
sie ctl --sock /tmp/hp.sock request DELETE /drives/scratch && echo "@@L2 RESULT deleted=yes"
sie ctl --sock /tmp/hp.sock request DELETE /network-interfaces/eth9 && echo "@@L2 RESULT deleted_net=yes"
wait $pid; status=$?
cat /tmp/console
exit $status"#,
            pci_boot_args("pci_hotplug")
        ),
        l2_script: Some(
            r#"for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 mbcache jbd2 crc32c_generic ext4 failover net_failover virtio_net; do insmod /modules/$m.ko; done
echo "@@L2 RESULT before=$(ls /sys/block | grep -c vd)"
echo "@@L2 RESULT plug=now"
i=0
until [ -e /dev/vdb ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
i=0
until grep -qx 06:00:ac:10:00:09 /sys/class/net/*/address 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "@@L2 RESULT nic=$(cat /sys/class/net/*/address | grep -c 06:00:ac:10:00:09)"
echo "@@L2 RESULT net_pci=$(cat /sys/bus/pci/devices/*/device | grep -c 0x1041)"
for d in /sys/bus/pci/devices/*; do
  echo "  pci: $(basename $d) $(cat $d/vendor):$(cat $d/device) $(basename "$(readlink $d/driver)")"
done
echo "@@L2 RESULT blk_pci=$(cat /sys/bus/pci/devices/*/device | grep -c 0x1042)"
echo "@@L2 RESULT after=$(ls /sys/block | grep -c vd)"
mkdir -p /mnt
mount -t ext4 -o ro /dev/vdb /mnt && echo "@@L2 RESULT guest_sha=$(sha256sum /mnt/data.bin | cut -c1-64)"
umount /mnt
echo "@@L2 RESULT unplug=now"
i=0
while [ -e /dev/vdb ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "@@L2 RESULT gone=$(ls /sys/block | grep -c vd)"
echo "@@L2 RESULT blk_pci_left=$(cat /sys/bus/pci/devices/*/device | grep -c 0x1042)"
i=0
while grep -qx 06:00:ac:10:00:09 /sys/class/net/*/address 2>/dev/null; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
echo "@@L2 RESULT nic_left=$(cat /sys/class/net/*/address | grep -c 06:00:ac:10:00:09)"
echo "@@L2 RESULT net_pci_left=$(cat /sys/bus/pci/devices/*/device | grep -c 0x1041)"
dmesg | grep -iE 'acpiphp|virtio|pci 0000:00:0' | tail -20 | sed 's/^/  dmesg: /'"#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let host = run.result("host_sha").ok_or("no host checksum")?;
            for (key, want) in [
                ("put", "yes"),
                ("before", "1"),
                ("blk_pci", "2"),
                ("after", "2"),
                ("guest_sha", host.as_str()),
                ("deleted", "yes"),
                ("gone", "1"),
                ("blk_pci_left", "1"),
                ("put_net", "yes"),
                ("nic", "1"),
                ("net_pci", "1"),
                ("deleted_net", "yes"),
                ("nic_left", "0"),
                ("net_pci_left", "0"),
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            Ok(())
        },
    }
}
