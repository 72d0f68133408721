//! Passthrough: QEMU's edu device (1234:11e8), bound to vfio-pci in L1
//! behind the emulated VT-d (`$EDU`), passed to L2 with `--vfio`; L2 drives
//! it with `edutool` through sysfs (docs/vfio.md, tests/README.md).

use super::*;

/// L2's command line: no `pci=off` (the device is on PCI), 128 MiB of RAM
/// so every page is below edu's 28-bit DMA limit.
fn vfio_case(name: &'static str, l2: &'static str, after: &str) -> Case {
    vfio_case_with(name, "", l2, after)
}

fn vfio_case_with(name: &'static str, extra: &str, l2: &'static str, after: &str) -> Case {
    Case {
        name,
        l1_command: format!(
            r#"[ -n "$EDU" ] || {{ echo "@@L2 RESULT edu_in_l1=missing"; exit 1; }}
dmesg -c > /dev/null
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --memory 128 \
  --cmdline "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet case={name}" \
  --vfio "$EDU" {extra}
status=$?
{after}
exit $status"#
        ),
        l2_script: Some(l2),
        check: |run| {
            run.expect_status(0)?;
            Ok(())
        },
    }
}

fn expect(run: &CaseRun, key: &str, want: &str) -> Result<(), String> {
    match run.result(key) {
        Some(value) if value == want => Ok(()),
        other => Err(format!("{key}: got {other:?}, want {want:?}")),
    }
}

/// L2 sees the device, reads its id register, has it compute 10!, runs a
/// DMA transfer both ways between L2 memory and the device, checked byte
/// for byte, and receives five of its interrupts (INTx, counted by
/// uio_pci_generic and in /proc/interrupts); the BAR accesses never exit.
pub(crate) fn vfio_edu() -> Case {
    let mut case = vfio_case_with(
        "vfio_edu",
        "--stats",
        r#"DEV=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ] && DEV=$d
done
echo "@@L2 RESULT edu_seen=$([ -n "$DEV" ] && echo yes || echo no)"
if [ -n "$DEV" ]; then
  edutool id $DEV
  edutool fact $DEV 10
  edutool dma $DEV 4000
  insmod /modules/uio.ko; insmod /modules/uio_pci_generic.ko
  echo "1234 11e8" > /sys/bus/pci/drivers/uio_pci_generic/new_id
  uio=$(ls /sys/bus/pci/drivers/uio_pci_generic/*/uio 2>/dev/null | head -1)
  echo "@@L2 RESULT edu_uio=${uio:-none}"
  [ -n "$uio" ] && edutool irq $DEV $uio 5
  echo "@@L2 RESULT edu_proc_interrupts=$(awk '/uio_pci_generic/ {print $2}' /proc/interrupts)"
fi"#,
        "",
    );
    case.check = |run| {
        run.expect_status(0)?;
        expect(run, "edu_seen", "yes")?;
        expect(run, "edu_id", "0x010000ed")?;
        expect(run, "edu_liveness", "0xedcba987")?;
        expect(run, "edu_factorial", "3628800")?;
        expect(run, "edu_dma_same", "4000/4000")?;
        expect(run, "edu_dma_past_end_untouched", "yes")?;
        // Five interrupts raised through register 0x60 arrived over INTx.
        expect(run, "edu_irqs", "5")?;
        expect(run, "edu_uio_events", "5")?;
        expect(run, "edu_proc_interrupts", "5")?;
        // BAR 0 is a memory slot: the hundreds of register accesses above
        // never exit to sie (trapped, they would count in the 32-bit BAR
        // window's row of --stats).
        let trapped: u64 = run
            .output
            .lines()
            .find(|line| line.trim_start().starts_with("pci-mmio32 "))
            .map(|line| {
                line.split_whitespace()
                    .skip(1)
                    .take(2)
                    .filter_map(|n| n.parse::<u64>().ok())
                    .sum()
            })
            .unwrap_or(0);
        if trapped > 20 {
            return Err(format!(
                "{trapped} edu BAR accesses exited to sie: BAR 0 is not a memory slot"
            ));
        }
        if !run.output.contains("sie exit statistics") {
            return Err("no --stats report".to_string());
        }
        Ok(())
    };
    case
}

/// The vector L2 programs into edu's MSI capability: in the device range
/// (0x20..0xec) but far above the lowest-first vectors Linux hands out, so
/// no IRQ of L2 has it and the kernel logs each arrival as unhandled.
const MSI_VECTOR: u32 = 0xd3;

/// L2 programs edu's MSI capability from userspace (sysfs `config`: address
/// 0xfee00000, data `MSI_VECTOR`, enable) and raises five interrupts: sie
/// turns the guest's write into VFIO_DEVICE_SET_IRQS (MSI, the vector's
/// irqfd) and a KVM MSI route, so each arrives on that vector in L2, whose
/// kernel logs it as "No irq handler for vector" (no driver owns it). The
/// capability reads back as written (sie's emulation), and INTx stays quiet
/// meanwhile (uio_pci_generic, bound, counts nothing). MSI disabled again:
/// sie hands INTx back to VFIO, the next raise comes as INTx (uio counts
/// it) and not on the vector.
pub(crate) fn vfio_msi() -> Case {
    let mut case = vfio_case(
        "vfio_msi",
        r#"DEV=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ] && DEV=$d
done
echo "@@L2 RESULT edu_seen=$([ -n "$DEV" ] && echo yes || echo no)"
if [ -n "$DEV" ]; then
  insmod /modules/uio.ko; insmod /modules/uio_pci_generic.ko
  echo "1234 11e8" > /sys/bus/pci/drivers/uio_pci_generic/new_id
  uio=$(ls /sys/bus/pci/drivers/uio_pci_generic/*/uio 2>/dev/null | head -1)
  echo "@@L2 RESULT edu_uio=${uio:-none}"
  intx() { awk '/uio_pci_generic/ {print $2}' /proc/interrupts; }
  unhandled() { dmesg | grep -c "\.211 No irq handler for vector"; }
  before=$(intx)
  edutool msi $DEV 211 5
  echo "@@L2 RESULT intx_while_msi=$(( $(intx) - before ))"
  echo "@@L2 RESULT vector_messages=$(unhandled)"
  dmesg | grep "No irq handler for vector" | tail -2
  sleep 1 # L1's sampler of /proc/interrupts sees the last count before MSI goes
  [ -n "$uio" ] && edutool msi-off $DEV 211 $uio
  echo "@@L2 RESULT intx_after_off=$(( $(intx) - before ))"
  echo "@@L2 RESULT vector_messages_after_off=$(unhandled)"
fi"#,
        r#"kill $sampler 2>/dev/null
tail -1 /tmp/vfio-msi-irqs
echo "@@L2 RESULT l1_vfio_msi_irqs=$(awk '{s=0; for (i=2; i<=NF && $i ~ /^[0-9]+$/; i++) s+=$i; if (s>m) m=s} END {print m+0}' /tmp/vfio-msi-irqs)""#,
    );
    // L1's side of the path: while sie runs, VFIO's MSI interrupt for edu
    // ("vfio-msi[0](BDF)", requested when sie hands VFIO the vector's
    // irqfd, freed when MSI goes off) is sampled from /proc/interrupts.
    case.l1_command = format!(
        "(while :; do grep vfio-msi /proc/interrupts >> /tmp/vfio-msi-irqs; sleep 0.2; done) &\n\
         sampler=$!\n{}",
        case.l1_command
    );
    case.check = |run| {
        run.expect_status(0)?;
        expect(run, "edu_seen", "yes")?;
        // sie's emulated capability holds what the guest wrote: 64-bit
        // address, the data, and the enable bit next to the 64-bit flag.
        expect(run, "edu_msi_address", "0xfee00000")?;
        expect(run, "edu_msi_data", &format!("{MSI_VECTOR:#06x}"))?;
        expect(run, "edu_msi_control", "0x0081")?;
        // Each raise arrived on the vector (the kernel's message for it,
        // awaited one at a time; 5 is under printk's burst of 10).
        expect(run, "edu_msi_delivered", "5/5")?;
        expect(run, "vector_messages", "5")?;
        expect(run, "intx_while_msi", "0")?;
        // MSI off: the raise came as INTx, and nothing more on the vector.
        expect(run, "edu_msi_control_off", "0x0080")?;
        expect(run, "edu_intx_after_msi_off", "1")?;
        expect(run, "intx_after_off", "1")?;
        expect(run, "edu_msi_off_vector_messages", "0")?;
        expect(run, "vector_messages_after_off", "5")?;
        // L1 took edu's MSIs on the VFIO MSI interrupt sie asked for (a
        // sampled count: at least one seen, 5 when the last sample fell
        // after the last raise).
        match run
            .result("l1_vfio_msi_irqs")
            .and_then(|n| n.parse::<u32>().ok())
        {
            Some(n) if (1..=5).contains(&n) => Ok(()),
            other => Err(format!("L1's vfio-msi interrupts: {other:?}, want 1..=5")),
        }
    };
    case
}

/// L2 points edu's DMA engine at 192 MiB, outside its 128 MiB: the IOMMU in
/// L1 stops the write (a DMAR fault in L1's log naming that address) and L2
/// runs on.
pub(crate) fn vfio_dma_fault() -> Case {
    let mut case = vfio_case(
        "vfio_dma_fault",
        r#"DEV=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1234 ] && [ "$(cat $d/device)" = 0x11e8 ] && DEV=$d
done
echo "@@L2 RESULT edu_seen=$([ -n "$DEV" ] && echo yes || echo no)"
[ -n "$DEV" ] && edutool dma-to $DEV 0xc000000 256
echo "@@L2 RESULT after_fault=alive""#,
        r#"dmesg | grep -i dmar | tail -5
dmesg | grep -qi "DMAR.*fault addr 0xc000000" && echo "@@L2 RESULT l1_dmar_fault=yes""#,
    );
    case.check = |run| {
        run.expect_status(0)?;
        expect(run, "edu_seen", "yes")?;
        expect(run, "edu_dma_to_done", "yes")?;
        expect(run, "after_fault", "alive")?;
        expect(run, "l1_dmar_fault", "yes")
    };
    case
}

/// A device that cannot be passed is refused in one line that says why:
/// here, edu is taken from vfio-pci (bound to no driver) for the run.
pub(crate) fn vfio_refused() -> Case {
    Case {
        name: "vfio_refused",
        l1_command: r#"[ -n "$EDU" ] || exit 1
bdf=$(basename "$EDU")
echo "$bdf" > /sys/bus/pci/drivers/vfio-pci/unbind
sie run --kernel "$GUEST/vmlinux" --vfio "$EDU" > /tmp/refused 2>&1
status=$?
echo "$bdf" > /sys/bus/pci/drivers_probe
cat /tmp/refused
grep -q "bound to no driver, not vfio-pci" /tmp/refused && echo "@@L2 RESULT refusal=names_the_fix"
echo "@@L2 RESULT lines=$(grep -c . /tmp/refused)"
echo "@@L2 RESULT rebound=$(basename "$(readlink "$EDU/driver")")"
[ $status -eq 1 ]"#
            .to_string(),
        l2_script: None,
        check: |run| {
            run.expect_status(0)?;
            expect(run, "refusal", "names_the_fix")?;
            expect(run, "lines", "1")?;
            expect(run, "rebound", "vfio-pci")
        },
    }
}

/// A VM with edu passed through (config file `vfio` section, API mode):
/// `PUT /snapshot/create` on it, paused, is refused in one line, and the VM
/// resumes and finishes.
pub(crate) fn vfio_no_snapshot() -> Case {
    Case {
        name: "vfio_no_snapshot",
        l1_command: r#"[ -n "$EDU" ] || exit 1
cat > /tmp/vfio-vm.json <<JSON
{"boot-source": {"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet case=vfio_no_snapshot"},
 "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
 "vfio": [{"id": "edu", "path": "$EDU"}]}
JSON
sie --api-sock /tmp/vfio.sock --config-file /tmp/vfio-vm.json > /tmp/vfio-console 2>&1 &
pid=$!
i=0
until grep -q "waiting=yes" /tmp/vfio-console; do i=$((i+1)); [ $i -gt 900 ] && break; sleep 0.1; done
sie ctl --sock /tmp/vfio.sock config | grep -q '"vfio"' && echo "@@L2 RESULT config_shows_vfio=yes"
sie ctl --sock /tmp/vfio.sock pause
sie ctl --sock /tmp/vfio.sock snapshot create /tmp/vfio.snap /tmp/vfio.mem > /tmp/vfio-snap 2>&1
echo "@@L2 RESULT snapshot_status=$?"
cat /tmp/vfio-snap
grep -q "VM has a passed-through device (vfio): not snapshottable" /tmp/vfio-snap && echo "@@L2 RESULT refusal=one_line"
[ -e /tmp/vfio.snap ] || echo "@@L2 RESULT snapshot_file=absent"
sie ctl --sock /tmp/vfio.sock resume
wait $pid; status=$?
cat /tmp/vfio-console
exit $status"#
            .to_string(),
        l2_script: Some(
            r#"echo "@@L2 RESULT waiting=yes"
sleep 3
echo "@@L2 RESULT finished=yes""#,
        ),
        check: |run| {
            status_0_and(run, "finished", "yes")?;
            expect(run, "config_shows_vfio", "yes")?;
            expect(run, "refusal", "one_line")?;
            expect(run, "snapshot_file", "absent")?;
            match run.result("snapshot_status").as_deref() {
                Some("0") | None => Err("sie ctl snapshot create did not fail".to_string()),
                Some(_) => Ok(()),
            }
        },
    }
}
