//! MSI routing on the real `/dev/kvm`: an irqfd on a GSI the VMM routed to
//! an MSI message interrupts the guest with the message's vector; a changed
//! route takes effect; a removed route injects nothing.

mod common;

use std::time::Duration;

use common::{Watchdog, real_mode_guest};
use sie_hv::{FIRST_MSI_GSI, MsiMessage, VmExit};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The local APIC's spurious-vector register (bit 8: software enable).
const SVR: usize = 0xf0;
/// The interrupt request register: 8 registers of 32 bits, 16 bytes apart.
const IRR: usize = 0x200;

fn irr_has(vector: u8, lapic: &sie_hv::x86::LapicState) -> bool {
    let reg = lapic.reg(IRR + usize::from(vector / 32) * 0x10);
    reg & (1 << (vector % 32)) != 0
}

/// A message to APIC 0, fixed delivery, edge, `vector`.
fn to_apic0(vector: u8) -> MsiMessage {
    MsiMessage {
        address: 0xfee0_0000,
        data: u32::from(vector),
    }
}

#[test]
fn an_irqfd_on_an_msi_route_interrupts_the_guest_with_its_vector() {
    // sti; hlt; then each handler reports its vector on port 0x80.
    let code = [
        0xfb, //             sti
        0xf4, //             hlt
        0xeb, 0xfd, //       jmp to hlt
    ];
    let mut guest = real_mode_guest(&code);
    let _watchdog = Watchdog::arm("MSI guest", Duration::from_secs(20));
    for (vector, handler) in [(0x41u8, 0x1100u16), (0x42, 0x1200)] {
        // mov al, vector; out 0x80, al; iret
        let body = [0xb0, vector, 0xe6, 0x80, 0xcf];
        guest
            .memory
            .write_slice(&body, GuestAddress(u64::from(handler)))
            .unwrap();
        let ivt = [handler.to_le_bytes(), [0, 0]].concat();
        guest
            .memory
            .write_slice(&ivt, GuestAddress(u64::from(vector) * 4))
            .unwrap();
    }
    let mut lapic = guest.vcpu.lapic().unwrap();
    lapic.set_reg(SVR, 0x1ff);
    guest.vcpu.set_lapic(&lapic).unwrap();

    let gsi = FIRST_MSI_GSI + 3;
    let irqfd = EventFd::new(0).unwrap();
    guest.vm.set_msi_route(gsi, Some(to_apic0(0x41))).unwrap();
    guest.vm.register_irqfd(&irqfd, gsi).unwrap();

    irqfd.write(1).unwrap();
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, data, .. } => assert_eq!((port, data), (0x80, &[0x41u8][..])),
        other => panic!("expected the vector 0x41 handler's port write, got {other:?}"),
    }

    // A changed route: the same irqfd now raises 0x42.
    guest.vm.set_msi_route(gsi, Some(to_apic0(0x42))).unwrap();
    irqfd.write(1).unwrap();
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, data, .. } => assert_eq!((port, data), (0x80, &[0x42u8][..])),
        other => panic!("expected the vector 0x42 handler's port write, got {other:?}"),
    }

    // A removed route: the irqfd raises nothing (checked in the APIC's
    // request register, since a guest that gets nothing never exits).
    guest.vm.set_msi_route(gsi, None).unwrap();
    irqfd.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let lapic = guest.vcpu.lapic().unwrap();
    assert!(!irr_has(0x41, &lapic) && !irr_has(0x42, &lapic));

    guest.vm.unregister_irqfd(&irqfd, gsi).unwrap();
}

#[test]
fn an_interrupt_controller_pin_cannot_become_an_msi_route() {
    let guest = real_mode_guest(&[0xf4]);
    assert!(
        guest
            .vm
            .set_msi_route(FIRST_MSI_GSI - 1, Some(to_apic0(0x50)))
            .is_err()
    );
}

#[test]
fn hostile_messages_are_routed_or_refused_without_harm() {
    // What a guest may write into an MSI-X table entry: addresses outside
    // the APIC window, reserved delivery modes, every bit set. KVM takes
    // or refuses each route; an irqfd on it then interrupts nothing the
    // guest did not ask for, and the VM still runs.
    let mut guest = real_mode_guest(&[0xe6, 0x80, 0xf4]); // out 0x80, al; hlt
    let _watchdog = Watchdog::arm("hostile MSI guest", Duration::from_secs(20));
    let gsi = FIRST_MSI_GSI + 7;
    let irqfd = EventFd::new(0).unwrap();
    guest.vm.register_irqfd(&irqfd, gsi).unwrap();
    for (address, data) in [
        (0, 0),
        (u64::MAX, u32::MAX),
        (0xfee0_0000, u32::MAX),
        (0xfeef_f000, 0x0700),
        (0x1_0000_0000, 0x41),
    ] {
        let _ = guest
            .vm
            .set_msi_route(gsi, Some(MsiMessage { address, data }));
        irqfd.write(1).unwrap();
    }
    guest.vm.set_msi_route(gsi, None).unwrap();
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, .. } => assert_eq!(port, 0x80),
        other => panic!("expected the guest's port write, got {other:?}"),
    }
}
