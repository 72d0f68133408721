//! Templates over synthetic supported lists.

use super::*;

fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> CpuidEntry {
    CpuidEntry {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
    }
}

fn vendor(name: &[u8; 12]) -> CpuidEntry {
    let word = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
    entry(0, 0, 0, [0xd, word(0), word(8), word(4)])
}

/// A host with every feature bit set in the leaves the static templates touch.
fn host(name: &[u8; 12]) -> Vec<CpuidEntry> {
    let all = u32::MAX;
    vec![
        vendor(name),
        entry(1, 0, 0, [0x000a_0f11, 0, all, all]),
        entry(7, 0, 1, [0, all, all, all]),
        entry(7, 1, 1, [all, 0, 0, 0]),
        entry(0xd, 0, 1, [0x2ff, 0, 0, 0]),
        entry(0xd, 1, 1, [0xf, 0, 0, 0]),
        entry(0x8000_0001, 0, 0, [0, 0, all, all]),
        entry(0x8000_0008, 0, 0, [0x3030, all, 0, 0]),
    ]
}

fn find(table: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
    *table
        .iter()
        .find(|e| e.function == function && e.index == index)
        .unwrap()
}

fn one(leaf: u32, subleaf: u32, register: Register, mask: u32, value: u32) -> CpuTemplate {
    CpuTemplate {
        cpuid: vec![CpuidModifier {
            leaf,
            subleaf,
            flags: if leaf == 7 { 1 } else { 0 },
            register,
            mask,
            value,
        }],
        ..CpuTemplate::default()
    }
}

#[test]
fn masked_bits_are_cleared_set_or_kept() {
    let host = host(b"GenuineIntel");
    // Clear AVX2 (leaf 7 EBX 5), keep the rest.
    let t = apply(&host, &one(7, 0, Register::Ebx, 1 << 5, 0)).unwrap();
    assert_eq!(find(&t, 7, 0).ebx, !(1 << 5));
    assert_eq!(
        find(&t, 7, 1),
        find(&host, 7, 1),
        "other sub-leaves untouched"
    );
    // Identity values may be anything: leaf 1 EAX (signature).
    let t = apply(&host, &one(1, 0, Register::Eax, 0x0fff_3fff, 0x0003_06f2)).unwrap();
    assert_eq!(find(&t, 1, 0).eax, 0x0003_06f2);
    // A feature bit the host has may be stated.
    assert!(apply(&host, &one(1, 0, Register::Edx, 1 << 7, 1 << 7)).is_ok());
}

#[test]
fn a_feature_the_host_lacks_is_refused_naming_leaf_register_and_bit() {
    let mut host = host(b"GenuineIntel");
    host[2].ebx &= !(1 << 9);
    let error = apply(&host, &one(7, 0, Register::Ebx, 1 << 9, 1 << 9)).unwrap_err();
    assert_eq!(
        error,
        TemplateError::MissingFeature {
            leaf: 7,
            subleaf: 0,
            register: "EBX",
            bit: 9
        }
    );
    assert_eq!(
        error.to_string(),
        "CPU template: CPUID leaf 0x7 subleaf 0x0 EBX bit 9 is forced to 1, but this host does not offer that feature"
    );
}

#[test]
fn a_leaf_the_host_lacks_is_refused() {
    let error = apply(&host(b"GenuineIntel"), &one(0x14, 0, Register::Eax, 1, 0)).unwrap_err();
    assert_eq!(
        error,
        TemplateError::MissingLeaf {
            leaf: 0x14,
            subleaf: 0
        }
    );
    // Sub-leaf 2 of leaf 7 is not listed either (its index is significant).
    assert!(apply(&host(b"GenuineIntel"), &one(7, 2, Register::Edx, 1, 0)).is_err());
}

#[test]
fn static_templates_hide_newer_features_on_their_vendor() {
    for name in ["T2", "T2S", "C3"] {
        let template = static_template(name).unwrap();
        let host = host(b"GenuineIntel");
        check_vendor("T2", &template, &host).unwrap();
        let t = apply(&host, &template).unwrap();
        let leaf7 = find(&t, 7, 0);
        // AVX-512F (EBX 16), SGX (EBX 2) and PKU (ECX 3) hidden; SSE
        // (leaf 1 EDX 25) kept.
        assert_eq!(leaf7.ebx & ((1 << 16) | (1 << 2)), 0, "{name}");
        assert_eq!(leaf7.ecx & (1 << 3), 0, "{name}");
        assert_ne!(find(&t, 1, 0).edx & (1 << 25), 0, "{name}");
        assert_eq!(find(&t, 1, 0).ecx & (1 << 5), 0, "{name}: VMX hidden");
        let error = check_vendor("T2", &template, &self::host(b"AuthenticAMD")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "CPU template T2 is for Intel CPUs; this host's CPU is Amd"
        );
    }
    // C3 also hides AVX2; T2 keeps it.
    let c3 = apply(&host(b"GenuineIntel"), &static_template("C3").unwrap()).unwrap();
    assert_eq!(find(&c3, 7, 0).ebx & (1 << 5), 0);
    let t2 = apply(&host(b"GenuineIntel"), &static_template("T2").unwrap()).unwrap();
    assert_ne!(find(&t2, 7, 0).ebx & (1 << 5), 0);
    assert_eq!(find(&t2, 1, 0).eax, 0x0003_06f2);
    // T2S pins IA32_ARCH_CAPABILITIES.
    let t2s = static_template("T2S").unwrap();
    assert_eq!(t2s.msrs[0].index, 0x10a);
    assert_eq!(t2s.msrs[0].apply(u64::MAX), 0xc4c);

    let amd = host(b"AuthenticAMD");
    let t2a = static_template("T2A").unwrap();
    check_vendor("T2A", &t2a, &amd).unwrap();
    let t = apply(&amd, &t2a).unwrap();
    // SSE4A (0x8000_0001 ECX 6), CLZERO (0x8000_0008 EBX 0) and the IBRS
    // hints KVM never offers (EBX 18, 19) hidden: T2A asks for nothing a
    // KVM host lacks there.
    assert_eq!(find(&t, 0x8000_0001, 0).ecx & (1 << 6), 0);
    assert_eq!(find(&t, 0x8000_0008, 0).ebx & 1, 0);
    assert_eq!(find(&t, 0x8000_0008, 0).ebx & (0b11 << 18), 0);
    let mut kvm_host = amd.clone();
    kvm_host
        .iter_mut()
        .filter(|e| e.function == 0x8000_0008)
        .for_each(|e| e.ebx &= !(0b11 << 18));
    assert!(apply(&kvm_host, &t2a).is_ok());
    assert!(check_vendor("T2A", &t2a, &host(b"GenuineIntel")).is_err());
    assert_eq!(static_template("T2CL"), None);
}

#[test]
fn template_flags_are_given_to_the_entry() {
    let mut template = one(0x8000_0001, 0, Register::Ecx, 1 << 8, 0);
    template.cpuid[0].flags = 0;
    let t = apply(&host(b"AuthenticAMD"), &template).unwrap();
    assert_eq!(find(&t, 0x8000_0001, 0).flags, 0);
    assert_eq!(find(&t, 0x8000_0001, 0).ecx & (1 << 8), 0);
}

#[test]
fn msr_modifiers_replace_only_their_bits() {
    let modifier = MsrModifier {
        index: 0x10,
        mask: 0xff00,
        value: 0x1200,
    };
    assert_eq!(modifier.apply(0xffff_ffff), 0xffff_12ff);
}
