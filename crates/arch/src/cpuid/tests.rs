//! CPUID rules on synthetic Intel-like and AMD-like supported lists.

use super::*;
use sie_hv::x86::CPUID_FLAG_SIGNIFICANT_INDEX;

fn leaf(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
    CpuidEntry {
        function,
        index,
        flags: 0,
        eax,
        ebx,
        ecx,
        edx,
    }
}

fn vendor_leaf(max: u32, name: &[u8; 12]) -> CpuidEntry {
    let word = |i: usize| u32::from_le_bytes([name[i], name[i + 1], name[i + 2], name[i + 3]]);
    leaf(0, 0, max, word(0), word(8), word(4))
}

/// "KVMKVMKVM\0\0\0" as EBX, ECX, EDX.
const KVM_SIG: (u32, u32, u32) = (0x4b4d_564b, 0x564b_4d56, 0x0000_004d);

fn common_tail() -> Vec<CpuidEntry> {
    vec![
        leaf(6, 0, 0x0000_77f7, 0x2, 0x0000_0009, 0x1),
        leaf(0x4000_0000, 0, 0, KVM_SIG.0, KVM_SIG.1, KVM_SIG.2),
        leaf(0x4000_0001, 0, 0x0100_7efb, 0, 0, 0),
        leaf(0x8000_0000, 0, 0x8000_0008, 0, 0, 0),
    ]
}

/// An Intel host: HT in leaf 1, four caches in leaf 4, host topology in
/// 0xB (2 threads, 16 cores) and 0x1F, no TSC-deadline.
fn intel() -> Vec<CpuidEntry> {
    let mut v = vec![
        vendor_leaf(0x1f, b"GenuineIntel"),
        leaf(
            1,
            0,
            0x000906ea,
            0x1d10_0800,
            0x7ffa_f3bf & !(1 << 24),
            0xbfeb_fbff,
        ),
        leaf(4, 0, 0x1c00_4121, 0x01c0_003f, 0x3f, 0), // L1d
        leaf(4, 1, 0x1c00_4122, 0x01c0_003f, 0x3f, 0), // L1i
        leaf(4, 2, 0x1c00_4143, 0x00c0_003f, 0x3ff, 0), // L2
        leaf(4, 3, 0x1c03_c163, 0x0280_003f, 0x2fff, 6), // L3
        leaf(4, 4, 0, 0, 0, 0),
        leaf(0xb, 0, 1, 2, 0x100, 0x1d),
        leaf(0xb, 1, 5, 16, 0x201, 0x1d),
        leaf(0x1f, 0, 1, 2, 0x100, 0x1d),
        leaf(0x8000_0001, 0, 0, 0, 0x121, 0x2c10_0800),
    ];
    v.extend(common_tail());
    v
}

/// An AMD host: CmpLegacy and TOPOEXT, 0x8000_0008 for 16 cores, cache and
/// extended APIC leaves; no leaf 0xB.
fn amd() -> Vec<CpuidEntry> {
    let mut v = vec![
        vendor_leaf(0xd, b"AuthenticAMD"),
        leaf(
            1,
            0,
            0x00a2_0f10,
            0x0b10_0800,
            0x7ef8_3203 | (1 << 24),
            0x178b_fbff,
        ),
        leaf(0x8000_0001, 0, 0x00a2_0f10, 0, 0x75c2_37ff, 0x2fd3_fbff),
        leaf(0x8000_0008, 0, 0x3030, 0, 0x0000_700f, 0),
        leaf(0x8000_001d, 0, 0x0000_4121, 0x01c0_003f, 0x3f, 0),
        leaf(0x8000_001d, 1, 0x0000_4143, 0x01c0_003f, 0x3ff, 2),
        leaf(0x8000_001d, 2, 0x0001_c163, 0x03c0_003f, 0x7fff, 1),
        leaf(0x8000_001d, 3, 0, 0, 0, 0),
        leaf(0x8000_001e, 0, 0x16, 0x0000_010b, 0x0000_0300, 0),
    ];
    v.extend(common_tail());
    v
}

fn find(table: &[CpuidEntry], function: u32, index: u32) -> CpuidEntry {
    *table
        .iter()
        .find(|e| e.function == function && e.index == index)
        .unwrap_or_else(|| panic!("leaf {function:#x}.{index} missing"))
}

#[test]
fn vendor_comes_from_leaf_0() {
    assert_eq!(Vendor::of(&intel()), Vendor::Intel);
    assert_eq!(Vendor::of(&amd()), Vendor::Amd);
    assert_eq!(Vendor::of(&[vendor_leaf(1, b"HygonGenuine")]), Vendor::Amd);
    assert_eq!(
        Vendor::of(&[vendor_leaf(1, b"CentaurHauls")]),
        Vendor::Other
    );
    assert_eq!(Vendor::of(&[]), Vendor::Other);
}

#[test]
fn leaf_1_carries_apic_id_count_clflush_and_hypervisor_bit() {
    let t = normalize(&intel(), 3, 4);
    let l1 = find(&t, 1, 0);
    assert_eq!(l1.ebx >> 24, 3);
    assert_eq!((l1.ebx >> 16) & 0xff, 4);
    assert_eq!((l1.ebx >> 8) & 0xff, 8);
    assert_eq!(l1.ebx & 0xff, 0); // brand index kept
    assert_ne!(l1.ecx & (1 << 31), 0);
    assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
    // Three vCPUs reserve four APIC ids.
    assert_eq!((find(&normalize(&intel(), 0, 3), 1, 0).ebx >> 16) & 0xff, 4);
}

#[test]
fn single_vcpu_clears_htt_and_cmp_legacy() {
    let t = normalize(&intel(), 0, 1);
    assert_eq!(find(&t, 1, 0).edx & LEAF1_EDX_HTT, 0);
    assert_eq!((find(&t, 1, 0).ebx >> 16) & 0xff, 1);
    let t = normalize(&amd(), 0, 1);
    assert_eq!(find(&t, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
    let t = normalize(&amd(), 0, 2);
    assert_ne!(find(&t, 0x8000_0001, 0).ecx & EXT1_ECX_CMP_LEGACY, 0);
}

#[test]
fn tsc_deadline_passes_through_as_supported() {
    const TSC_DEADLINE: u32 = 1 << 24;
    assert_eq!(find(&normalize(&intel(), 0, 2), 1, 0).ecx & TSC_DEADLINE, 0);
    assert_ne!(find(&normalize(&amd(), 0, 2), 1, 0).ecx & TSC_DEADLINE, 0);
}

#[test]
fn no_feature_bit_is_added() {
    // Feature leaves: every bit set in the output was set in the input,
    // except the hypervisor bit which states a fact.
    for (supported, id, count) in [
        (intel(), 0, 1),
        (intel(), 5, 8),
        (amd(), 1, 2),
        (amd(), 0, 1),
    ] {
        let t = normalize(&supported, id, count);
        for (function, reg) in [
            (1, 2),
            (1, 3),
            (6, 0),
            (6, 2),
            (0x8000_0001, 2),
            (0x8000_0001, 3),
        ] {
            let pick = |e: CpuidEntry| [e.eax, e.ebx, e.ecx, e.edx][reg];
            let before = pick(find(&supported, function, 0));
            let mut after = pick(find(&t, function, 0));
            if (function, reg) == (1, 2) {
                after &= !LEAF1_ECX_HYPERVISOR;
            }
            assert_eq!(
                after & !before,
                0,
                "leaf {function:#x} reg {reg} gained bits"
            );
        }
    }
}

#[test]
fn leaf_0xb_and_0x1f_describe_one_socket_of_single_thread_cores() {
    let t = normalize(&intel(), 5, 6);
    for function in [0xb, 0x1f] {
        let subs: Vec<_> = t.iter().filter(|e| e.function == function).collect();
        assert_eq!(subs.len(), 3, "leaf {function:#x}");
        for (i, e) in subs.iter().enumerate() {
            assert_eq!(e.index, i as u32);
            assert_eq!(e.edx, 5, "x2APIC id");
            assert_eq!(e.ecx & 0xff, i as u32);
            assert_eq!(
                e.flags & CPUID_FLAG_SIGNIFICANT_INDEX,
                CPUID_FLAG_SIGNIFICANT_INDEX
            );
        }
        // SMT: 1 thread, shift 0. Core: 6 vCPUs, shift 3. Then invalid.
        assert_eq!((subs[0].eax, subs[0].ebx, subs[0].ecx >> 8), (0, 1, 1));
        assert_eq!((subs[1].eax, subs[1].ebx, subs[1].ecx >> 8), (3, 6, 2));
        assert_eq!((subs[2].eax, subs[2].ebx, subs[2].ecx >> 8), (0, 0, 0));
    }
}

#[test]
fn extended_topology_is_not_invented_when_unsupported() {
    let t = normalize(&amd(), 0, 4);
    assert!(t.iter().all(|e| e.function != 0xb && e.function != 0x1f));
}

#[test]
fn leaf_4_counts_cores_and_cache_sharing() {
    let t = normalize(&intel(), 0, 4);
    for index in 0..4 {
        let eax = find(&t, 4, index).eax;
        assert_eq!(eax >> 26, 3, "cores per package - 1 in sub-leaf {index}");
        let level = (eax >> 5) & 7;
        let sharing = (eax >> 14) & 0xfff;
        assert_eq!(sharing, if level == 3 { 3 } else { 0 });
        // Cache type and level are kept.
        assert_eq!(eax & 0xff, find(&intel(), 4, index).eax & 0xff);
    }
    assert_eq!(find(&t, 4, 4), find(&intel(), 4, 4));
}

#[test]
fn amd_core_count_and_extended_apic_id() {
    let t = normalize(&amd(), 2, 3);
    let ecx = find(&t, 0x8000_0008, 0).ecx;
    assert_eq!(ecx & 0xff, 2, "NC");
    assert_eq!((ecx >> 12) & 0xf, 2, "ApicIdCoreIdSize");
    let e = find(&t, 0x8000_001e, 0);
    assert_eq!(e.eax, 2);
    assert_eq!(e.ebx & 0xff, 2);
    assert_eq!((e.ebx >> 8) & 0xff, 0, "one thread per core");
    assert_eq!(e.ecx & 0x7ff, 0, "node 0 of 1");
    assert_eq!((find(&t, 0x8000_001d, 2).eax >> 14) & 0xfff, 3);
    assert_eq!((find(&t, 0x8000_001d, 1).eax >> 14) & 0xfff, 0);
}

#[test]
fn intel_0x8000_0008_ecx_is_left_alone() {
    let mut supported = intel();
    supported.push(leaf(0x8000_0008, 0, 0x3027, 0, 0, 0));
    assert_eq!(find(&normalize(&supported, 1, 4), 0x8000_0008, 0).ecx, 0);
}

#[test]
fn kvm_signature_is_kept_with_the_highest_hypervisor_leaf() {
    let t = normalize(&intel(), 0, 1);
    let e = find(&t, 0x4000_0000, 0);
    assert_eq!((e.ebx, e.ecx, e.edx), KVM_SIG);
    assert_eq!(e.eax, 0x4000_0001);
}

#[test]
fn leaf_6_keeps_only_arat() {
    let e = find(&normalize(&intel(), 0, 1), 6, 0);
    assert_eq!((e.eax, e.ebx, e.ecx, e.edx), (LEAF6_EAX_ARAT, 0, 0, 0));
}

#[test]
fn other_leaves_pass_through_in_order() {
    let supported = amd();
    let t = normalize(&supported, 0, 2);
    assert_eq!(t.len(), supported.len());
    assert_eq!(find(&t, 0, 0), supported[0]);
    assert_eq!(find(&t, 0x4000_0001, 0), find(&supported, 0x4000_0001, 0));
    let order: Vec<_> = t.iter().map(|e| (e.function, e.index)).collect();
    let want: Vec<_> = supported.iter().map(|e| (e.function, e.index)).collect();
    assert_eq!(order, want);
}

#[test]
fn vmx_and_svm_are_hidden_unless_exposed() {
    let mut intel = intel();
    let mut amd = amd();
    // Hosts that let guests nest: VMX on Intel, SVM on AMD.
    intel[1].ecx |= LEAF1_ECX_VMX;
    amd.iter_mut()
        .filter(|e| e.function == 0x8000_0001)
        .for_each(|e| e.ecx |= EXT1_ECX_SVM);
    assert!(offers_virtualization(&intel) && offers_virtualization(&amd));
    let mut t = normalize(&intel, 0, 1);
    assert_eq!(find(&t, 1, 0).ecx & LEAF1_ECX_VMX, 0);
    assert!(!offers_virtualization(&t));
    expose_virtualization(&mut t, &intel);
    assert_ne!(find(&t, 1, 0).ecx & LEAF1_ECX_VMX, 0);
    let mut t = normalize(&amd, 0, 2);
    assert_eq!(find(&t, 0x8000_0001, 0).ecx & EXT1_ECX_SVM, 0);
    expose_virtualization(&mut t, &amd);
    assert_ne!(find(&t, 0x8000_0001, 0).ecx & EXT1_ECX_SVM, 0);
    // A host without nesting: exposing adds nothing.
    amd.iter_mut().for_each(|e| {
        if e.function == 0x8000_0001 {
            e.ecx &= !EXT1_ECX_SVM;
        }
    });
    assert!(!offers_virtualization(&amd));
    let mut t = normalize(&amd, 0, 1);
    expose_virtualization(&mut t, &amd);
    assert!(!offers_virtualization(&t));
}
