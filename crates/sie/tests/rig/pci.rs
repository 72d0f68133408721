//! PCI cases: a stock Debian guest started the way Firecracker clients
//! start Firecracker with `--enable-pci` (a config file, no API) finds the
//! PCI bus through ACPI alone (no `pci=` argument).

use super::*;

/// L2's kernel arguments for a PCI VM: the rig's usual ones without `pci=off`.
fn pci_boot_args(case: &str) -> String {
    sie_e2e::l2_boot_args(case).replace(" pci=off", "")
}

/// The host bridge on bus 0 as Linux sees it, the root bridge found
/// through ACPI (`PCI0`), the ECAM window from the MCFG accepted (reserved
/// by the DSDT's motherboard resource), and native PCIe control granted by
/// `_OSC`.
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
            ] {
                if run.result(key).as_deref() != Some(want) {
                    return Err(format!("{key}: got {:?}, want {want:?}", run.result(key)));
                }
            }
            Ok(())
        },
    }
}
