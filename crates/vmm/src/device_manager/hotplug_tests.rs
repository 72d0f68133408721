use std::sync::Mutex;
use std::time::Instant;

use sie_obs::Observatory;
use sie_pci::{
    BarInfo, BarKind, BarMapper, ConfigSpace, ConfigWriteOutcome, HOTPLUG_PORT, PciHeader,
    hotplug_registers,
};

use super::*;
use crate::device_manager::{DeviceLayout, DeviceManager};
use crate::test_doubles::FakeVm;

/// A device with one 64-bit memory BAR of 16 KiB.
struct OneBar(Mutex<ConfigSpace>);

impl OneBar {
    fn new() -> Arc<Self> {
        let mut config = ConfigSpace::new(PciHeader {
            vendor_id: 0x1af4,
            device_id: 0x1042,
            ..PciHeader::default()
        });
        config
            .add_bar(
                0,
                BarKind::Memory64 {
                    prefetchable: false,
                },
                0x4000,
            )
            .unwrap();
        Arc::new(Self(Mutex::new(config)))
    }
}

impl PciDevice for OneBar {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        self.0.lock().unwrap().read(offset, data);
    }
    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        self.0.lock().unwrap().write(offset, data)
    }
    fn read_bar(&self, _bar: u8, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_bar(&self, _bar: u8, _offset: u64, _data: &[u8]) {}
    fn bars(&self) -> Vec<BarInfo> {
        self.0.lock().unwrap().bars()
    }
    fn bar_moved(&self, _moved: &sie_pci::BarMove, _mapper: &dyn BarMapper) -> std::io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &str {
        "one-bar"
    }
}

fn layout() -> DeviceLayout {
    let vm = Arc::new(FakeVm::default());
    let mut manager =
        DeviceManager::new(vm.as_ref(), Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
    manager.add_pci_bus(vm.clone(), 128 << 20, false).unwrap();
    manager.finish()
}

/// A guest register access through the port bus, as a vCPU exit makes it.
fn guest_read(layout: &DeviceLayout, register: u64) -> u32 {
    let hit = layout.pio.find(u64::from(HOTPLUG_PORT) + register).unwrap();
    let mut data = [0u8; 4];
    hit.device.read(hit.offset, &mut data);
    u32::from_le_bytes(data)
}

fn guest_write(layout: &DeviceLayout, register: u64, value: u32) {
    let hit = layout.pio.find(u64::from(HOTPLUG_PORT) + register).unwrap();
    hit.device.write(hit.offset, &value.to_le_bytes());
}

#[test]
fn a_plugged_device_takes_a_free_slot_with_its_bar_placed_and_is_announced() {
    let layout = layout();
    let hotplug = layout.pci_hotplug.clone().expect("hotplug with pci");
    let slot = hotplug.plug("scratch", OneBar::new(), None).unwrap();
    assert_eq!(slot, 1, "the first slot after the host bridge");
    let device = layout
        .pci
        .as_ref()
        .unwrap()
        .device(slot)
        .expect("on the bus");
    let bar = device.bars()[0];
    assert!(bar.decoding && bar.address >= 4 << 30, "{bar:?}");
    assert_eq!(guest_read(&layout, hotplug_registers::UP), 1 << slot);
    assert_eq!(guest_read(&layout, hotplug_registers::UP), 0);
}

#[test]
fn an_unplug_waits_for_the_guest_then_frees_the_slot_bars_and_msi_gsis() {
    let layout = Arc::new(layout());
    let hotplug = layout.pci_hotplug.clone().unwrap();
    let msi = hotplug.allocate_msi_gsis("scratch", 3).unwrap();
    let slot = hotplug.plug("scratch", OneBar::new(), Some(msi)).unwrap();
    let address = layout.pci.as_ref().unwrap().device(slot).unwrap().bars()[0].address;
    // The guest: reads DOWN from its event handler, then runs _EJ0.
    let guest = {
        let layout = layout.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            while guest_read(&layout, hotplug_registers::DOWN) & (1 << slot) == 0 {
                assert!(started.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(1));
            }
            guest_write(&layout, hotplug_registers::EJECT, 1 << slot);
        })
    };
    let removed = hotplug.unplug(slot, Duration::from_secs(10)).unwrap();
    guest.join().unwrap();
    assert_eq!(removed.name(), "one-bar");
    assert!(layout.pci.as_ref().unwrap().device(slot).is_none());
    // Everything came back: the same slot, BAR address and GSIs again.
    assert_eq!(hotplug.allocate_msi_gsis("again", 3).unwrap(), msi);
    assert_eq!(hotplug.plug("again", OneBar::new(), None).unwrap(), slot);
    let again = layout.pci.as_ref().unwrap().device(slot).unwrap().bars()[0].address;
    assert_eq!(again, address);
}

#[test]
fn a_guest_that_does_not_let_go_keeps_the_device_and_a_later_unplug_succeeds() {
    let layout = layout();
    let hotplug = layout.pci_hotplug.clone().unwrap();
    let slot = hotplug.plug("stuck", OneBar::new(), None).unwrap();
    let error = hotplug
        .unplug(slot, Duration::from_millis(20))
        .err()
        .expect("a timeout");
    let message = crate::error::error_chain(&error);
    assert!(message.contains("did not release PCI slot 1"), "{message}");
    assert!(layout.pci.as_ref().unwrap().device(slot).is_some());
    assert_eq!(guest_read(&layout, hotplug_registers::PENDING), 1 << slot);
    guest_write(&layout, hotplug_registers::EJECT, 1 << slot);
    hotplug.unplug(slot, Duration::ZERO).unwrap();
    assert!(layout.pci.as_ref().unwrap().device(slot).is_none());
}

#[test]
fn empty_slots_and_the_host_bridge_cannot_be_unplugged() {
    let layout = layout();
    let hotplug = layout.pci_hotplug.clone().unwrap();
    for slot in [0, 5, 31, 32, 200] {
        assert!(hotplug.unplug(slot, Duration::ZERO).is_err(), "slot {slot}");
    }
    assert!(
        layout.pci.as_ref().unwrap().device(0).is_some(),
        "host bridge"
    );
    // Nothing was asked of the guest.
    assert_eq!(guest_read(&layout, hotplug_registers::DOWN), 0);
}

#[test]
fn a_full_bus_refuses_another_device() {
    let layout = layout();
    let hotplug = layout.pci_hotplug.clone().unwrap();
    for _ in 1..32 {
        hotplug.plug("filler", OneBar::new(), None).unwrap();
    }
    let error = hotplug
        .plug("one too many", OneBar::new(), None)
        .err()
        .unwrap();
    let message = crate::error::error_chain(&error);
    assert!(message.contains("no free PCI slot"), "{message}");
}
