//! Register and table state round-trips through KVM, and host queries.

mod common;

use common::real_mode_guest;
use sie_hv::Hypervisor;
use sie_hv::x86::{FpuState, MsrEntry, Regs};

/// IA32_SYSENTER_CS and IA32_SYSENTER_ESP: plain storage MSRs.
const SYSENTER_CS: u32 = 0x174;
const SYSENTER_ESP: u32 = 0x175;

#[test]
fn host_queries_answer() {
    let guest = real_mode_guest(&[0xf4]);
    assert!(guest.kvm.max_vcpus() >= 1);
    assert_eq!(guest.kvm.api_version(), 12);
    let cpuid = guest.kvm.supported_cpuid().unwrap();
    assert!(cpuid.iter().any(|e| e.function == 0));
    let msrs = guest.kvm.supported_msrs().unwrap();
    assert!(msrs.contains(&SYSENTER_CS));
}

#[test]
fn regs_round_trip() {
    let guest = real_mode_guest(&[0xf4]);
    let regs = Regs {
        rax: 1,
        rbx: 2,
        rcx: 3,
        rdx: 4,
        rsi: 5,
        rdi: 6,
        rsp: 0x8000,
        rbp: 8,
        r8: 9,
        r9: 10,
        r10: 11,
        r11: 12,
        r12: 13,
        r13: 14,
        r14: 15,
        r15: 16,
        rip: 0x1234,
        rflags: 0x2,
    };
    guest.vcpu.set_regs(&regs).unwrap();
    assert_eq!(guest.vcpu.regs().unwrap(), regs);
}

#[test]
fn sregs_round_trip() {
    let guest = real_mode_guest(&[0xf4]);
    let mut sregs = guest.vcpu.sregs().unwrap();
    sregs.ds.base = 0x3000;
    sregs.ds.selector = 0x300;
    sregs.gdt.base = 0x500;
    sregs.gdt.limit = 0x1f;
    sregs.idt.limit = 0x3ff;
    sregs.cr3 = 0x9000;
    guest.vcpu.set_sregs(&sregs).unwrap();
    assert_eq!(guest.vcpu.sregs().unwrap(), sregs);
}

/// Leaves KVM rewrites on read: feature bits it derives at run time
/// (leaf 1's OSXSAVE/APIC bits, leaf 7 and the XSAVE sizes of leaf 0xd; the
/// software KVM here merges more host bits into them).
const RUNTIME_LEAVES: [u32; 3] = [1, 7, 0xd];

#[test]
fn cpuid_round_trips_from_the_supported_table() {
    let guest = real_mode_guest(&[0xf4]);
    let mut table = guest.kvm.supported_cpuid().unwrap();
    // Our own brand string in leaf 0x8000_0002 must come back unchanged.
    let brand = table
        .iter_mut()
        .find(|e| e.function == 0x8000_0002)
        .expect("brand-string leaf in the supported table");
    (brand.eax, brand.ebx, brand.ecx, brand.edx) = (0x2065_6973, 0x6574_7365, 0x0000_0074, 0);
    guest.vcpu.set_cpuid(&table).unwrap();
    let back = guest.vcpu.cpuid().unwrap();
    assert_eq!(back.len(), table.len());
    for (set, got) in table.iter().zip(&back) {
        assert_eq!((set.function, set.index), (got.function, got.index));
        if !RUNTIME_LEAVES.contains(&set.function) {
            assert_eq!(set, got);
        }
    }
    assert!(
        back.iter()
            .any(|e| e.function == 0x8000_0002 && e.eax == 0x2065_6973)
    );
}

#[test]
fn msrs_round_trip() {
    let guest = real_mode_guest(&[0xf4]);
    let written = [
        MsrEntry {
            index: SYSENTER_CS,
            data: 0x10,
        },
        MsrEntry {
            index: SYSENTER_ESP,
            data: 0xdead_b000,
        },
    ];
    assert_eq!(guest.vcpu.set_msrs(&written).unwrap(), 2);
    assert_eq!(
        guest.vcpu.msrs(&[SYSENTER_CS, SYSENTER_ESP]).unwrap(),
        written
    );
}

#[test]
fn fpu_control_words_round_trip() {
    let guest = real_mode_guest(&[0xf4]);
    let fpu = FpuState {
        fcw: 0x37f,
        mxcsr: 0x1f80,
    };
    guest.vcpu.set_fpu(&fpu).unwrap();
    // KVM_GET_FPU on the software KVM here reports MXCSR as 0 whatever was
    // set, so only the x87 control word is compared.
    assert_eq!(guest.vcpu.fpu().unwrap().fcw, 0x37f);
    guest.vcpu.set_fpu(&FpuState { fcw: 0x27f, ..fpu }).unwrap();
    assert_eq!(guest.vcpu.fpu().unwrap().fcw, 0x27f);
}

#[test]
fn lapic_register_round_trips() {
    let guest = real_mode_guest(&[0xf4]);
    let mut lapic = guest.vcpu.lapic().unwrap();
    // LVT LINT0 in ExtINT mode, LINT1 as NMI: what sie programs at boot.
    lapic.set_reg(0x350, 0x700);
    lapic.set_reg(0x360, 0x400);
    guest.vcpu.set_lapic(&lapic).unwrap();
    let back = guest.vcpu.lapic().unwrap();
    assert_eq!(back.reg(0x350), 0x700);
    assert_eq!(back.reg(0x360), 0x400);
}

/// A restore with `clock_realtime` moves the KVM clock forward by exactly
/// what it is asked; the saved state records when it was taken.
#[test]
fn the_vm_clock_advances_by_the_time_asked() {
    use std::time::Duration;
    let guest = real_mode_guest(&[0xf4]);
    let saved = guest.vm.save_state().unwrap();
    assert!(
        saved.saved_at_unix_ns > 0 && saved.age() < Duration::from_secs(60),
        "the save time is recorded"
    );
    guest.vm.restore_state(&saved).unwrap();
    let before = guest.vm.advance_clock(Duration::ZERO).unwrap();
    let after = guest.vm.advance_clock(Duration::from_secs(3600)).unwrap();
    let moved = after - before;
    assert!(
        (3_600_000_000_000..3_601_000_000_000).contains(&moved),
        "the clock moved by {moved} ns"
    );
}

/// `KVM_KVMCLOCK_CTRL` on a guest that never set up its paravirtual clock
/// is no error: there is just nobody to tell.
#[test]
fn a_guest_without_pvclock_is_not_told_of_a_pause() {
    let guest = real_mode_guest(&[0xf4]);
    assert!(!guest.vcpu.notify_paused().unwrap());
}
