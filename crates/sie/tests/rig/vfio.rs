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
    vfio_case_of(name, "EDU", extra, l2, after)
}

/// A case passing the device L1's /init exported as `$var` (`EDU`, `VRNG`).
fn vfio_case_of(name: &'static str, var: &str, extra: &str, l2: &'static str, after: &str) -> Case {
    let missing = var.to_lowercase();
    Case {
        name,
        l1_command: format!(
            r#"[ -n "${var}" ] || {{ echo "@@L2 RESULT {missing}_in_l1=missing"; exit 1; }}
dmesg -c > /dev/null
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --memory 128 \
  --cmdline "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nomux i8042.dumbkbd quiet case={name}" \
  --vfio "${var}" {extra}
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

/// L2's script for `vfio_msix`: loads virtio-PCI and virtio-rng, finds
/// the passed-through 1af4:1044, reads its MSI-X capability back from
/// config space (sie's emulation), the kinds of its vectors
/// (`msi_irqs`), reads /dev/hwrng with the input vector's count before and
/// after; then unbinds the driver (MSI-X off), binds it again (MSI-X on
/// anew) and reads again.
const VFIO_MSIX_L2: &str = r#"DEV=
for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor)" = 0x1af4 ] && [ "$(cat $d/device)" = 0x1044 ] && DEV=$d
done
echo "@@L2 RESULT rng_seen=$([ -n "$DEV" ] && echo yes || echo no)"
[ -n "$DEV" ] || exit 0
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio-rng; do insmod /modules/$m.ko; done
# The MSI-X capability's message control, from config space (sie's copy).
msix_control() {
  conf=$(od -An -tu1 -v $DEV/config | xargs)
  byte() { echo $conf | cut -d' ' -f$(( $1 + 1 )); }
  p=$(byte 52); n=0
  while [ "$p" -ne 0 ] && [ $n -lt 48 ]; do
    [ "$(byte $p)" -eq 17 ] && break
    p=$(byte $((p + 1))); n=$((n + 1))
  done
  [ "$p" -ne 0 ] || { echo none; return; }
  control=$(( $(byte $((p + 2))) | $(byte $((p + 3))) << 8 ))
  printf "0x%04x" $((control & 0xc000))
  table_size=$(( (control & 0x7ff) + 1 ))
}
input() { # the count of virtioN-input (one vCPU)
  v=$(basename $DEV/virtio*)
  awk -v name="$v-input" '$NF == name {print $2}' /proc/interrupts
}
readrng() { # readrng BYTES KEY: bytes read from /dev/hwrng, distinct values
  timeout 30 head -c $1 /dev/hwrng > /tmp/rng.bin
  echo "@@L2 RESULT $2_bytes=$(wc -c < /tmp/rng.bin)"
  echo "@@L2 RESULT $2_distinct=$(od -An -tx1 -v /tmp/rng.bin | tr -s ' ' '\n' | grep . | sort -u | wc -l)"
}
bdf=$(basename $DEV)
echo "@@L2 RESULT rng_driver=$(basename "$(readlink $DEV/driver)")"
msix_control > /dev/null
echo "@@L2 RESULT rng_msix_table_size=$table_size"
echo "@@L2 RESULT rng_msix_control=$(msix_control)"
echo "@@L2 RESULT rng_vector_kinds=$(cat $DEV/msi_irqs/* 2>/dev/null | sort -u | xargs)"
echo "@@L2 RESULT rng_vectors=$(ls $DEV/msi_irqs 2>/dev/null | wc -l)"
echo "@@L2 RESULT hwrng=$(cat /sys/class/misc/hw_random/rng_current)"
grep -E 'virtio|MSI' /proc/interrupts | sed 's/^/  irq: /'
before=$(input)
readrng 4096 rng
after=$(input)
echo "@@L2 RESULT input_irqs=${before:-none}..${after:-none}"
echo "@@L2 RESULT input_irqs_grew=$([ -n "$after" ] && [ "${after:-0}" -gt "${before:-0}" ] && echo yes || echo no)"
echo "@@L2 RESULT ioapic_virtio=$(grep 'IO-APIC' /proc/interrupts | grep -c virtio)"
grep -E 'virtio|MSI' /proc/interrupts | sed 's/^/  irq: /'
# Unbound: Linux turns MSI-X off (sie takes the vectors from VFIO and
# hands INTx back); bound again: MSI-X on anew.
echo $bdf > /sys/bus/pci/drivers/virtio-pci/unbind
echo "@@L2 RESULT unbound_msix_control=$(msix_control)"
echo "@@L2 RESULT unbound_hwrng=$(cat /sys/class/misc/hw_random/rng_current)"
echo $bdf > /sys/bus/pci/drivers/virtio-pci/bind
echo "@@L2 RESULT rebound_driver=$(basename "$(readlink $DEV/driver)")"
echo "@@L2 RESULT rebound_msix_control=$(msix_control)"
echo "@@L2 RESULT rebound_hwrng=$(cat /sys/class/misc/hw_random/rng_current | cut -d. -f1)"
before=$(input)
readrng 1024 rebound
after=$(input)
echo "@@L2 RESULT rebound_input_irqs=${before:-none}..${after:-none}"
echo "@@L2 RESULT rebound_input_irqs_grew=$([ -n "$after" ] && [ "${after:-0}" -gt "${before:-0}" ] && echo yes || echo no)"
grep -E 'virtio|MSI' /proc/interrupts | sed 's/^/  irq: /'
echo "@@L2 RESULT rng_done=yes""#;

/// MSI-X end to end: L1's modern virtio-rng (1af4:1044, `$VRNG`, bound to
/// vfio-pci) passed to L2, whose stock virtio-pci driver enables MSI-X
/// (Linux writes the table sie emulates; sie routes each vector in KVM and
/// hands the irqfds to VFIO) and whose virtio-rng returns random bytes
/// over a virtqueue, the device's DMA confined to L2 by L1's IOMMU. Each
/// request completes with an interrupt on the input vector, whose count
/// grows in L2's /proc/interrupts (PCI-MSI, never the I/O APIC); L1's VFIO
/// MSI-X interrupts for the device are sampled while sie runs. The driver
/// unbound and bound again turns MSI-X off and on, and the device works
/// after. sie exits 0 when L2 reboots.
pub(crate) fn vfio_msix() -> Case {
    let mut case = vfio_case_of(
        "vfio_msix",
        "VRNG",
        "",
        VFIO_MSIX_L2,
        r#"kill $sampler 2>/dev/null
tail -2 /tmp/vfio-msix-irqs
# Per IRQ (number and name), its highest sampled count, summed.
echo "@@L2 RESULT l1_vfio_msix_irqs=$(awk '{s=0; for (i=2; i<=NF && $i ~ /^[0-9]+$/; i++) s+=$i; k=$1 $NF; if (s>t[k]) t[k]=s} END {m=0; for (k in t) m+=t[k]; print m}' /tmp/vfio-msix-irqs)""#,
    );
    case.l1_command = format!(
        "(while :; do grep vfio-msix /proc/interrupts >> /tmp/vfio-msix-irqs; sleep 0.2; done) &\n\
         sampler=$!\n{}",
        case.l1_command
    );
    case.check = |run| {
        run.expect_status(0)?;
        expect(run, "rng_seen", "yes")?;
        expect(run, "rng_driver", "virtio-pci")?;
        // Enabled, function not masked: sie's emulated control bits.
        expect(run, "rng_msix_control", "0x8000")?;
        expect(run, "rng_vector_kinds", "msix")?;
        // A vector for the configuration change and one for the queue.
        at_least(run, "rng_msix_table_size", 2)?;
        at_least(run, "rng_vectors", 2)?;
        expect(run, "hwrng", "virtio_rng.0")?;
        expect(run, "rng_bytes", "4096")?;
        at_least(run, "rng_distinct", 200)?;
        expect(run, "input_irqs_grew", "yes")?;
        expect(run, "ioapic_virtio", "0")?;
        expect(run, "unbound_msix_control", "0x0000")?;
        expect(run, "unbound_hwrng", "none")?;
        expect(run, "rebound_driver", "virtio-pci")?;
        expect(run, "rebound_msix_control", "0x8000")?;
        expect(run, "rebound_hwrng", "virtio_rng")?;
        expect(run, "rebound_bytes", "1024")?;
        at_least(run, "rebound_distinct", 150)?;
        expect(run, "rebound_input_irqs_grew", "yes")?;
        expect(run, "rng_done", "yes")?;
        // sie handed the vectors to VFIO each time without a complaint (a
        // failed VFIO_DEVICE_SET_IRQS is logged as a warning).
        if let Some(line) = run
            .output
            .lines()
            .find(|line| line.contains("WARN") && line.contains("vfio"))
        {
            return Err(format!("sie warned: {line}"));
        }
        // L1 took the device's MSI-X interrupts on the VFIO vectors sie
        // asked for (a sampled count: at least one seen).
        at_least(run, "l1_vfio_msix_irqs", 1)
    };
    case
}

fn at_least(run: &CaseRun, key: &str, min: u64) -> Result<(), String> {
    match run.result(key).and_then(|n| n.parse::<u64>().ok()) {
        Some(n) if n >= min => Ok(()),
        other => Err(format!("{key}: got {other:?}, want at least {min}")),
    }
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
