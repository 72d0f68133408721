//! KVM's dirty page log on the real `/dev/kvm`: a page the guest writes is
//! reported once, and reading the log clears it.

mod common;

use std::time::Duration;

use common::{Watchdog, real_mode_guest};
use sie_hv::{GuestMemory, VmExit};
use vm_memory::GuestAddress;

/// Bit `page` of a slot's log.
fn is_set(pages: &[u64], page: usize) -> bool {
    pages[page / 64] & (1 << (page % 64)) != 0
}

#[test]
fn a_page_the_guest_writes_is_logged_once() {
    let code = [
        0xc6, 0x06, 0x00, 0x50, 0x42, //    mov byte [0x5000], 0x42
        0xe6, 0x80, //                      out 0x80, al
        0xc6, 0x06, 0x00, 0x70, 0x43, //    mov byte [0x7000], 0x43
        0xe6, 0x80, //                      out 0x80, al
    ];
    let mut guest = real_mode_guest(&code);
    let _watchdog = Watchdog::arm("dirty-log guest", Duration::from_secs(20));
    assert!(
        guest.vm.take_dirty_log().is_err(),
        "logging is off at first"
    );
    guest.vm.enable_dirty_log().unwrap();

    assert!(matches!(
        guest.vcpu.run().unwrap(),
        VmExit::IoOut { port: 0x80, .. }
    ));
    let logs = guest.vm.take_dirty_log().unwrap();
    assert_eq!(logs.len(), 1, "one slot");
    assert_eq!(logs[0].guest_addr, 0);
    assert!(is_set(&logs[0].pages, 5), "the written page is logged");
    assert!(!is_set(&logs[0].pages, 7), "a page not yet written is not");
    assert!(!is_set(&logs[0].pages, 0x100), "nor is one far away");

    assert!(matches!(
        guest.vcpu.run().unwrap(),
        VmExit::IoOut { port: 0x80, .. }
    ));
    let logs = guest.vm.take_dirty_log().unwrap();
    assert!(is_set(&logs[0].pages, 7), "the second write is logged");
    assert!(
        !is_set(&logs[0].pages, 5),
        "the first was cleared by the read"
    );
}

#[test]
fn memory_mapped_after_logging_started_is_logged_too() {
    let guest = real_mode_guest(&[0xf4]);
    guest.vm.enable_dirty_log().unwrap();
    let more = GuestMemory::from_ranges(&[(GuestAddress(0x1000_0000), 0x10_0000)]).unwrap();
    guest.vm.map_memory(&more).unwrap();
    // KVM refuses KVM_GET_DIRTY_LOG on a slot without the logging flag.
    let logs = guest.vm.take_dirty_log().unwrap();
    let starts: Vec<u64> = logs.iter().map(|log| log.guest_addr).collect();
    assert_eq!(starts, [0, 0x1000_0000]);
    assert_eq!(logs[1].len, 0x10_0000);
    assert_eq!(logs[1].pages.len(), 0x100 / 64, "one bit per 4 KiB page");
}
