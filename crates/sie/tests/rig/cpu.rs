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
