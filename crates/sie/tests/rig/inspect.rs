//! Looking inside a guest: a console attached half-way through a boot, and
//! the core a panicking kernel leaves with `--dump-on-panic`.

use super::*;

/// The Debian guest boots with its console on a socket and nobody
/// attached; `sie ctl console` attaches a few seconds in, gets the boot log
/// from its first line (the kernel's banner, written long before), and
/// types a line the guest's script reads and answers.
pub(crate) fn console_attach_later() -> Case {
    Case {
        name: "inspect_console",
        l1_command: format!(
            r#"rm -f /tmp/console.sock
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{}" \
    --console-socket /tmp/console.sock --console-buffer-bytes 1048576 > /tmp/stdout 2>&1 &
pid=$!
i=0
until [ -S /tmp/console.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
sleep 3
# sie.real: `sie ctl` runs under a 30 s deadline, shorter than this boot.
(while :; do echo hello; sleep 2; done) | sie.real ctl console /tmp/console.sock > /tmp/attached 2>&1
wait $pid
status=$?
echo "@@L2 RESULT stdout_bytes=$(wc -c < /tmp/stdout)"
cat /tmp/attached
exit $status"#,
            // Not quiet: the banner and the early boot lines are the point.
            sie_e2e::l2_boot_args("inspect_console").replace(" quiet", "")
        ),
        // Bytes typed before the guest's serial driver starts are dropped
        // by its probe (as on a real UART): the first whole "hello" counts.
        l2_script: Some(
            r#"while read -r line; do [ "$line" = hello ] && break; done; echo "@@L2 RESULT typed=$line""#,
        ),
        check: |run| {
            status_0_and(run, "typed", "hello")?;
            if !run.output.contains("Linux version") {
                return Err("the attached console did not replay the boot from its start".into());
            }
            if !run.output.contains("detached") && !run.output.contains("console was closed") {
                return Err("sie ctl console did not report how it left".into());
            }
            match run.result("stdout_bytes").as_deref() {
                Some("0") => Ok(()),
                other => Err(format!("the guest's output also went to stdout: {other:?}")),
            }
        },
    }
}

/// Offset of the first vCPU's rip in a core of a VM with one RAM region:
/// the notes follow the ELF header (64) and two program headers (2 × 56);
/// the first note's header (12) and name (8) come before its
/// `elf_prstatus`, whose `pr_reg` starts at 112 and holds rip in slot 16.
const CORE_RIP_OFFSET: u32 = 64 + 2 * 56 + 12 + 8 + 112 + 16 * 8;

/// A Debian kernel that panics (sysrq `c`) with pvpanic loaded: sie exits
/// with the panic status and leaves an ELF core in `--dump-on-panic`'s
/// directory, whose `NT_PRSTATUS` rip lies in the kernel's panic path: in
/// `iowrite8`, through which the pvpanic driver's panic notifier writes
/// the port (its address read from the guest's own `/proc/kallsyms`;
/// `nokaslr` keeps it where it was when the core was taken).
pub(crate) fn panic_core() -> Case {
    Case {
        name: "inspect_panic_core",
        l1_command: format!(
            r#"rm -rf /tmp/cores; mkdir -p /tmp/cores
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{} nokaslr" \
    --dump-on-panic /tmp/cores
status=$?
for f in /tmp/cores/*.core; do
  [ -e "$f" ] || continue
  echo "@@L2 RESULT core_magic=$(od -A n -t x1 -N 4 "$f" | tr -d ' \n')"
  echo "@@L2 RESULT core_rip=$(od -A n -t x8 -j {CORE_RIP_OFFSET} -N 8 "$f" | tr -d ' \n')"
done
exit $status"#,
            sie_e2e::l2_boot_args("inspect_panic_core")
        ),
        l2_script: Some(
            "insmod /modules/pvpanic.ko; insmod /modules/pvpanic-mmio.ko; \
             echo \"@@L2 RESULT iowrite8=$(grep ' iowrite8$' /proc/kallsyms | cut -d' ' -f1)\"; \
             echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger",
        ),
        check: |run| {
            run.expect_status(4)?;
            if !run.output.contains("its core is /tmp/cores/") {
                return Err("sie did not say where the core is".into());
            }
            match run.result("core_magic").as_deref() {
                Some("7f454c46") => {}
                other => return Err(format!("the core is not ELF: {other:?}")),
            }
            let rip = run
                .result("core_rip")
                .and_then(|text| u64::from_str_radix(&text, 16).ok())
                .ok_or("no rip read from the core")?;
            let iowrite8 = run
                .result("iowrite8")
                .and_then(|text| u64::from_str_radix(&text, 16).ok())
                .filter(|&address| address != 0)
                .ok_or("the guest did not show iowrite8's address")?;
            // Inside iowrite8, a few instructions long.
            match rip.checked_sub(iowrite8) {
                Some(offset) if offset < 0x100 => Ok(()),
                _ => Err(format!(
                    "rip {rip:#x} is not in iowrite8 ({iowrite8:#x}), the panic path's port write"
                )),
            }
        },
    }
}
