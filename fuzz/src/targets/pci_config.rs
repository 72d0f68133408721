//! The PCI root through the guest's three doors: the 0xCF8/0xCFC ports,
//! the ECAM window and the BAR windows, with an rng and a block device on
//! virtio-PCI (their BARs placed by the root as the VMM does) and devices
//! added and removed in between. Configuration writes of any width at any
//! offset relocate, size and switch BARs off and on at silly addresses.
//!
//! Besides never panicking: the ioeventfds the devices register through
//! the root are balanced (never registered twice at one address, never
//! unregistered where they were not), absent functions read all ones,
//! and the host bridge keeps its identity.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use sie_devices::BusDevice;
use sie_pci::{
    AddressRange, AddressSpace, BarMapper, PciConfigIo, PciDevice, PciEcam, PciRoot, PciWindows,
    WindowKind,
};
use sie_virtio::block::BlockOptions;
use sie_virtio::rng::Rng;
use sie_virtio::testing::pci_transport;
use vmm_sys_util::eventfd::EventFd;

use super::virtio_blk::started_block;
use crate::input::Input;

const MMIO32: AddressRange = AddressRange::new(0xc000_0000, 0x1000_0000);
const MMIO64: AddressRange = AddressRange::new(0x100_0000_0000, 0x1_0000_0000);

/// A [`BarMapper`] that checks registrations are balanced.
#[derive(Default)]
struct CheckingMapper {
    live: Mutex<HashSet<(RawFd, u64)>>,
}

impl BarMapper for CheckingMapper {
    fn register_ioevent(&self, fd: &EventFd, _: AddressSpace, addr: u64, _: u32) -> io::Result<()> {
        let fresh = self
            .live
            .lock()
            .expect("lock")
            .insert((fd.as_raw_fd(), addr));
        assert!(fresh, "ioeventfd registered twice at {addr:#x}");
        Ok(())
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        _: AddressSpace,
        addr: u64,
        _: u32,
    ) -> io::Result<()> {
        let known = self
            .live
            .lock()
            .expect("lock")
            .remove(&(fd.as_raw_fd(), addr));
        assert!(known, "ioeventfd unregistered where it was not, {addr:#x}");
        Ok(())
    }
}

/// BAR values worth trying: the windows' edges, zero, all ones, the top.
const ADDRESSES: [u32; 8] = [
    0,
    u32::MAX,
    0xc000_0000,
    0xcfff_8000,
    0xd000_0000,
    0x100,
    0xffff_8000,
    0xfee0_0000,
];

fn device(input: &mut Input) -> Arc<dyn PciDevice> {
    if input.bool() {
        Arc::new(pci_transport(Rng::new()).0)
    } else {
        Arc::new(pci_transport(started_block(4 * 512, "fuzz", BlockOptions::default())).0)
    }
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mapper = Arc::new(CheckingMapper::default());
    let windows = PciWindows {
        mmio32: Some(MMIO32),
        mmio64: Some(MMIO64),
        io: None,
    };
    let root = Arc::new(PciRoot::new(windows, mapper.clone()));
    let mut next = [MMIO32.base, MMIO64.base];
    let mut add = |root: &PciRoot, input: &mut Input| {
        let dev = device(input);
        let _ = root.add_device(dev, &mut |request| {
            let slot = usize::from(request.kind != sie_pci::BarKind::Memory32);
            let address = next[slot].next_multiple_of(request.size);
            next[slot] = address + request.size;
            Ok(address)
        });
    };
    add(&root, &mut input);
    add(&root, &mut input);
    let ports = PciConfigIo::new(root.clone());
    let ecam = PciEcam::new(root.clone());
    let bars = [
        root.bar_window(WindowKind::Mmio32).expect("mmio32"),
        root.bar_window(WindowKind::Mmio64).expect("mmio64"),
    ];
    for _ in 0..512 {
        if input.is_empty() {
            break;
        }
        let width = input.pick(&[1usize, 2, 4, 4, 4, 8]);
        let mut buf = [0u8; 8];
        match input.u8() % 10 {
            0 => {
                let address = 0x8000_0000 | u32::from(input.u8() % 4) << 11 | u32::from(input.u8());
                ports.write(0, &address.to_le_bytes());
            }
            1 => ports.read(4 + u64::from(input.u8() % 4), &mut buf[..width]),
            2 => {
                let value = input.u32().to_le_bytes();
                ports.write(4 + u64::from(input.u8() % 4), &value[..width.min(4)]);
            }
            3 => {
                let offset = u64::from(input.u32()) % (2 << 20);
                ecam.read(offset, &mut buf[..width]);
            }
            4 | 5 => {
                // A BAR or the command register, with a value worth trying.
                let device = u64::from(input.u8() % 4);
                let register = u64::from(input.pick(&[0x04u8, 0x10, 0x14, 0x18, 0x30, 0x3c]));
                let value = if input.bool() {
                    input.pick(&ADDRESSES)
                } else {
                    input.u32()
                };
                ecam.write(
                    device << 15 | register,
                    &value.to_le_bytes()[..width.min(4)],
                );
            }
            6 => {
                let offset = u64::from(input.u32()) % (2 << 20);
                let value = input.u64().to_le_bytes();
                ecam.write(offset, &value[..width]);
            }
            7 => {
                let window = &bars[usize::from(input.bool())];
                let offset = u64::from(input.u16()) | u64::from(input.u8() % 4) << 16;
                if input.bool() {
                    window.read(offset, &mut buf[..width]);
                } else {
                    window.write(offset, &input.u64().to_le_bytes()[..width]);
                }
            }
            8 => {
                let slot = input.u8() % 4;
                let _ = root.remove_device(slot);
            }
            _ => add(&root, &mut input),
        }
    }
    let mut id = [0u8; 4];
    ecam.read(0, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        0x0d57_8086,
        "the host bridge keeps its identity"
    );
    ecam.read(1 << 20, &mut id);
    assert_eq!(id, [0xff; 4], "bus 1 is absent");
    for slot in 1..sie_pci::SLOTS {
        root.remove_device(slot);
    }
    assert!(
        mapper.live.lock().expect("lock").is_empty(),
        "every ioeventfd left with its device"
    );
}
