//! The virtio console (`--console virtio`): /init's output arrives
//! through hvc0 (the kernel's log from before the module loaded stays in
//! its log buffer), input typed on stdin reaches the
//! guest, and COM1 is left nearly untouched. The same boot on the serial
//! console is measured beside it (figures only, as `@@NOTE` lines).

use super::*;

/// Column `column` (0: the name) of `row`'s line in a `--stats` report:
/// in the `devices` table 2 is a device's writes.
fn stats_column(report: &str, row: &str, column: usize) -> Option<u64> {
    report
        .lines()
        .find(|line| line.split_whitespace().next() == Some(row))
        .and_then(|line| line.split_whitespace().nth(column))
        .and_then(|n| n.parse().ok())
}

/// The L1 script: the serial boot (its stats kept aside), then the virtio
/// boot with "hello" typed on stdin every second, its whole output shown.
fn l1_command() -> String {
    // Not quiet: the kernel log is what the serial console pays for. No
    // console=: sie names hvc0 itself.
    let virtio_args = sie_e2e::l2_boot_args("console_virtio")
        .replace(" quiet", "")
        .replace("console=ttyS0 ", "");
    let serial_args = sie_e2e::l2_boot_args("console_virtio").replace(" quiet", "");
    format!(
        r#"sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{serial_args}" \
  --stats > /tmp/serial.out 2>&1 < /dev/null
echo "@@L2 RESULT serial_status=$?"
(while :; do echo hello; sleep 1; done) | sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" \
  --cmdline "{virtio_args}" --console virtio --stats > /tmp/virtio.out 2>&1
status=$?
col() {{ awk -v row="$2" -v n="$3" '$1 == row {{ print $n; exit }}' "$1"; }}
echo "@@NOTE console exits: serial boot com1 writes=$(col /tmp/serial.out com1 3)" \
  "total exits=$(col /tmp/serial.out total 2); virtio boot com1 writes=$(col /tmp/virtio.out com1 3)" \
  "total exits=$(col /tmp/virtio.out total 2)"
echo "@@SERIAL-STATS"
sed -n '/sie exit statistics/,$p' /tmp/serial.out
echo "@@VIRTIO-OUTPUT"
cat /tmp/virtio.out
exit $status"#
    )
}

/// Boots the Debian L2 on the virtio console and on the serial console.
pub(crate) fn console_virtio() -> Case {
    Case {
        name: "console_virtio",
        l1_command: l1_command(),
        l2_script: Some(
            r#"echo "@@L2 RESULT console_active=$(cat /sys/class/tty/console/active)"
echo "@@L2 RESULT dmesg_first=$(dmesg | head -1 | cut -c1-100)"
if grep -q console=hvc0 /proc/cmdline; then
  while read -r line; do [ "$line" = hello ] && break; done
  echo "@@L2 RESULT typed=$line"
fi"#,
        ),
        check: |run| {
            run.expect_status(0)?;
            let (serial, virtio) = run
                .output
                .split_once("@@VIRTIO-OUTPUT")
                .ok_or("no virtio boot output")?;
            let serial = serial
                .split_once("@@SERIAL-STATS")
                .map(|(_, stats)| stats)
                .ok_or("no serial boot statistics")?;
            if run.result("serial_status").as_deref() != Some("0") {
                return Err(format!(
                    "the serial boot exited {:?}",
                    run.result("serial_status")
                ));
            }
            // The guest's /init markers and results came through hvc0:
            // the serial boot's are not in this part of the output.
            for marker in ["@@L2 console_virtio BEGIN", "@@L2 console_virtio END"] {
                if !virtio.contains(marker) {
                    return Err(format!("{marker:?} did not arrive through hvc0"));
                }
            }
            let active = virtio
                .lines()
                .find_map(|l| l.trim().strip_prefix("@@L2 RESULT console_active="))
                .map(str::trim);
            if active != Some("hvc0") {
                return Err(format!(
                    "the guest's active console is {active:?}, not hvc0"
                ));
            }
            status_0_and(run, "typed", "hello")?;
            // The kernel's log from before virtio_console loaded is not
            // on hvc0 (hvc's console registered early, with no backend to
            // write to, and printk does not replay it later), but it is
            // kept: the guest's dmesg starts with the banner.
            match run.result("dmesg_first") {
                Some(line) if line.contains("Linux version") => {}
                other => {
                    return Err(format!(
                        "the guest's kernel log does not start with its banner: {other:?}"
                    ));
                }
            }
            // The figures are the L1 script's `@@NOTE console exits` line.
            let com1 = |report: &str| stats_column(report, "com1", 2).unwrap_or(0);
            let (serial_com1, virtio_com1) = (com1(serial), com1(virtio));
            if !virtio.contains("virtio-console") {
                return Err("no virtio-console row in --stats".to_string());
            }
            // Linux probes and sets up the UART either way (a few dozen
            // register writes); the log's bytes are what must be gone.
            if virtio_com1 >= 1000 {
                return Err(format!(
                    "{virtio_com1} COM1 writes on the virtio console (serial boot: {serial_com1})"
                ));
            }
            Ok(())
        },
    }
}
