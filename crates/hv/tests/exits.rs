//! Exit decoding on the real `/dev/kvm`: port I/O, MMIO, triple fault.

mod common;

use std::time::Duration;

use common::{MMIO_BASE, Watchdog, real_mode_guest};
use sie_hv::GuestMemory;
use sie_hv::IoEventAddress;
use sie_hv::VmExit;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

#[test]
fn port_and_mmio_exits_carry_the_right_data() {
    let code = [
        0xb0, 0x41, //                      mov al, 0x41
        0xba, 0xf8, 0x03, //                mov dx, 0x3f8
        0xee, //                            out dx, al
        0xec, //                            in al, dx
        0xa2, 0x00, 0x20, //                mov [0x2000], al
        0xb0, 0x7e, //                      mov al, 0x7e
        0x64, 0xa2, 0x10, 0x00, //          mov [fs:0x10], al
        0x64, 0x8a, 0x1e, 0x20, 0x00, //    mov bl, [fs:0x20]
        0x88, 0x1e, 0x01, 0x20, //          mov [0x2001], bl
        0x66, 0xb8, 0x78, 0x56, 0x34, 0x12, // mov eax, 0x12345678
        0x64, 0x66, 0xa3, 0x30, 0x00, //    mov [fs:0x30], eax
        0xe6, 0x80, //                      out 0x80, al
    ];
    let mut guest = real_mode_guest(&code);
    let _watchdog = Watchdog::arm("port/MMIO guest", Duration::from_secs(20));

    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, data, .. } => {
            assert_eq!(port, 0x3f8);
            assert_eq!(data, &[0x41]);
        }
        other => panic!("expected IoOut, got {other:?}"),
    }
    match guest.vcpu.run().unwrap() {
        VmExit::IoIn { port, data, .. } => {
            assert_eq!(port, 0x3f8);
            assert_eq!(data.len(), 1);
            data[0] = 0x5a;
        }
        other => panic!("expected IoIn, got {other:?}"),
    }
    match guest.vcpu.run().unwrap() {
        VmExit::MmioWrite { addr, data } => {
            assert_eq!(addr, MMIO_BASE + 0x10);
            assert_eq!(data, &[0x7e]);
        }
        other => panic!("expected MmioWrite, got {other:?}"),
    }
    match guest.vcpu.run().unwrap() {
        VmExit::MmioRead { addr, data } => {
            assert_eq!(addr, MMIO_BASE + 0x20);
            assert_eq!(data.len(), 1);
            data[0] = 0x99;
        }
        other => panic!("expected MmioRead, got {other:?}"),
    }
    match guest.vcpu.run().unwrap() {
        VmExit::MmioWrite { addr, data } => {
            assert_eq!(addr, MMIO_BASE + 0x30);
            assert_eq!(data, &0x1234_5678u32.to_le_bytes());
        }
        other => panic!("expected 4-byte MmioWrite, got {other:?}"),
    }
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, data, .. } => {
            assert_eq!(port, 0x80);
            assert_eq!(data, &[0x78]);
        }
        other => panic!("expected IoOut to 0x80, got {other:?}"),
    }
    // The values the VMM supplied reached the guest's registers.
    let in_value: u8 = guest.memory.read_obj(GuestAddress(0x2000)).unwrap();
    let mmio_value: u8 = guest.memory.read_obj(GuestAddress(0x2001)).unwrap();
    assert_eq!((in_value, mmio_value), (0x5a, 0x99));
    assert_eq!(guest.vcpu.regs().unwrap().rbx & 0xff, 0x99);
}

/// A fault with an empty IDT: #UD cannot be delivered (#GP), nor can that
/// (#DF), so the CPU shuts down. Protected mode, because KVM's real-mode
/// interrupt delivery ignores the IDT limit and just reads the IVT at 0.
#[test]
fn fault_with_an_empty_idt_is_a_triple_fault() {
    let code = [
        0xe6, 0x80, // out 0x80, al   ; proves guest code ran in protected mode
        0x0f, 0x0b, // ud2
    ];
    let mut guest = real_mode_guest(&code);
    let mut sregs = guest.vcpu.sregs().unwrap();
    sregs.cr0 |= 1; // PE: 16-bit protected mode with the descriptor caches below
    sregs.cs.type_ = 0xb; // code, execute/read, accessed
    sregs.cs.limit = 0xffff;
    sregs.cs.s = true;
    sregs.cs.present = true;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    guest.vcpu.set_sregs(&sregs).unwrap();
    let _watchdog = Watchdog::arm("triple-fault guest", Duration::from_secs(20));
    assert!(matches!(
        guest.vcpu.run().unwrap(),
        VmExit::IoOut { port: 0x80, .. }
    ));
    match guest.vcpu.run().unwrap() {
        VmExit::Shutdown => {}
        other => panic!("expected Shutdown, got {other:?}"),
    }
}

#[test]
fn ioeventfd_absorbs_matching_writes_only() {
    let code = [
        0xba, 0xf0, 0x03, //                         mov dx, 0x3f0
        0xee, //                                     out dx, al     ; absorbed (any value)
        0x66, 0xb8, 0x07, 0x00, 0x00, 0x00, //       mov eax, 7
        0x64, 0x66, 0xa3, 0x00,
        0x01, //             mov [fs:0x100], eax ; absorbed (datamatch 7)
        0x66, 0xb8, 0x08, 0x00, 0x00, 0x00, //       mov eax, 8
        0x64, 0x66, 0xa3, 0x00, 0x01, //             mov [fs:0x100], eax ; exits (no match)
    ];
    let mut guest = real_mode_guest(&code);
    let port_event = EventFd::new(EFD_NONBLOCK).unwrap();
    let mmio_event = EventFd::new(EFD_NONBLOCK).unwrap();
    guest
        .vm
        .register_ioevent(&port_event, IoEventAddress::Pio(0x3f0), None)
        .unwrap();
    guest
        .vm
        .register_ioevent(
            &mmio_event,
            IoEventAddress::Mmio(MMIO_BASE + 0x100),
            Some(7),
        )
        .unwrap();
    let _watchdog = Watchdog::arm("ioeventfd guest", Duration::from_secs(20));
    match guest.vcpu.run().unwrap() {
        VmExit::MmioWrite { addr, data } => {
            assert_eq!(addr, MMIO_BASE + 0x100);
            assert_eq!(data, &8u32.to_le_bytes());
        }
        other => panic!("expected the unmatched MmioWrite, got {other:?}"),
    }
    assert_eq!(port_event.read().unwrap(), 1);
    assert_eq!(mmio_event.read().unwrap(), 1);
}

#[test]
fn an_unregistered_ioeventfd_lets_the_write_exit_again() {
    // A BAR move: the notify ioeventfd (any width, no datamatch) leaves the
    // old address, so the guest's write there reaches the VMM again.
    let code = [
        0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, //       mov eax, 1
        0x64, 0x66, 0xa3, 0x00, 0x02, //             mov [fs:0x200], eax ; absorbed
        0xe6, 0x80, //                               out 0x80, al        ; exits
        0x64, 0x66, 0xa3, 0x00, 0x02, //             mov [fs:0x200], eax ; exits now
    ];
    let mut guest = real_mode_guest(&code);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let addr = IoEventAddress::Mmio(MMIO_BASE + 0x200);
    guest.vm.register_ioevent(&event, addr, None).unwrap();
    let _watchdog = Watchdog::arm("ioeventfd move guest", Duration::from_secs(20));
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, .. } => assert_eq!(port, 0x80),
        other => panic!("expected the port write, got {other:?}"),
    }
    assert_eq!(event.read().unwrap(), 1);
    guest.vm.unregister_ioevent(&event, addr, None).unwrap();
    match guest.vcpu.run().unwrap() {
        VmExit::MmioWrite { addr, data } => {
            assert_eq!(addr, MMIO_BASE + 0x200);
            assert_eq!(data, &1u32.to_le_bytes());
        }
        other => panic!("expected the MmioWrite, got {other:?}"),
    }
    assert!(
        event.read().is_err(),
        "nothing signalled after unregistering"
    );
}

#[test]
fn irqfd_and_irq_lines_are_accepted() {
    let guest = real_mode_guest(&[0xf4]);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    guest.vm.register_irqfd(&event, 5).unwrap();
    guest.vm.set_irq_line(4, true).unwrap();
    guest.vm.set_irq_line(4, false).unwrap();
}

#[test]
fn mapping_memory_twice_uses_new_slots() {
    let guest = real_mode_guest(&[0xf4]);
    let more = GuestMemory::from_ranges(&[
        (GuestAddress(0x1000_0000), 0x10_0000),
        (GuestAddress(0x2000_0000), 0x10_0000),
    ])
    .unwrap();
    guest.vm.map_memory(&more).unwrap();
    // The same guest range again collides with a mapped slot.
    assert!(guest.vm.map_memory(&more).is_err());
}
