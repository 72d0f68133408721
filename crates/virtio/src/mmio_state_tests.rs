//! A transport's saved state brought back on a new transport over the same
//! guest memory: the driver goes on where it was, and states that do not
//! fit are refused.

use std::sync::Arc;

use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};

use crate::rng::Rng;
use crate::testing::{CountingIrq, DATA, Driver, Ring};
use crate::{TransportStateError, VirtioMmioTransport};

fn request(ring: &Ring, mem: &crate::GuestMemory, head: u16, slot: u16) {
    ring.set_chain(mem, head, &[(DATA + u64::from(head) * 0x100, 32, true)]);
    ring.set_avail_slot(mem, slot, head);
    ring.set_avail_idx(mem, slot + 1);
}

#[test]
fn a_restored_transport_serves_the_next_request_where_the_old_one_stopped() {
    let (old, mem, _) = crate::testing::transport(Rng::new());
    let driver = Driver::new(&old);
    let ring = Ring::new(0x1000, 16);
    driver.start(&[ring]);
    for slot in 0..3 {
        request(&ring, &mem, slot, slot);
        driver.notify(0);
    }
    assert_eq!(ring.used_idx(&mem), 3);
    let saved = old.state();
    assert_eq!(
        saved.status & VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_DRIVER_OK
    );
    let json = serde_json::to_string(&saved).unwrap();

    // A new process: a fresh device on the (restored) same memory.
    let irq = Arc::new(CountingIrq::default());
    let new = VirtioMmioTransport::new(Rng::new(), mem.clone(), irq).unwrap();
    new.restore(&serde_json::from_str(&json).unwrap()).unwrap();
    assert_eq!(new.status(), saved.status, "live without the driver's help");
    request(&ring, &mem, 3, 3);
    Driver::new(&new).notify(0);
    assert_eq!(ring.used_idx(&mem), 4, "the fourth request was served");
    assert_eq!(ring.used(&mem, 3), (3, 32));
    assert_eq!(new.state(), VirtioMmioTransport::state(&new));
}

#[test]
fn a_kick_left_in_the_old_process_is_served_after_the_restore() {
    let (old, mem, _) = crate::testing::transport(Rng::new());
    let driver = Driver::new(&old);
    let ring = Ring::new(0x1000, 16);
    driver.start(&[ring]);
    request(&ring, &mem, 0, 0);
    driver.notify(0);
    // The second kick reaches the old eventfd, but the VM is paused and
    // its state taken before the worker reads it.
    request(&ring, &mem, 1, 1);
    driver.kick(0);
    let saved = old.state();
    assert_eq!(ring.used_idx(&mem), 1);

    let irq = Arc::new(CountingIrq::default());
    let new = VirtioMmioTransport::new(Rng::new(), mem.clone(), irq).unwrap();
    assert!(new.queue_events()[0].read().is_err(), "nothing pending yet");
    new.restore(&saved).unwrap();
    assert!(
        new.queue_events()[0].read().is_ok(),
        "the restore leaves the worker a notification for each live queue"
    );
    new.queue_event(0);
    assert_eq!(
        ring.used_idx(&mem),
        2,
        "the request of the lost kick was served"
    );
}

#[test]
fn a_state_for_another_device_or_other_queues_is_refused() {
    let (old, _mem, _) = crate::testing::transport(Rng::new());
    let mut saved = old.state();
    saved.device_type = 2;
    let (new, _, _) = crate::testing::transport(Rng::new());
    assert!(matches!(
        new.restore(&saved),
        Err(TransportStateError::DeviceType { saved: 2, .. })
    ));
    let mut saved = old.state();
    saved.queues.push(saved.queues[0]);
    assert!(matches!(
        new.restore(&saved),
        Err(TransportStateError::Queues(_))
    ));
    assert_eq!(new.status(), 0, "left as it was");
}

#[test]
fn rings_outside_guest_memory_leave_the_device_needing_a_reset() {
    let (old, _mem, _) = crate::testing::transport(Rng::new());
    let driver = Driver::new(&old);
    driver.start(&[Ring::new(0x1000, 16)]);
    let mut saved = old.state();
    saved.queues[0].used_ring = u64::MAX - 1;
    let (new, _, _) = crate::testing::transport(Rng::new());
    assert!(new.restore(&saved).is_err(), "its idx cannot even be read");
    let mut saved = old.state();
    saved.queues[0].desc_table = 1 << 40;
    new.restore(&saved).unwrap();
    assert_ne!(new.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
}

#[test]
fn a_restored_vsock_tells_the_driver_its_connections_are_gone() {
    use crate::testing::Driver;
    use crate::vsock::Vsock;
    use vm_memory::{Bytes, GuestAddress};

    let dir = std::env::temp_dir().join(format!("sie-vsock-restore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (old, mem, _) = crate::testing::transport(Vsock::new(3, &dir.join("a.sock")).unwrap());
    let rings = [
        Ring::new(0x1000, 16),
        Ring::new(0x2000, 16),
        Ring::new(0x3000, 16),
    ];
    Driver::new(&old).start(&rings);
    // The driver keeps an event buffer posted, as Linux does.
    let event_buffer = DATA + 0x8000;
    mem.write_obj(0xffff_ffffu32, GuestAddress(event_buffer))
        .unwrap();
    rings[2].set_chain(&mem, 0, &[(event_buffer, 8, true)]);
    rings[2].publish(&mem, &[0]);
    let saved = old.state();

    let irq = Arc::new(CountingIrq::default());
    let new = VirtioMmioTransport::new(
        Vsock::new(3, &dir.join("b.sock")).unwrap(),
        mem.clone(),
        irq.clone(),
    )
    .unwrap();
    new.restore(&saved).unwrap();
    assert_eq!(rings[2].used_idx(&mem), 1, "the event buffer came back");
    assert_eq!(rings[2].used(&mem, 0), (0, 4));
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(event_buffer)).unwrap(),
        0,
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    assert_eq!(irq.count(), 1);
    assert_eq!(new.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
