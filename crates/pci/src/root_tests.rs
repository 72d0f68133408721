use std::sync::Mutex;

use super::*;
use crate::config_space::{ConfigSpace, ConfigWriteOutcome, PciHeader};

/// A device with some BARs backed by plain memory, recording its moves.
struct TestDevice {
    config: Mutex<ConfigSpace>,
    memory: Mutex<Vec<u8>>,
    moves: Mutex<Vec<BarMove>>,
}

const WIDE: BarKind = BarKind::Memory64 {
    prefetchable: false,
};

impl TestDevice {
    fn new(bars: &[(u8, BarKind, u64)]) -> Arc<Self> {
        let mut config = ConfigSpace::new(PciHeader {
            vendor_id: 0x1234,
            device_id: 0x5678,
            ..PciHeader::default()
        });
        for &(index, kind, size) in bars {
            config.add_bar(index, kind, size).unwrap();
        }
        Arc::new(Self {
            config: Mutex::new(config),
            memory: Mutex::new(vec![0; 0x10000]),
            moves: Mutex::new(Vec::new()),
        })
    }

    fn take_moves(&self) -> Vec<(u8, Option<u64>, Option<u64>)> {
        let moves = std::mem::take(&mut *self.moves.lock().unwrap());
        moves.iter().map(|m| (m.index, m.from, m.to)).collect()
    }
}

impl PciDevice for TestDevice {
    fn read_config(&self, offset: u16, data: &mut [u8]) {
        self.config.lock().unwrap().read(offset, data);
    }
    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome {
        self.config.lock().unwrap().write(offset, data)
    }
    fn read_bar(&self, bar: u8, offset: u64, data: &mut [u8]) {
        let start = usize::from(bar) * 0x1000 + offset as usize % 0x1000;
        let memory = self.memory.lock().unwrap();
        data.copy_from_slice(&memory[start..start + data.len()]);
    }
    fn write_bar(&self, bar: u8, offset: u64, data: &[u8]) {
        let start = usize::from(bar) * 0x1000 + offset as usize % 0x1000;
        self.memory.lock().unwrap()[start..start + data.len()].copy_from_slice(data);
    }
    fn bars(&self) -> Vec<BarInfo> {
        self.config.lock().unwrap().bars()
    }
    fn bar_moved(&self, moved: &BarMove, _mapper: &dyn BarMapper) -> std::io::Result<()> {
        self.moves.lock().unwrap().push(*moved);
        Ok(())
    }
    fn name(&self) -> &str {
        "test"
    }
}

const MMIO32: AddressRange = AddressRange::new(0xc000_0000, 0x1000_0000);
const MMIO64: AddressRange = AddressRange::new(0x10_0000_0000, 0x10_0000_0000);

fn root() -> PciRoot {
    PciRoot::new(
        PciWindows {
            mmio32: Some(MMIO32),
            mmio64: Some(MMIO64),
            io: Some(AddressRange::new(0x1000, 0x1000)),
        },
        Arc::new(crate::NoBarMapper),
    )
}

/// A bump allocator over both windows.
fn bump() -> impl FnMut(&BarRequest) -> Result<u64, Box<dyn Error + Send + Sync>> {
    let mut next32 = MMIO32.base;
    let mut next64 = MMIO64.base;
    let mut next_io = 0x1000;
    move |request| {
        let next = match request.kind {
            BarKind::Memory32 => &mut next32,
            BarKind::Memory64 { .. } => &mut next64,
            BarKind::Io => &mut next_io,
        };
        let address = next.next_multiple_of(request.size);
        *next = address + request.size;
        Ok(address)
    }
}

fn read32(root: &PciRoot, slot: u8, offset: u16) -> u32 {
    let mut data = [0u8; 4];
    root.read_config(Bdf::slot(slot), offset, &mut data);
    u32::from_le_bytes(data)
}

fn write32(root: &PciRoot, slot: u8, offset: u16, value: u32) {
    root.write_config(Bdf::slot(slot), offset, &value.to_le_bytes());
}

fn window_read(window: &PciBarWindow, addr: u64) -> u32 {
    let mut data = [0u8; 4];
    sie_devices::BusDevice::read(window, addr - window.range().base, &mut data);
    u32::from_le_bytes(data)
}

fn window_write(window: &PciBarWindow, addr: u64, value: u32) {
    sie_devices::BusDevice::write(window, addr - window.range().base, &value.to_le_bytes());
}

#[test]
fn host_bridge_is_at_00_0_and_absent_functions_read_all_ones() {
    let root = root();
    assert_eq!(read32(&root, 0, 0), 0x0d57_8086);
    assert_eq!(read32(&root, 0, 8) >> 16, 0x0600);
    assert_eq!(read32(&root, 1, 0), u32::MAX);
    assert_eq!(read32(&root, 31, 0), u32::MAX);
    let mut data = [0u8; 2];
    root.read_config(
        Bdf {
            bus: 1,
            device: 0,
            function: 0,
        },
        0,
        &mut data,
    );
    assert_eq!(data, [0xff; 2]);
    root.read_config(
        Bdf {
            bus: 0,
            device: 0,
            function: 1,
        },
        0,
        &mut data,
    );
    assert_eq!(data, [0xff; 2]);
    root.read_config(Bdf::slot(32), 0, &mut data);
    assert_eq!(data, [0xff; 2]);
    assert_eq!(root.rejected_accesses(), 0, "enumerating is not an error");
    let mut wide = [0u8; 8];
    root.read_config(Bdf::slot(0), 0, &mut wide);
    root.read_config(Bdf::slot(0), 4095, &mut data);
    root.read_config(Bdf::slot(0), u16::MAX, &mut data);
    root.write_config(Bdf::slot(0), 4094, &[0; 4]);
    root.read_config(Bdf::slot(0), 0, &mut []);
    assert_eq!(root.rejected_accesses(), 5);
    assert!(root.remove_device(0).is_none(), "the host bridge stays");
}

#[test]
fn adding_a_device_places_programs_and_maps_its_bars() {
    let root = root();
    let device = TestDevice::new(&[
        (0, BarKind::Memory32, 0x1000),
        (2, WIDE, 0x4000),
        (4, BarKind::Io, 0x20),
    ]);
    let mut requests = Vec::new();
    let mut alloc = bump();
    let bdf = root
        .add_device(device.clone(), &mut |r| {
            requests.push(*r);
            alloc(r)
        })
        .unwrap();
    assert_eq!(bdf, Bdf::slot(1));
    let listed: Vec<_> = root
        .devices()
        .iter()
        .map(|(bdf, d)| (*bdf, d.name().to_string()))
        .collect();
    assert_eq!(
        listed,
        vec![(Bdf::slot(0), "host bridge".into()), (bdf, "test".into())]
    );
    assert_eq!(requests.len(), 3);
    assert_eq!(
        requests[1],
        BarRequest {
            bdf,
            index: 2,
            kind: WIDE,
            size: 0x4000
        }
    );
    assert_eq!(read32(&root, 1, 0x10), 0xc000_0000);
    assert_eq!(read32(&root, 1, 0x18), 0x0000_0004);
    assert_eq!(read32(&root, 1, 0x1c), 0x10);
    assert_eq!(read32(&root, 1, 0x20), 0x1001);
    let command = read32(&root, 1, 4) as u16;
    assert_eq!(command, command::MEMORY | command::IO | command::BUS_MASTER);
    assert_eq!(
        device.take_moves(),
        vec![
            (0, None, Some(0xc000_0000)),
            (2, None, Some(0x10_0000_0000)),
            (4, None, Some(0x1000))
        ]
    );
    let mmio64 = root.bar_window(WindowKind::Mmio64).unwrap();
    window_write(&mmio64, 0x10_0000_0010, 0xabcd);
    assert_eq!(window_read(&mmio64, 0x10_0000_0010), 0xabcd);
    let io = root.bar_window(WindowKind::Io).unwrap();
    window_write(&io, 0x1004, 7);
    assert_eq!(window_read(&io, 0x1004), 7);
    assert_eq!(window_read(&io, 0x1020), u32::MAX);
    assert_eq!(io.misses(), 1);
}

#[test]
fn bad_placements_are_refused() {
    let root = root();
    let device = TestDevice::new(&[(0, BarKind::Memory32, 0x1000)]);
    let err = root
        .add_device(device.clone(), &mut |_| Err("window full".into()))
        .unwrap_err();
    assert!(matches!(
        err,
        PciRootError::BarPlacement {
            index: 0,
            size: 0x1000,
            ..
        }
    ));
    for address in [0xc000_0800, 0xbfff_f000, 0xd000_0000, 0x10_0000_0000, 0] {
        let err = root
            .add_device(device.clone(), &mut |_| Ok(address))
            .unwrap_err();
        assert!(
            matches!(err, PciRootError::BarAddress { .. }),
            "{address:#x}"
        );
    }
    assert!(matches!(
        root.add_device_at(0, device.clone(), &mut bump()),
        Err(PciRootError::SlotUnavailable(0))
    ));
    assert!(matches!(
        root.add_device_at(32, device.clone(), &mut bump()),
        Err(PciRootError::SlotUnavailable(32))
    ));
    root.add_device_at(7, device.clone(), &mut bump()).unwrap();
    assert!(matches!(
        root.add_device_at(7, device.clone(), &mut bump()),
        Err(PciRootError::SlotUnavailable(7))
    ));
}

#[test]
fn the_bus_fills_up_at_31_devices() {
    let root = root();
    for slot in 1..32 {
        let bdf = root.add_device(TestDevice::new(&[]), &mut bump()).unwrap();
        assert_eq!(bdf, Bdf::slot(slot));
    }
    assert!(matches!(
        root.add_device(TestDevice::new(&[]), &mut bump()),
        Err(PciRootError::NoFreeSlot)
    ));
}

#[test]
fn guest_relocation_moves_the_route() {
    let root = root();
    let device = TestDevice::new(&[(0, BarKind::Memory32, 0x1000)]);
    root.add_device(device.clone(), &mut bump()).unwrap();
    device.take_moves();
    let mmio32 = root.bar_window(WindowKind::Mmio32).unwrap();
    window_write(&mmio32, 0xc000_0004, 0x55);
    write32(&root, 1, 0x10, 0xc800_0000);
    assert_eq!(
        device.take_moves(),
        vec![(0, Some(0xc000_0000), Some(0xc800_0000))]
    );
    assert_eq!(window_read(&mmio32, 0xc800_0004), 0x55);
    assert_eq!(window_read(&mmio32, 0xc000_0004), u32::MAX);
    // Linux's sizing dance: decode off, all ones, restore, decode on.
    write32(&root, 1, 4, u32::from(command::BUS_MASTER));
    assert_eq!(device.take_moves(), vec![(0, Some(0xc800_0000), None)]);
    assert_eq!(window_read(&mmio32, 0xc800_0004), u32::MAX);
    write32(&root, 1, 0x10, u32::MAX);
    assert_eq!(read32(&root, 1, 0x10), 0xffff_f000);
    write32(&root, 1, 0x10, 0xc800_0000);
    assert!(device.take_moves().is_empty());
    write32(
        &root,
        1,
        4,
        u32::from(command::BUS_MASTER | command::MEMORY),
    );
    assert_eq!(device.take_moves(), vec![(0, None, Some(0xc800_0000))]);
    assert_eq!(window_read(&mmio32, 0xc800_0004), 0x55);
    // Accesses spilling past the BAR's end do not reach it.
    let mut wide = [0u8; 8];
    sie_devices::BusDevice::read(mmio32.as_ref(), 0x0800_0ffc, &mut wide);
    assert_eq!(wide, [0xff; 8]);
}

#[test]
fn silly_addresses_decode_nowhere() {
    let root = root();
    let device = TestDevice::new(&[(0, WIDE, 0x4000)]);
    root.add_device(device.clone(), &mut bump()).unwrap();
    device.take_moves();
    let mut expected = Vec::new();
    let (mut low_now, mut high_now) = (0u32, 0x10u32);
    let mut from = Some(0x10_0000_0000);
    for (low, high) in [
        (0, 0),                     // address 0: over RAM
        (0xffff_c000, 0xffff_ffff), // the very top: its end wraps
        (0xffff_c000, 0),           // just below 4 GiB, outside the 32-bit window
        (0xcfff_c000, 0),           // the last 16 KiB of the 32-bit window: fine
        (0xd000_0000, 0),           // just past it
        (0xffff_c000, 0x1f),        // the end of the 64-bit window: fine
        (0x0000_0000, 0x20),        // just past it
    ] {
        // Each half-written state decodes (or not) on its own.
        for (register, value) in [(0x10, low), (0x14, high)] {
            write32(&root, 1, register, value);
            if register == 0x10 {
                low_now = value;
            } else {
                high_now = value;
            }
            let address = u64::from(high_now) << 32 | u64::from(low_now);
            let fits32 = (0xc000_0000..=0xcfff_c000).contains(&address);
            let fits64 = (0x10_0000_0000..=0x1f_ffff_c000).contains(&address);
            let to = (fits32 || fits64).then_some(address);
            if to != from {
                expected.push((0, from, to));
                from = to;
            }
        }
    }
    assert_eq!(device.take_moves(), expected);
    assert_eq!(root.bar_move_errors(), 0);
}

#[test]
fn overlapping_bars_last_mapped_wins_and_the_older_shows_through_again() {
    let root = root();
    let a = TestDevice::new(&[(0, BarKind::Memory32, 0x1000)]);
    let b = TestDevice::new(&[(0, BarKind::Memory32, 0x1000)]);
    root.add_device(a.clone(), &mut |_| Ok(0xc000_0000))
        .unwrap();
    root.add_device(b.clone(), &mut |_| Ok(0xc000_1000))
        .unwrap();
    let mmio32 = root.bar_window(WindowKind::Mmio32).unwrap();
    window_write(&mmio32, 0xc000_0000, 0xaaaa);
    window_write(&mmio32, 0xc000_1000, 0xbbbb);
    write32(&root, 2, 0x10, 0xc000_0000);
    assert_eq!(window_read(&mmio32, 0xc000_0000), 0xbbbb);
    write32(&root, 2, 0x10, 0xc000_2000);
    assert_eq!(window_read(&mmio32, 0xc000_0000), 0xaaaa);
    assert_eq!(window_read(&mmio32, 0xc000_2000), 0xbbbb);
}

#[test]
fn removing_a_device_unmaps_its_bars() {
    let root = root();
    let device = TestDevice::new(&[
        (0, BarKind::Memory32, 0x1000),
        (1, BarKind::Memory32, 0x1000),
    ]);
    root.add_device(device.clone(), &mut bump()).unwrap();
    write32(&root, 1, 4, u32::from(command::MEMORY));
    write32(&root, 1, 0x14, 0);
    device.take_moves();
    assert!(root.remove_device(1).is_some());
    assert_eq!(device.take_moves(), vec![(0, Some(0xc000_0000), None)]);
    assert_eq!(read32(&root, 1, 0), u32::MAX);
    let mmio32 = root.bar_window(WindowKind::Mmio32).unwrap();
    assert_eq!(window_read(&mmio32, 0xc000_0000), u32::MAX);
    assert_eq!(root.routes.len(), 0);
    assert!(root.remove_device(1).is_none());
    // The slot is free again.
    assert_eq!(root.add_device(device, &mut bump()).unwrap(), Bdf::slot(1));
}

#[test]
fn windows_are_only_those_configured() {
    let bare = PciRoot::new(PciWindows::default(), Arc::new(crate::NoBarMapper));
    assert!(bare.bar_window(WindowKind::Mmio32).is_none());
    let device = TestDevice::new(&[(0, BarKind::Memory32, 0x1000)]);
    assert!(bare.add_device(device, &mut bump()).is_err());
    let windows = root();
    assert!(
        !windows
            .windows()
            .admits(BarKind::Memory32, 0xf000_0000, 0x1000)
    );
    assert!(windows.windows().admits(WIDE, 0xc000_0000, 0x1000));
}

#[test]
fn concurrent_config_writes_and_bar_accesses_neither_panic_nor_deadlock() {
    let root = Arc::new(root());
    let device = TestDevice::new(&[(0, BarKind::Memory32, 0x1000), (2, WIDE, 0x4000)]);
    root.add_device(device, &mut bump()).unwrap();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let root = root.clone();
            std::thread::spawn(move || {
                let window = root.bar_window(WindowKind::Mmio32).unwrap();
                let mut x = t.wrapping_mul(2654435761) | 1;
                for _ in 0..2000 {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    match x % 3 {
                        0 => write32(
                            &root,
                            1,
                            0x10 + (x >> 8) as u16 % 24 / 4 * 4,
                            0xc000_0000 | (x & 0x0fff_f000),
                        ),
                        1 => write32(&root, 1, 4, x & 0x7),
                        _ => {
                            let offset = u64::from(x >> 4) % 0x1000_0000;
                            let _ = window_read(&window, window.range().base + offset);
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// A device reporting BAR sizes no configuration space would hold (a
/// passed-through device reports what its hardware says).
struct OddSizes(u64);

impl PciDevice for OddSizes {
    fn read_config(&self, _offset: u16, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&self, _offset: u16, _data: &[u8]) -> ConfigWriteOutcome {
        ConfigWriteOutcome::default()
    }
    fn read_bar(&self, _bar: u8, _offset: u64, _data: &mut [u8]) {}
    fn write_bar(&self, _bar: u8, _offset: u64, _data: &[u8]) {}
    fn bars(&self) -> Vec<BarInfo> {
        vec![BarInfo {
            index: 0,
            kind: BarKind::Memory32,
            size: self.0,
            address: 0,
            decoding: false,
        }]
    }
    fn name(&self) -> &str {
        "odd"
    }
}

#[test]
fn bar_sizes_that_are_not_powers_of_two_are_refused() {
    let root = root();
    for size in [0, 3, 0x3000] {
        let err = root
            .add_device(Arc::new(OddSizes(size)), &mut bump())
            .unwrap_err();
        assert!(matches!(err, PciRootError::BarAddress { size: s, .. } if s == size));
    }
    assert_eq!(read32(&root, 1, 0), u32::MAX, "nothing was added");
}
