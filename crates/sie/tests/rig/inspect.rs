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

/// A Debian kernel that panics (sysrq `c`) with pvpanic loaded: sie exits
/// with the panic status and leaves an ELF core in `--dump-on-panic`'s
/// directory, read the way a user reads one: `readelf -h -n` finds a core
/// with one `NT_PRSTATUS` note per vCPU, and `gdb -c` the first vCPU's rip
/// in the kernel's panic path: in `iowrite8`, through which the pvpanic
/// driver's panic notifier writes the port (its address read from the
/// guest's own `/proc/kallsyms`; `nokaslr` keeps it where it was when the
/// core was taken).
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
  readelf -h -n "$f" > /tmp/readelf.out 2>&1
  sed 's/^/readelf| /' /tmp/readelf.out
  echo "@@L2 RESULT core_type=$(sed -n 's/^ *Type: *\([A-Z]*\).*/\1/p' /tmp/readelf.out)"
  echo "@@L2 RESULT core_prstatus=$(grep -c NT_PRSTATUS /tmp/readelf.out)"
  timeout -k 5 60 gdb -nx -batch -c "$f" -ex 'info registers rip' > /tmp/gdb.out 2>&1
  sed 's/^/gdb| /' /tmp/gdb.out
  echo "@@L2 RESULT core_rip=$(sed -n 's/^rip *0x\([0-9a-f]*\) .*/\1/p' /tmp/gdb.out)"
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
            match run.result("core_type").as_deref() {
                Some("CORE") => {}
                other => return Err(format!("readelf does not see an ELF core: {other:?}")),
            }
            // One vCPU (the case's default): one NT_PRSTATUS note.
            match run.result("core_prstatus").as_deref() {
                Some("1") => {}
                other => return Err(format!("readelf -n counts {other:?} NT_PRSTATUS notes")),
            }
            let rip = run
                .result("core_rip")
                .and_then(|text| u64::from_str_radix(&text, 16).ok())
                .ok_or("gdb -c read no rip from the core")?;
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

/// The link-time base of the Debian kernel's text: where `nokaslr` leaves it.
const KERNEL_TEXT: &str = "0xffffffff81000000";

/// gdb (Debian's, in L1) on a Debian kernel booting under sie with
/// `--gdb-socket` and two vCPUs. Debian ships no System.map (the real one
/// is in the -dbg package), so the symbols are the kernel's own: a first
/// boot under `nokaslr` writes its `/proc/kallsyms` to a disk, and `sietool
/// kallsyms-elf` makes an ELF file of symbols of it for gdb's
/// `symbol-file` (the booted kernel prints its own kallsyms at the end,
/// and the check compares).
///
/// gdb, in batch mode, finds the guest stopped before its first
/// instruction; `continue` runs it and Ctrl-C (SIGINT to gdb) stops it
/// once L2's /init has printed its results and sleeps: every vCPU stopped (`info threads` lists
/// both), `bt` starts at the stopped pc in a kernel function it names (no
/// deeper frame is checked: without the kernel's unwind data gdb guesses
/// them), cr0, cr3, efer and gs_base are read by name
/// ([`check_system_registers`]), `jiffies_64` is read by its kernel
/// virtual address through the guest's page tables, `stepi` runs one
/// instruction;
/// a second `continue` and Ctrl-C later `jiffies_64` has grown; the last
/// `continue` lets the boot reach L2's /init, and gdb sees the VM exit.
///
/// Breakpoints and watchpoints are in `inspect_gdb_breakpoints`.
pub(crate) fn gdb_kernel() -> Case {
    let args = sie_e2e::l2_boot_args("inspect_gdb");
    let prelude = kallsyms_boot(&args);
    Case {
        name: "inspect_gdb",
        l1_command: format!(
            r#"{prelude}
SIE_RUN_TIMEOUT=240 sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} nokaslr" --vcpus 2 \
    --gdb-socket /tmp/gdb.sock > /tmp/sie.out 2>&1 &
pid=$!
i=0
until [ -S /tmp/gdb.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
timeout -k 5 200 gdb -nx -batch \
  -ex 'set pagination off' -ex 'set confirm off' -ex 'set architecture i386:x86-64' \
  -ex 'symbol-file /tmp/kernel.sym' \
  -ex 'printf "@@L2 RESULT gdb_kernel_init=%lx\n", (unsigned long)&kernel_init' \
  -ex 'target remote /tmp/gdb.sock' \
  -ex 'printf "@@L2 RESULT gdb_first_pc=%lx\n", (unsigned long)$pc' \
  -ex 'continue' \
  -ex 'printf "@@L2 RESULT gdb_stop_pc=%lx\n", (unsigned long)$pc' \
  -ex 'bt 3' \
  -ex 'info symbol $pc' \
  -ex 'info threads' \
  -ex 'printf "@@L2 RESULT gdb_cr0=%lx\n", (unsigned long)$cr0' \
  -ex 'printf "@@L2 RESULT gdb_cr3=%lx\n", (unsigned long)$cr3' \
  -ex 'printf "@@L2 RESULT gdb_efer=%lx\n", (unsigned long)$efer' \
  -ex 'printf "@@L2 RESULT gdb_gs_base=%lx\n", (unsigned long)$gs_base' \
  -ex 'printf "@@L2 RESULT gdb_jiffies_1=%lx\n", *(unsigned long *)'"$jiffies" \
  -ex 'printf "@@L2 RESULT gdb_stop_rcx=%lx\n", (unsigned long)$rcx' \
  -ex 'stepi' \
  -ex 'printf "@@L2 RESULT gdb_step_pc=%lx\n", (unsigned long)$pc' \
  -ex 'printf "@@L2 RESULT gdb_step_rcx=%lx\n", (unsigned long)$rcx' \
  -ex 'continue' \
  -ex 'printf "@@L2 RESULT gdb_jiffies_2=%lx\n", *(unsigned long *)'"$jiffies" \
  -ex 'continue' > /tmp/gdb.out 2>&1 &
gdb=$!
# Ctrl-C, twice, a few seconds after each of the first two `continue`s.
after() {{
  i=0
  until grep -q "$1" /tmp/gdb.out; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.2; done
}}
after gdb_first_pc
# Once L2's /init has printed its results it sleeps: both vCPUs are then in
# the kernel (a Ctrl-C while /init's programs run would stop one in user
# space, where no kernel symbol names the pc).
i=0
until grep -q 'init=ok' /tmp/sie.out; do i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.2; done
sleep 1; kill -INT $gdb
after gdb_step_pc; sleep 2; kill -INT $gdb
wait $gdb
echo "@@L2 RESULT gdb_status=$?"
wait $pid
status=$?
sed 's/^/gdb| /' /tmp/gdb.out
grep '^@@L2 RESULT' /tmp/gdb.out
cat /tmp/sie.out
exit $status"#
        ),
        l2_script: Some(KALLSYMS_L2),
        check: check_gdb_kernel,
    }
}

/// The first part of the gdb cases' L1 script: a boot under `nokaslr`
/// without gdb leaves the kernel's kallsyms on a disk (`/tmp/kallsyms`),
/// `$jiffies` is `jiffies_64`'s address, and `/tmp/kernel.sym` the text
/// symbols as an ELF file for gdb.
fn kallsyms_boot(args: &str) -> String {
    format!(
        r#"rm -f /tmp/gdb.sock /tmp/kallsyms.img
# A first boot, without gdb, leaves the kernel's kallsyms on a disk.
dd if=/dev/zero of=/tmp/kallsyms.img bs=1M count=16 2>/dev/null
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} nokaslr" \
    --disk /tmp/kallsyms.img,id=syms > /tmp/sie.syms 2>&1 || {{ cat /tmp/sie.syms; exit 9; }}
tr -d '\000' < /tmp/kallsyms.img > /tmp/kallsyms
jiffies=0x$(grep ' jiffies_64$' /tmp/kallsyms | cut -d' ' -f1)
echo "@@L2 RESULT sym_jiffies_64=$jiffies"
[ "$jiffies" != 0x ] || {{ cat /tmp/sie.syms; echo "no symbols from the first boot"; exit 9; }}
# gdb's symbols: the text symbols in an ELF file.
sietool kallsyms-elf {KERNEL_TEXT} {KERNEL_TEXT} /tmp/kernel.sym < /tmp/kallsyms || exit 9"#
    )
}

/// The gdb cases' L2 script: the first boot (with a disk) writes kallsyms
/// to it and stops; the second prints where its symbols are, then sleeps
/// 8 s, idle in the kernel, where gdb's Ctrl-C finds both vCPUs.
const KALLSYMS_L2: &str = "for m in virtio_ring virtio virtio_mmio virtio_blk; do insmod /modules/$m.ko; done; \
     if [ -b /dev/vda ]; then cat /proc/kallsyms > /dev/vda; sync; exit 0; fi; \
     echo \"@@L2 RESULT l2_jiffies_64=$(grep ' jiffies_64$' /proc/kallsyms | cut -d' ' -f1)\"; \
     echo \"@@L2 RESULT l2_kernel_init=$(grep ' kernel_init$' /proc/kallsyms | cut -d' ' -f1)\"; \
     echo \"@@L2 RESULT init=ok\"; sleep 8";

fn hex(text: &str) -> Option<u64> {
    u64::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

fn result_hex(run: &CaseRun, key: &str) -> Result<u64, String> {
    run.result(key)
        .as_deref()
        .and_then(hex)
        .ok_or_else(|| format!("no {key} in the output"))
}

fn check_gdb_kernel(run: &CaseRun) -> Result<(), String> {
    status_0_and(run, "init", "ok")?;
    match run.result("gdb_status").as_deref() {
        Some("0") => {}
        other => return Err(format!("gdb exited with {other:?}")),
    }
    // The symbols gdb used are L2's own.
    let jiffies = result_hex(run, "sym_jiffies_64")?;
    if result_hex(run, "l2_jiffies_64")? != jiffies {
        return Err("the first boot's kallsyms do not match the second's".into());
    }
    if result_hex(run, "gdb_kernel_init")? != result_hex(run, "l2_kernel_init")? {
        return Err("gdb's symbol file puts kernel_init elsewhere than L2's kallsyms".into());
    }
    let gdb: Vec<&str> = run
        .output
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("gdb| "))
        .collect();
    // Stopped before the first instruction: at the kernel's 64-bit entry,
    // which sie runs at its physical load address (16 MiB and up).
    let first = result_hex(run, "gdb_first_pc")?;
    if !(0x100_0000..0x4000_0000).contains(&first) {
        return Err(format!(
            "gdb found the guest at {first:#x}, not at the kernel's entry"
        ));
    }
    if !gdb.iter().any(|l| l.contains("received signal SIGINT")) {
        return Err("gdb's Ctrl-C did not stop the guest".into());
    }
    let stop = result_hex(run, "gdb_stop_pc")?;
    let frame0 = gdb
        .iter()
        .find_map(|l| l.strip_prefix("#0 "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(hex);
    if frame0 != Some(stop) {
        return Err(format!(
            "bt's frame 0 ({frame0:x?}) is not the stopped pc {stop:#x}"
        ));
    }
    // The stopped pc lies in a kernel function gdb names, in `info symbol`
    // ("NAME + OFFSET in section .text") and in bt's frame 0.
    let function = gdb
        .iter()
        .find(|l| l.ends_with(" in section .text"))
        .and_then(|l| l.split_whitespace().next())
        .ok_or("gdb named no function for the stopped pc")?;
    if !gdb
        .iter()
        .any(|l| l.starts_with("#0 ") && l.contains(&format!(" in {function} (")))
    {
        return Err(format!("bt's frame 0 does not name {function}"));
    }
    // `info threads` rows: "* 1    Thread 1 ...", "  2    Thread 2 ...".
    let threads = gdb
        .iter()
        .filter(|l| {
            let row = l.trim_start().trim_start_matches('*').trim_start();
            row.starts_with(|c: char| c.is_ascii_digit()) && row.contains("Thread ")
        })
        .count();
    if threads != 2 {
        return Err(format!("info threads listed {threads} vCPUs, not 2"));
    }
    check_system_registers(run)?;
    // One instruction ran: the pc moved, or (a `rep` string instruction,
    // which stays at its pc until done) its count in rcx went down.
    let stepped = result_hex(run, "gdb_step_pc")? != stop
        || result_hex(run, "gdb_step_rcx")? < result_hex(run, "gdb_stop_rcx")?;
    if !stepped {
        return Err("stepi neither moved the pc nor counted down rcx".into());
    }
    // Read through the kernel's page tables, and the clock went on between.
    let (one, two) = (
        result_hex(run, "gdb_jiffies_1")?,
        result_hex(run, "gdb_jiffies_2")?,
    );
    if two <= one {
        return Err(format!("jiffies_64 read {one:#x}, then {two:#x}"));
    }
    if !gdb.iter().any(|l| l.contains("exited normally")) {
        return Err("gdb did not see the VM finish".into());
    }
    Ok(())
}

/// The system registers gdb reads by name (sie's target description) at
/// the Ctrl-C stop, in the kernel: paging and protection on (cr0), long
/// mode (efer's LME and LMA), page tables (cr3), and gs_base the CPU's
/// per-CPU area in the kernel's half of the address space.
fn check_system_registers(run: &CaseRun) -> Result<(), String> {
    let cr0 = result_hex(run, "gdb_cr0")?;
    if cr0 & 0x8000_0001 != 0x8000_0001 {
        return Err(format!("gdb's $cr0 {cr0:#x} lacks PG or PE"));
    }
    let efer = result_hex(run, "gdb_efer")?;
    if efer & 0x500 != 0x500 {
        return Err(format!("gdb's $efer {efer:#x} is not long mode"));
    }
    if result_hex(run, "gdb_cr3")? == 0 {
        return Err("gdb's $cr3 is 0".into());
    }
    let gs_base = result_hex(run, "gdb_gs_base")?;
    if gs_base < 0xffff_8000_0000_0000 {
        return Err(format!(
            "gdb's $gs_base {gs_base:#x} is not a kernel address"
        ));
    }
    Ok(())
}

/// Breakpoints and a watchpoint set by gdb fire in a booting Debian kernel
/// (two vCPUs, the symbols of `inspect_gdb`): `hbreak` on `kernel_init`
/// (the first task's function, run once during the boot) stops the guest
/// with the pc at that symbol, where `bt` names kernel_init and the kernel
/// function that called it (frame #1: `ret_from_fork` on 6.1; gdb finds
/// the return address at rsp on a function's first instruction, without
/// unwind data); after `delete`, `watch` on `jiffies_64` (a kernel
/// variable the timer writes) stops it with gdb's old and new values, the
/// new one larger and the value in memory; after another `delete` the boot
/// reaches L2's /init. In the nested rig this needs an L0 QEMU of 9.1 or
/// later, whose VMRUN arms the L2 guest's debug registers.
///
/// An `int3` breakpoint cannot be shown here: QEMU's TCG checks an `int3`
/// in an SVM guest only against the INTn intercept (`raise_interrupt2`
/// with `is_int`), never against the #BP exception intercept L1's KVM sets
/// for `KVM_GUESTDBG_USE_SW_BP`, so the L2 kernel takes its own #BP (an
/// oops at the breakpoint, seen when this case tried). kvm_pvm hands int3
/// to the guest as well; sie's int3 path is unit-tested.
pub(crate) fn gdb_breakpoints() -> Case {
    let args = sie_e2e::l2_boot_args("inspect_gdb_breakpoints");
    let prelude = kallsyms_boot(&args);
    Case {
        name: "inspect_gdb_breakpoints",
        l1_command: format!(
            r#"{prelude}
echo "@@L2 RESULT sym_kernel_init=0x$(grep ' kernel_init$' /tmp/kallsyms | cut -d' ' -f1)"
SIE_RUN_TIMEOUT=240 sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} nokaslr" --vcpus 2 \
    --gdb-socket /tmp/gdb.sock > /tmp/sie.out 2>&1 &
pid=$!
i=0
until [ -S /tmp/gdb.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
timeout -k 5 200 gdb -nx -batch \
  -ex 'set pagination off' -ex 'set confirm off' -ex 'set architecture i386:x86-64' \
  -ex 'symbol-file /tmp/kernel.sym' \
  -ex 'target remote /tmp/gdb.sock' \
  -ex 'hbreak *kernel_init' \
  -ex 'continue' \
  -ex 'printf "@@L2 RESULT gdb_break_pc=%lx\n", (unsigned long)$pc' \
  -ex 'bt 3' \
  -ex 'delete' \
  -ex 'watch *(unsigned long *)'"$jiffies" \
  -ex 'continue' \
  -ex 'printf "@@L2 RESULT gdb_watch_value=%lu\n", *(unsigned long *)'"$jiffies" \
  -ex 'delete' \
  -ex 'continue' > /tmp/gdb.out 2>&1
echo "@@L2 RESULT gdb_status=$?"
wait $pid
status=$?
sed 's/^/gdb| /' /tmp/gdb.out
grep '^@@L2 RESULT' /tmp/gdb.out
cat /tmp/sie.out
exit $status"#
        ),
        l2_script: Some(KALLSYMS_L2),
        check: check_gdb_breakpoints,
    }
}

fn check_gdb_breakpoints(run: &CaseRun) -> Result<(), String> {
    status_0_and(run, "init", "ok")?;
    match run.result("gdb_status").as_deref() {
        Some("0") => {}
        other => return Err(format!("gdb exited with {other:?}")),
    }
    let kernel_init = result_hex(run, "sym_kernel_init")?;
    if result_hex(run, "l2_kernel_init")? != kernel_init {
        return Err("the first boot's kallsyms do not match the second's".into());
    }
    let gdb: Vec<&str> = run
        .output
        .lines()
        .filter_map(|line| line.trim_end().strip_prefix("gdb| "))
        .collect();
    // gdb says "Hardware assisted" when it sets the breakpoint, and
    // "hit Breakpoint 1" for either kind when it fires.
    if !gdb
        .iter()
        .any(|l| l.starts_with("Hardware assisted breakpoint 1 at "))
    {
        return Err("gdb did not set a hardware breakpoint on kernel_init".into());
    }
    if !gdb.iter().any(|l| l.contains("hit Breakpoint 1, ")) {
        return Err("the hardware breakpoint on kernel_init did not fire".into());
    }
    let pc = result_hex(run, "gdb_break_pc")?;
    if pc != kernel_init {
        return Err(format!(
            "the breakpoint stopped at {pc:#x}, not at kernel_init ({kernel_init:#x})"
        ));
    }
    check_backtrace_at_kernel_init(&gdb)?;
    // A software watchpoint (single-stepping the whole boot) would not do.
    if !gdb.iter().any(|l| l.starts_with("Hardware watchpoint 2: ")) {
        return Err("gdb did not set a hardware watchpoint on jiffies_64".into());
    }
    if !gdb
        .iter()
        .any(|l| l.contains("hit Hardware watchpoint 2: "))
    {
        return Err("the watchpoint on jiffies_64 did not fire".into());
    }
    let value = |prefix: &str| {
        gdb.iter()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or(format!("gdb printed no `{prefix}` for jiffies_64"))
    };
    let (old, new) = (value("Old value = ")?, value("New value = ")?);
    if new <= old {
        return Err(format!("jiffies_64 went from {old} to {new}"));
    }
    match run.result("gdb_watch_value").as_deref() {
        Some(v) if v.parse::<u64>().ok() == Some(new) => {}
        other => {
            return Err(format!(
                "jiffies_64 read {other:?} after gdb's new value {new}"
            ));
        }
    }
    if !gdb.iter().any(|l| l.contains("exited normally")) {
        return Err("gdb did not see the VM finish".into());
    }
    Ok(())
}

/// `bt` at the breakpoint on kernel_init: frame #0 is kernel_init, and
/// frame #1 a kernel function gdb names (its caller, `ret_from_fork`).
fn check_backtrace_at_kernel_init(gdb: &[&str]) -> Result<(), String> {
    if !gdb
        .iter()
        .any(|l| l.starts_with("#0 ") && l.contains(" in kernel_init ("))
    {
        return Err("bt at the breakpoint did not name kernel_init in frame #0".into());
    }
    // "#1  0xffffffff81001f2f in ret_from_fork ()"
    let frame1 = gdb
        .iter()
        .find_map(|l| l.strip_prefix("#1 "))
        .ok_or("bt at kernel_init showed no frame #1")?;
    let address = frame1.split_whitespace().next().and_then(hex);
    let caller = frame1
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    match (address, caller) {
        (Some(address), Some(name)) if address >= 0xffff_ffff_8000_0000 && name != "??" => Ok(()),
        _ => Err(format!(
            "bt's frame #1 is not a kernel function gdb names: {frame1}"
        )),
    }
}

/// gdb attaching to a running Debian guest: the first gdb, there before
/// the first instruction, detaches at once and the kernel boots on; a
/// second gdb attaches on the same socket a few seconds later, finds every
/// vCPU stopped in the kernel's text, and detaches; the boot reaches L2's
/// /init and sie exits 0.
pub(crate) fn gdb_attach_running() -> Case {
    Case {
        name: "inspect_gdb_attach",
        l1_command: format!(
            r#"rm -f /tmp/gdb.sock
SIE_RUN_TIMEOUT=240 sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{} nokaslr" --vcpus 2 \
    --gdb-socket /tmp/gdb.sock > /tmp/sie.out 2>&1 &
pid=$!
i=0
until [ -S /tmp/gdb.sock ]; do i=$((i+1)); [ $i -gt 300 ] && break; sleep 0.1; done
timeout -k 5 60 gdb -nx -batch -ex 'set architecture i386:x86-64' \
  -ex 'target remote /tmp/gdb.sock' -ex 'detach' 2>&1 | sed 's/^/gdb1| /'
sleep 3
timeout -k 5 60 gdb -nx -batch -ex 'set architecture i386:x86-64' \
  -ex 'target remote /tmp/gdb.sock' \
  -ex 'printf "@@L2 RESULT gdb2_pc=%lx\n", (unsigned long)$pc' \
  -ex 'info threads' -ex 'detach' > /tmp/gdb2.out 2>&1
sed 's/^/gdb2| /' /tmp/gdb2.out
grep '^@@L2 RESULT' /tmp/gdb2.out
wait $pid
status=$?
cat /tmp/sie.out
exit $status"#,
            sie_e2e::l2_boot_args("inspect_gdb_attach")
        ),
        l2_script: Some("echo \"@@L2 RESULT init=ok\""),
        check: |run| {
            status_0_and(run, "init", "ok")?;
            let detached = |prefix: &str| {
                run.output
                    .lines()
                    .any(|l| l.starts_with(prefix) && l.contains("detached"))
            };
            if !detached("gdb1| ") || !detached("gdb2| ") {
                return Err("a gdb did not detach".into());
            }
            // The kernel's text, or (a vCPU halted in the idle loop) its
            // pc still lies in the kernel's half of the address space.
            let pc = result_hex(run, "gdb2_pc")?;
            if pc < 0xffff_ffff_8000_0000 {
                return Err(format!("the later gdb found pc {pc:#x}, not in the kernel"));
            }
            let threads = run
                .output
                .lines()
                .filter(|l| l.starts_with("gdb2| ") && l.contains("Thread 1."))
                .count();
            if threads != 2 {
                return Err(format!("the later gdb saw {threads} vCPUs, not 2"));
            }
            Ok(())
        },
    }
}
