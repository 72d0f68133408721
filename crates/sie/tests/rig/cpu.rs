//! The guest's CPU: a custom CPU template hides a feature from a Debian
//! guest's /proc/cpuinfo, and `--nested` shows it SVM (L1 is QEMU's AMD-V
//! CPU with kvm_amd, whose `nested` parameter is on by default; the case
//! reports it as `l1_nested`).
//!
//! Each case boots L2 twice, tagging each boot on its command line
//! (`tag=plain`, `tag=...`), and the L2 script reports per tag.

use super::*;

/// L2's side: one `@@L2 RESULT <flag>_<tag>=yes|no` line for `flag`.
macro_rules! flag_script {
    ($flag:literal) => {
        concat!(
            r#"tag=$(sed -n 's/.*tag=\([a-z]*\).*/\1/p' /proc/cmdline); "#,
            r#"if grep -qw "#,
            $flag,
            r#" /proc/cpuinfo; then v=yes; else v=no; fi; "#,
            r#"echo "@@L2 RESULT "#,
            $flag,
            r#"_$tag=$v""#
        )
    };
}

/// POPCNT (leaf 1 ECX bit 23), which every x86-64 CPU QEMU emulates has,
/// hidden by a `cpu-config` file: the guest kernel no longer lists it.
pub(crate) fn cpu_template_custom() -> Case {
    let args = sie_e2e::l2_boot_args("cpu_template_custom");
    Case {
        name: "cpu_template_custom",
        l1_command: format!(
            r#"cat > /tmp/no-popcnt.json <<'JSON'
{{"cpuid_modifiers": [{{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
  "modifiers": [{{"register": "ecx", "bitmap": "0bxxxxxxxx0xxxxxxxxxxxxxxxxxxxxxxx"}}]}}]}}
JSON
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=plain" &&
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=tmpl" \
    --cpu-config /tmp/no-popcnt.json"#
        ),
        l2_script: Some(flag_script!("popcnt")),
        check: |run| {
            status_0_and(run, "popcnt_plain", "yes")?;
            status_0_and(run, "popcnt_tmpl", "no")
        },
    }
}

/// SVM in L2's /proc/cpuinfo with `--nested`, and not without.
pub(crate) fn nested_svm() -> Case {
    let args = sie_e2e::l2_boot_args("cpu_nested_svm");
    Case {
        name: "cpu_nested_svm",
        l1_command: format!(
            r#"echo "@@L2 RESULT l1_nested=$(cat /sys/module/kvm_amd/parameters/nested)"
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=plain" &&
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=nested" \
    --nested"#
        ),
        l2_script: Some(flag_script!("svm")),
        check: |run| {
            status_0_and(run, "svm_plain", "no")?;
            status_0_and(run, "svm_nested", "yes")
        },
    }
}

/// Firecracker's AMD template on L1's AMD-V CPU: the Debian guest loses
/// the features T2A hides (RDSEED, ADX, UMIP, RDPID, 1 GiB pages, SHA,
/// CLWB: whichever L1 offers) and keeps the baseline's (SSE2). Not
/// 3DNowPrefetch, which T2A hides too: Linux sets it itself on any 64-bit
/// AMD CPU.
pub(crate) fn cpu_template_static() -> Case {
    let args = sie_e2e::l2_boot_args("cpu_template_static");
    Case {
        name: "cpu_template_static",
        l1_command: format!(
            r#"sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=plain" &&
sie run --kernel "$GUEST/vmlinux" --initrd "$GUEST/l2.cpio" --cmdline "{args} tag=tmpl" \
    --cpu-template T2A"#
        ),
        l2_script: Some(
            r#"tag=$(sed -n 's/.*tag=\([a-z]*\).*/\1/p' /proc/cmdline); for f in sse2 rdseed adx umip rdpid pdpe1gb sha_ni clwb; do if grep -qw $f /proc/cpuinfo; then v=yes; else v=no; fi; echo "@@L2 RESULT ${f}_$tag=$v"; done"#,
        ),
        check: |run| {
            status_0_and(run, "sse2_tmpl", "yes")?;
            let mut hidden = 0;
            for flag in [
                "rdseed", "adx", "umip", "rdpid", "pdpe1gb", "sha_ni", "clwb",
            ] {
                let plain = run.result(&format!("{flag}_plain"));
                let tmpl = run.result(&format!("{flag}_tmpl"));
                match (plain.as_deref(), tmpl.as_deref()) {
                    (Some("yes"), Some("no")) => hidden += 1,
                    (Some("no"), Some("no")) => {}
                    other => return Err(format!("{flag}: plain/T2A {other:?}, want it hidden")),
                }
            }
            if hidden == 0 {
                return Err("L1 offers none of the features T2A hides: nothing was shown".into());
            }
            Ok(())
        },
    }
}
