use std::io;
use std::sync::atomic::AtomicUsize;

use super::*;

#[derive(Default)]
struct CountingInterrupt(AtomicUsize);

impl Interrupt for CountingInterrupt {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn controller() -> (Arc<CountingInterrupt>, HotplugController) {
    let interrupt = Arc::new(CountingInterrupt::default());
    (interrupt.clone(), HotplugController::new(interrupt))
}

fn read(c: &HotplugController, offset: u64) -> u32 {
    let mut data = [0xaa; 4];
    c.read(offset, &mut data);
    u32::from_le_bytes(data)
}

fn write(c: &HotplugController, offset: u64, value: u32) {
    c.write(offset, &value.to_le_bytes());
}

#[test]
fn an_added_slot_is_announced_once_with_an_interrupt() {
    let (interrupt, c) = controller();
    c.announce_added(3).unwrap();
    assert_eq!(interrupt.0.load(Ordering::Relaxed), 1);
    assert_eq!(read(&c, hotplug_registers::UP), 1 << 3);
    assert_eq!(read(&c, hotplug_registers::UP), 0, "reading clears");
    assert_eq!(read(&c, hotplug_registers::DOWN), 0);
}

#[test]
fn a_removal_is_requested_then_released_by_the_guest() {
    let (interrupt, c) = controller();
    c.request_removal(5).unwrap();
    assert_eq!(interrupt.0.load(Ordering::Relaxed), 1);
    assert!(c.removal_pending(5));
    assert_eq!(read(&c, hotplug_registers::DOWN), 1 << 5);
    assert_eq!(read(&c, hotplug_registers::DOWN), 0);
    assert_eq!(read(&c, hotplug_registers::PENDING), 1 << 5);
    write(&c, hotplug_registers::EJECT, 1 << 5);
    assert!(!c.removal_pending(5));
    assert_eq!(read(&c, hotplug_registers::PENDING), 0);
    c.wait_released(5, Duration::ZERO).unwrap();
    // The release was consumed.
    assert!(c.wait_released(5, Duration::ZERO).is_err());
}

#[test]
fn the_wait_ends_when_the_guest_releases_the_slot_from_another_thread() {
    let (_, c) = controller();
    let c = Arc::new(c);
    c.request_removal(7).unwrap();
    let guest = {
        let c = c.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            write(&c, hotplug_registers::EJECT, 1 << 7);
        })
    };
    c.wait_released(7, Duration::from_secs(10)).unwrap();
    guest.join().unwrap();
}

#[test]
fn a_guest_that_never_releases_times_out_and_the_request_stays() {
    let (_, c) = controller();
    c.request_removal(2).unwrap();
    let error = c.wait_released(2, Duration::from_millis(10)).unwrap_err();
    assert!(matches!(error, HotplugError::NotReleased { slot: 2, .. }));
    assert!(error.to_string().contains("slot 2"), "{error}");
    assert!(c.removal_pending(2));
    write(&c, hotplug_registers::EJECT, 1 << 2);
    c.wait_released(2, Duration::ZERO).unwrap();
}

#[test]
fn ejects_of_slots_nobody_asked_about_are_ignored() {
    let (_, c) = controller();
    c.request_removal(4).unwrap();
    // Empty slots, the host bridge, everything at once.
    write(&c, hotplug_registers::EJECT, 1 << 9);
    write(&c, hotplug_registers::EJECT, 1);
    assert!(c.removal_pending(4));
    assert!(c.wait_released(9, Duration::ZERO).is_err());
    write(&c, hotplug_registers::EJECT, u32::MAX);
    c.wait_released(4, Duration::ZERO).unwrap();
    for slot in (0..32).filter(|&s| s != 4) {
        assert!(
            c.wait_released(slot, Duration::ZERO).is_err(),
            "slot {slot}"
        );
    }
    assert!(c.ignored_accesses() >= 3);
}

#[test]
fn slot_0_and_slots_past_31_are_refused() {
    let (interrupt, c) = controller();
    for slot in [0, 32, 255] {
        assert_eq!(c.announce_added(slot), Err(HotplugError::BadSlot(slot)));
        assert_eq!(c.request_removal(slot), Err(HotplugError::BadSlot(slot)));
        assert!(!c.removal_pending(slot));
    }
    assert_eq!(interrupt.0.load(Ordering::Relaxed), 0);
}

#[test]
fn every_offset_and_size_is_harmless() {
    let (_, c) = controller();
    c.announce_added(1).unwrap();
    c.request_removal(2).unwrap();
    for offset in 0..HOTPLUG_REGISTERS_LEN + 4 {
        for len in [1usize, 2, 3, 8] {
            let mut data = vec![0xaa; len];
            c.read(offset, &mut data);
            assert!(data.iter().all(|&b| b == 0), "read {len} at {offset}");
            c.write(offset, &vec![0xff; len]);
        }
        if offset != hotplug_registers::EJECT {
            c.write(offset, &[0xff; 4]);
        }
        if !offset.is_multiple_of(4) {
            let mut data = [0xaa; 4];
            c.read(offset, &mut data);
            assert_eq!(data, [0; 4], "misaligned read at {offset}");
        }
    }
    // None of that consumed the events or released the slot.
    assert_eq!(read(&c, hotplug_registers::UP), 1 << 1);
    assert_eq!(read(&c, hotplug_registers::DOWN), 1 << 2);
    assert!(c.removal_pending(2));
    assert_eq!(read(&c, hotplug_registers::EJECT), 0);
}

#[test]
fn adding_a_device_again_forgets_an_uncollected_release() {
    let (_, c) = controller();
    c.request_removal(6).unwrap();
    write(&c, hotplug_registers::EJECT, 1 << 6);
    c.announce_added(6).unwrap();
    assert!(c.wait_released(6, Duration::ZERO).is_err());
}
