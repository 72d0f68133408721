//! Control cases: the API driving a guest, hangs reported as hangs, and the direct runner.

use super::*;

/// A guest that never ends: the deadline on each `sie` stops it, and the
/// case fails as a hang quoting the guest's last words (this check inverts
/// that: it passes when the failure is reported that way).
pub(crate) fn hang_reported() -> Case {
    Case {
        name: "hang_reported",
        l1_command: format!(
            "SIE_RUN_TIMEOUT=30 sie run --kernel \"$GUEST/vmlinux\" --initrd \"$GUEST/l2.cpio\" \
             --cmdline \"{}\"",
            sie_e2e::l2_boot_args("hang_reported")
        ),
        l2_script: Some("echo \"@@L2 RESULT last_words=going to sleep\"; sleep 600"),
        check: |run| {
            let Err(error) = run.expect_status(0) else {
                return Err("sie exited 0 for a guest that never ends".to_string());
            };
            if !error.starts_with("hang: @@HANG sie run still running after 30 s") {
                return Err(format!("not reported as a hang: {error}"));
            }
            if !error.contains("last_words=going to sleep") {
                return Err(format!("the guest's last words are not quoted: {error}"));
            }
            Ok(())
        },
    }
}

/// The case `direct_runner` runs through the direct runner.
pub(crate) const DIRECT_INNER: &str = "boot_vmlinux";

/// The direct runner, tested inside L1 (emulated AMD-V): `sie-rig` (this
/// binary) runs another case's script the way a VT-x/AMD-V host runs every
/// case, without QEMU, and applies that case's own check.
pub(crate) fn direct_runner() -> Case {
    Case {
        name: "direct_runner",
        l1_command: format!("SIE_RIG_DIRECT=1 sie-rig {DIRECT_INNER}"),
        l2_script: None,
        check: |run| {
            status_0_and(run, "hardware_virtualization", "yes")?;
            status_0_and(run, &format!("direct_{DIRECT_INNER}"), "pass")
        },
    }
}

/// Firecracker-style: started with `--api-sock --config-file`, stopped with
/// `SendCtrlAltDel` once the guest is up; the guest's keyboard driver gets
/// the keys, the kernel restarts and sie exits 0.
pub(crate) fn api_ctrl_alt_del() -> Case {
    Case {
        name: "api_ctrl_alt_del",
        l1_command: format!(
            r#"cat > /tmp/vm.json <<EOF
{{"boot-source": {{"kernel_image_path": "$GUEST/vmlinux", "initrd_path": "$GUEST/l2.cpio",
  "boot_args": "{}"}}, "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}}}}
EOF
sie --api-sock /tmp/api.sock --config-file /tmp/vm.json > /tmp/console 2>&1 &
pid=$!
i=0
until grep -q "waiting=yes" /tmp/console; do
  i=$((i+1)); [ $i -gt 600 ] && break; sleep 0.1
done
echo "@@L2 RESULT state=$(sie ctl --sock /tmp/api.sock info | sed -n 's/^state *//p')"
sie ctl --sock /tmp/api.sock ctrl-alt-del
wait $pid
status=$?
cat /tmp/console
exit $status"#,
            sie_e2e::l2_boot_args("api_ctrl_alt_del")
        ),
        l2_script: Some(
            r#"echo "@@L2 RESULT waiting=yes"; sleep 60; echo "@@L2 RESULT cad=missed""#,
        ),
        check: |run| {
            status_0_and(run, "state", "Running")?;
            if !run.output.contains("Ctrl-Alt-Del sent") {
                return Err("sie ctl did not send Ctrl-Alt-Del".to_string());
            }
            // The guest must restart because of the keys, not because its
            // script ran out and /init rebooted.
            if run.result("cad").is_some() {
                return Err("the guest ignored Ctrl-Alt-Del".to_string());
            }
            Ok(())
        },
    }
}
