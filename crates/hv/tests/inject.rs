//! Exception injection on the real `/dev/kvm`: an exception handed to a
//! real-mode guest runs its handler (read from the IVT at 0), and a second
//! one is refused while the first is still on its way in.

mod common;

use std::time::Duration;

use common::{Watchdog, real_mode_guest};
use sie_hv::VmExit;
use vm_memory::{Bytes, GuestAddress};

/// `#UD`: a hardware exception, which KVM reports back until delivered.
const UD: u8 = 6;
/// Where the `#UD` handler is.
const HANDLER: u16 = 0x2000;

#[test]
fn an_injected_exception_reaches_the_guest_handler_and_a_second_waits() {
    // The code at the entry point is never reached: the exception is
    // delivered before its first instruction.
    let mut guest = real_mode_guest(&[0xe6, 0x81]); // out 0x81, al
    let handler = [
        0xb0, 0x42, // mov al, 0x42
        0xe6, 0x80, // out 0x80, al
        0xf4, //       hlt
    ];
    guest
        .memory
        .write_slice(&handler, GuestAddress(u64::from(HANDLER)))
        .unwrap();
    // IVT entry 6: offset, then segment 0.
    let mut vector = [0u8; 4];
    vector[..2].copy_from_slice(&HANDLER.to_le_bytes());
    guest
        .memory
        .write_slice(&vector, GuestAddress(u64::from(UD) * 4))
        .unwrap();
    let mut regs = guest.vcpu.regs().unwrap();
    regs.rsp = 0x8000;
    guest.vcpu.set_regs(&regs).unwrap();

    assert!(guest.vcpu.inject_exception(UD).unwrap());
    assert!(
        !guest.vcpu.inject_exception(UD).unwrap(),
        "a second exception while the first is not delivered"
    );
    let _watchdog = Watchdog::arm("exception injection guest", Duration::from_secs(20));
    match guest.vcpu.run().unwrap() {
        VmExit::IoOut { port, data, .. } => {
            assert_eq!(port, 0x80, "the handler ran, not the code at the entry");
            assert_eq!(data, &[0x42]);
        }
        other => panic!("expected the handler's IoOut, got {other:?}"),
    }
    // Delivered: the next one is taken.
    assert!(guest.vcpu.inject_exception(UD).unwrap());
}
