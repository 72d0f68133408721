use std::time::Instant;

use super::*;
use crate::test_doubles::FakeVm;

struct Nothing;

impl BusDevice for Nothing {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {}
}

fn manager(vm: &FakeVm) -> DeviceManager<'_> {
    DeviceManager::new(vm, Arc::new(Observatory::new(Instant::now(), 1))).unwrap()
}

#[test]
fn legacy_lines_are_claimed_exactly_and_shared_lines_wired_once() {
    let vm = FakeVm::default();
    let mut manager = manager(&vm);
    let com1 = manager.fixed_line(4).unwrap();
    let com3 = manager.fixed_line(4).unwrap();
    com1.trigger().unwrap();
    com3.trigger().unwrap();
    manager.fixed_line(1).unwrap();
    assert_eq!(*vm.irqfds.lock().unwrap(), [4, 1], "one irqfd per line");
    assert!(manager.reserve_gsi(4).is_err(), "a wired line is taken");
    assert!(
        manager.fixed_line(0).is_err(),
        "the PIT's line is never handed out"
    );
    assert!(manager.fixed_line(2).is_err(), "nor the cascade");
}

#[test]
fn allocated_lines_skip_every_claimed_one_and_run_out_cleanly() {
    let vm = FakeVm::default();
    let mut manager = manager(&vm);
    for gsi in [1, 3, 4] {
        manager.fixed_line(gsi).unwrap();
    }
    manager.reserve_gsi(8).unwrap();
    let mut handed = Vec::new();
    while let Ok((gsi, _)) = manager.allocate_line("virtio") {
        handed.push(gsi);
    }
    assert_eq!(
        handed,
        [
            5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22
        ]
    );
    let error = manager.allocate_line("one too many").err().unwrap();
    assert!(error.to_string().contains("one too many"), "{error}");
}

#[test]
fn mmio_is_placed_exactly_or_first_fit_and_never_overlaps() {
    let vm = FakeVm::default();
    let mut manager = manager(&vm);
    let timer = sie_arch::layout::BOOT_TIMER_ADDR;
    assert_eq!(
        manager
            .add_mmio("timer", Some(timer), 0x1000, Arc::new(Nothing))
            .unwrap(),
        timer
    );
    let a = manager
        .add_mmio("a", None, 0x1000, Arc::new(Nothing))
        .unwrap();
    let b = manager
        .add_mmio("b", None, 0x1000, Arc::new(Nothing))
        .unwrap();
    assert_eq!((a, b), (timer + 0x1000, timer + 0x2000));
    assert!(
        manager
            .add_mmio("clash", Some(a), 0x1000, Arc::new(Nothing))
            .is_err()
    );
    assert!(
        manager
            .add_mmio("outside", Some(0x1000), 0x1000, Arc::new(Nothing))
            .is_err()
    );
    let layout = manager.finish();
    assert!(layout.mmio.find(a + 0xfff).is_some());
    assert!(layout.mmio.find(b + 0x1000).is_none());
}

#[test]
fn devices_register_with_the_observatory_as_they_are_placed() {
    let vm = FakeVm::default();
    let obs = Arc::new(Observatory::new(Instant::now(), 1));
    let mut manager = DeviceManager::new(&vm, obs.clone()).unwrap();
    manager
        .add_pio("com1", 0x3f8, 8, Arc::new(Nothing))
        .unwrap();
    manager
        .add_mmio("virtio", None, 0x1000, Arc::new(Nothing))
        .unwrap();
    let names: Vec<String> = obs.report().devices.into_iter().map(|d| d.name).collect();
    assert_eq!(names, ["com1", "virtio"]);
    assert!(
        manager
            .add_pio("clash", 0x3f9, 1, Arc::new(Nothing))
            .is_err()
    );
}

#[test]
fn the_command_line_is_derived_from_the_described_devices() {
    let vm = FakeVm::default();
    let mut manager = manager(&vm);
    manager.describe(AcpiDevice::Serial {
        port: 0x3f8,
        irq: 4,
    });
    manager.describe(AcpiDevice::VirtioMmio {
        addr: 0xc000_1000,
        len: 0x1000,
        irq: 5,
    });
    let layout = manager.finish();
    let mut cmdline = Cmdline::new(256).unwrap();
    cmdline.insert_str("console=ttyS0").unwrap();
    layout.add_virtio_mmio_args(&mut cmdline).unwrap();
    assert_eq!(
        cmdline.as_cstring().unwrap().to_str().unwrap(),
        "console=ttyS0 virtio_mmio.device=4K@0xc0001000:5"
    );
    assert_eq!(layout.acpi.len(), 2);
}

#[test]
fn msi_gsis_start_past_the_ioapic_pins_and_run_out() {
    let vm = FakeVm::default();
    let mut manager = manager(&vm);
    assert_eq!(manager.allocate_msi_gsis("a", 3).unwrap(), 24);
    assert_eq!(manager.allocate_msi_gsis("b", 2).unwrap(), 27);
    let error = manager.allocate_msi_gsis("c", 1000).unwrap_err();
    assert!(
        crate::error::error_chain(&error).contains("no 1000 free MSI"),
        "{error}"
    );
    // ISA lines are a separate pool.
    assert_eq!(manager.allocate_line("d").unwrap().0, 1);
}
