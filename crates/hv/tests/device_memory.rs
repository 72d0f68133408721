//! Device memory slots on the real `/dev/kvm`: host memory placed in the
//! guest with `map_device_memory` is read without an exit, can be moved
//! (removed and placed again), and once removed its old address exits as
//! MMIO again.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Watchdog, real_mode_guest};
use sie_hv::VmExit;
use vm_memory::{Bytes, MmapRegion, VolatileMemory};

fn out_0x80(exit: VmExit<'_>) -> u8 {
    match exit {
        VmExit::IoOut {
            port: 0x80, data, ..
        } => data[0],
        other => panic!("expected a port 0x80 write, got {other:?}"),
    }
}

#[test]
fn device_memory_is_read_without_exits_moves_and_goes() {
    let code = [
        0x64, 0x8a, 0x06, 0x00, 0x00, // mov al, fs:[0x0000]
        0xe6, 0x80, //                   out 0x80, al
        0x64, 0x8a, 0x06, 0x00, 0x10, // mov al, fs:[0x1000]
        0xe6, 0x80, //                   out 0x80, al
        0x64, 0x8a, 0x06, 0x00, 0x00, // mov al, fs:[0x0000]
        0xf4, //                         hlt
    ];
    let mut guest = real_mode_guest(&code);
    let _watchdog = Watchdog::arm("device memory guest", Duration::from_secs(20));
    let region = Arc::new(MmapRegion::<()>::new(4096).unwrap());
    let bytes = region.as_volatile_slice();
    bytes.write_obj(0x5au8, 0).unwrap();
    assert!(
        guest
            .vm
            .map_device_memory(common::MMIO_BASE + 0x10, region.clone())
            .is_err(),
        "an address inside a page is refused"
    );
    let slot = guest
        .vm
        .map_device_memory(common::MMIO_BASE, region.clone())
        .unwrap();
    assert_eq!(out_0x80(guest.vcpu.run().unwrap()), 0x5a);

    // The guest moved the BAR: the same host page one page higher.
    guest.vm.unmap_device_memory(slot).unwrap();
    bytes.write_obj(0xa5u8, 0).unwrap();
    let moved = guest
        .vm
        .map_device_memory(common::MMIO_BASE + 0x1000, region.clone())
        .unwrap();
    assert_eq!(moved, slot, "a freed slot is reused");
    assert_eq!(out_0x80(guest.vcpu.run().unwrap()), 0xa5);

    // The old address is plain MMIO again.
    match guest.vcpu.run().unwrap() {
        VmExit::MmioRead { addr, .. } => assert_eq!(addr, common::MMIO_BASE),
        other => panic!("expected an MMIO read at the old address, got {other:?}"),
    }
    guest.vm.unmap_device_memory(moved).unwrap();
    assert!(
        guest.vm.unmap_device_memory(moved).is_err(),
        "already removed"
    );
}
