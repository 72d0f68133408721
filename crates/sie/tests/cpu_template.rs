//! CPU templates and the nested switch on the real /dev/kvm, seen from the
//! `cpuid` tiny guest, which prints the feature registers CPUID gives it.

mod common;

use common::{Scratch, sie};
use sie_guests::CPUID;

/// The guest's view: (leaf 1 ECX, leaf 0x8000_0001 ECX).
fn guest_view(extra: &[&str]) -> (u32, u32) {
    let mut args = vec!["run", "--kernel", CPUID.path];
    args.extend_from_slice(extra);
    let run = sie(&args);
    run.expect_code(0);
    let field = |line: &str, key: &str| -> u32 {
        let hex = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {line:?}"));
        u32::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{hex:?}: {e}"))
    };
    let line = |prefix: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line in {:?}", run.stdout))
            .to_string()
    };
    (
        field(&line("leaf1 "), "ecx="),
        field(&line("ext1 "), "ecx="),
    )
}

/// A custom template that sets leaf 0x8000_0001 ECX bit `bit` to `value`.
fn ext1_template(scratch: &Scratch, bit: u32, value: char) -> String {
    let mut bitmap = ['x'; 32];
    bitmap[31 - bit as usize] = value;
    let bitmap: String = bitmap.iter().collect();
    let json = format!(
        r#"{{"cpuid_modifiers": [{{"leaf": "0x80000001", "subleaf": "0x0", "flags": 0,
            "modifiers": [{{"register": "ecx", "bitmap": "0b{bitmap}"}}]}}]}}"#
    );
    scratch.file(&format!("ext1-{bit}-{value}.json"), json.as_bytes())
}

#[test]
fn a_bit_the_template_clears_is_invisible_to_the_guest() {
    let (_, before) = guest_view(&[]);
    // Any feature the guest sees there (LAHF/SAHF, ABM, PREFETCHW, ...),
    // other than CmpLegacy and SVM, which sie decides itself.
    let bit = (0..32)
        .filter(|b| ![1, 2].contains(b))
        .find(|b| before & (1 << b) != 0)
        .expect("the guest sees some 0x8000_0001 ECX feature");
    let scratch = Scratch::new("cpu-template-clear");
    let template = ext1_template(&scratch, bit, '0');
    let (_, after) = guest_view(&["--cpu-config", &template]);
    assert_eq!(
        after,
        before & !(1 << bit),
        "bit {bit} hidden, every other bit as before"
    );
}

#[test]
fn a_feature_the_host_lacks_is_refused_naming_leaf_register_and_bit() {
    let (_, seen) = guest_view(&[]);
    let bit = (3..32)
        .find(|b| seen & (1 << b) == 0)
        .expect("some 0x8000_0001 ECX bit is clear");
    let scratch = Scratch::new("cpu-template-invent");
    let template = ext1_template(&scratch, bit, '1');
    sie(&["run", "--kernel", CPUID.path, "--cpu-config", &template]).expect_one_line_error(
        &format!("CPUID leaf 0x80000001 subleaf 0x0 ECX bit {bit} is forced to 1, but this host does not offer that feature"),
    );
}

#[test]
fn a_static_template_for_the_other_vendor_is_refused_naming_both() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let (other, wanted, host) = if cpuinfo.contains("GenuineIntel") {
        ("T2A", "Amd", "Intel")
    } else if cpuinfo.contains("AuthenticAMD") {
        ("T2", "Intel", "Amd")
    } else {
        return;
    };
    sie(&["run", "--kernel", CPUID.path, "--cpu-template", other]).expect_one_line_error(&format!(
        "CPU template {other} is for {wanted} CPUs; this host's CPU is {host}"
    ));
    sie(&["run", "--kernel", CPUID.path, "--cpu-template", "T2CL"])
        .expect_one_line_error("\"T2CL\" is not offered by sie");
}

#[test]
fn vmx_and_svm_are_hidden_unless_nested_and_nested_needs_the_host() {
    const VMX: u32 = 1 << 5;
    const SVM: u32 = 1 << 2;
    let (leaf1, ext1) = guest_view(&[]);
    assert_eq!((leaf1 & VMX, ext1 & SVM), (0, 0), "hidden by default");
    let run = sie(&["run", "--kernel", CPUID.path, "--nested"]);
    if run.code == Some(0) {
        // A host whose KVM lets guests nest: the guest now sees VMX or SVM.
        let (leaf1, ext1) = guest_view(&["--nested"]);
        assert!(leaf1 & VMX != 0 || ext1 & SVM != 0, "{}", run.stdout);
    } else {
        run.expect_one_line_error(
            "machine-config: nested needs a host KVM that lets guests run VMs",
        );
    }
}

#[test]
fn a_hidden_leaf_1_bit_is_hidden_or_the_template_refused() {
    let (before, _) = guest_view(&[]);
    // A feature sie leaves to the host (not VMX, HTT-like topology or the
    // hypervisor bit): the lowest set one among SSE3..POPCNT.
    let bit = (0..24)
        .filter(|b| *b != 5)
        .find(|b| before & (1 << b) != 0)
        .expect("the guest sees some leaf 1 ECX feature");
    let mut bitmap = ['x'; 32];
    bitmap[31 - bit as usize] = '0';
    let bitmap: String = bitmap.iter().collect();
    let scratch = Scratch::new("cpu-template-leaf1");
    let template = scratch.file(
        "leaf1.json",
        format!(
            r#"{{"cpuid_modifiers": [{{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{{"register": "ecx", "bitmap": "0b{bitmap}"}}]}}]}}"#
        )
        .as_bytes(),
    );
    let run = sie(&["run", "--kernel", CPUID.path, "--cpu-config", &template]);
    if run.code == Some(0) {
        let (after, _) = guest_view(&["--cpu-config", &template]);
        assert_eq!(after, before & !(1 << bit));
    } else {
        // A software KVM (kvm_pvm) merges host bits into leaf 1 as the
        // guest reads it: sie sees that and refuses rather than pretend.
        run.expect_one_line_error(&format!(
            "still shows the guest CPUID leaf 0x1 subleaf 0x0 ECX bit {bit}"
        ));
    }
}

#[test]
fn msr_modifiers_reach_the_guest_and_unknown_msrs_are_refused() {
    let msr_line = |extra: &[&str]| {
        let mut args = vec!["run", "--kernel", CPUID.path];
        args.extend_from_slice(extra);
        let run = sie(&args);
        run.expect_code(0);
        run.stdout
            .lines()
            .find_map(|l| l.strip_prefix("msr174="))
            .unwrap_or_else(|| panic!("no msr174 line in {:?}", run.stdout))
            .to_string()
    };
    // sie boots every vCPU with IA32_SYSENTER_CS = 0; the template sets bit 4.
    assert_eq!(msr_line(&[]), "0");
    let scratch = Scratch::new("cpu-template-msr");
    let template = scratch.file(
        "msr.json",
        br#"{"msr_modifiers": [{"addr": "0x174", "bitmap": "0b1_0000"}]}"#,
    );
    assert_eq!(msr_line(&["--cpu-config", &template]), "10");
    let unknown = scratch.file(
        "unknown.json",
        br#"{"msr_modifiers": [{"addr": "0xdeadbeef", "bitmap": "0b1"}]}"#,
    );
    sie(&["run", "--kernel", CPUID.path, "--cpu-config", &unknown]).expect_one_line_error(
        "CPU template: MSR 0xdeadbeef cannot be read through this host's KVM",
    );
}
