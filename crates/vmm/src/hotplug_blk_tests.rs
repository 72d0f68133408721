//! A virtio-blk device wired by the VMM next to virtio-mem serves requests
//! whose buffers lie in plugged memory: the memory devices are given holds
//! the hotpluggable region.

use std::sync::Arc;
use std::time::Instant;

use sie_devices::BusDevice;
use sie_virtio::testing::Ring;
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK,
};
use virtio_bindings::virtio_mmio::*;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::test_doubles::FakeVm;
use crate::virtio::{VirtioDevices, Wiring};

const HEADER: u64 = 0x4_0000;
const STATUS: u64 = 0x4_0100;
const SECTOR: usize = 512;

/// Brings queue 0 of the virtio-MMIO device `blk` up on `ring`, through its
/// registers only, as a guest driver would.
fn start(blk: &dyn BusDevice, ring: &Ring) {
    let write = |offset: u32, value: u32| blk.write(u64::from(offset), &value.to_le_bytes());
    let read = |offset: u32| {
        let mut data = [0u8; 4];
        blk.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    };
    write(VIRTIO_MMIO_STATUS, 0);
    write(VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE);
    let mut status = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
    write(VIRTIO_MMIO_STATUS, status);
    for half in 0..2 {
        write(VIRTIO_MMIO_DEVICE_FEATURES_SEL, half);
        let offered = read(VIRTIO_MMIO_DEVICE_FEATURES);
        write(VIRTIO_MMIO_DRIVER_FEATURES_SEL, half);
        write(VIRTIO_MMIO_DRIVER_FEATURES, offered);
    }
    status |= VIRTIO_CONFIG_S_FEATURES_OK;
    write(VIRTIO_MMIO_STATUS, status);
    assert_ne!(read(VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    write(VIRTIO_MMIO_QUEUE_SEL, 0);
    write(VIRTIO_MMIO_QUEUE_NUM, u32::from(ring.size));
    for (low, addr) in [
        (VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc),
        (VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
        (VIRTIO_MMIO_QUEUE_USED_LOW, ring.used),
    ] {
        write(low, addr as u32);
        write(low + 4, (addr >> 32) as u32);
    }
    write(VIRTIO_MMIO_QUEUE_READY, 1);
    write(VIRTIO_MMIO_STATUS, status | VIRTIO_CONFIG_S_DRIVER_OK);
}

#[test]
fn a_virtio_blk_request_reads_into_and_writes_from_plugged_memory() {
    let disk = std::env::temp_dir().join(format!("sie-hotplug-blk-{}.img", std::process::id()));
    let image: Vec<u8> = (0..16 * SECTOR).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, &image).unwrap();
    let config = sie_config::VmConfig::from_json(&format!(
        r#"{{"boot-source": {{"kernel_image_path": "k"}},
            "drives": [{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false}}],
            "memory-hotplug": {{"total_size_mib": 256}}}}"#,
        disk.display()
    ))
    .unwrap();
    let boot = GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
    let fake = Arc::new(FakeVm::default());
    let vm: Arc<dyn sie_hv::Vm> = fake.clone();
    let obs = Arc::new(sie_obs::Observatory::new(Instant::now(), 1));
    let mut manager = DeviceManager::new(fake.as_ref(), obs).unwrap();
    for gsi in [1, 3, 4] {
        manager.fixed_line(gsi).unwrap();
    }
    let hotplug = config.memory_hotplug.clone().unwrap();
    let (memory, region) = reserve(&hotplug, &boot, &mut manager).unwrap();
    // A buffer in the second slot of the region, past boot RAM.
    let plugged = region.addr + 128 * MIB + 0x3000;
    let mmds = Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(
        sie_mmds::DEFAULT_SIZE_LIMIT,
    )));
    let devices = VirtioDevices::attach(
        &config,
        &mut Wiring {
            vm: &vm,
            memory: &memory,
            hotplug: Some(region),
            manager: &mut manager,
            mmds: &mmds,
        },
    )
    .unwrap();
    devices
        .start_workers(&sie_seccomp::Seccomp::disabled())
        .unwrap();
    let (_, core) = &devices.blocks[0];
    let layout = manager.finish();
    let blk = layout
        .mmio
        .find(sie_arch::layout::PLATFORM_MMIO_START)
        .expect("the drive on the MMIO bus")
        .device;
    let ring = Ring::new(0x1000, 16);
    start(blk, &ring);

    let mut next = 0;
    let mut request = |kind: u32, sector: u64, data: (u64, u32, bool)| {
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        memory.write_slice(&header, GuestAddress(HEADER)).unwrap();
        memory.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        ring.set_chain(&memory, 0, &[(HEADER, 16, false), data, (STATUS, 1, true)]);
        ring.publish(&memory, &[0]);
        blk.write(u64::from(VIRTIO_MMIO_QUEUE_NOTIFY), &0u32.to_le_bytes());
        core.queue_event(0);
        core.quiesce();
        let (id, _) = ring.used(&memory, next);
        next += 1;
        assert_eq!(id, 0);
        memory.read_obj::<u8>(GuestAddress(STATUS)).unwrap()
    };

    // Read sectors 2-3 into plugged memory.
    let len = 2 * SECTOR as u32;
    let status = request(VIRTIO_BLK_T_IN, 2, (plugged, len, true));
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    let mut got = vec![0u8; 2 * SECTOR];
    memory.read_slice(&mut got, GuestAddress(plugged)).unwrap();
    assert_eq!(got, image[2 * SECTOR..4 * SECTOR]);

    // Write sector 8 from plugged memory.
    memory
        .write_slice(&[0x5a; SECTOR], GuestAddress(plugged))
        .unwrap();
    let status = request(VIRTIO_BLK_T_OUT, 8, (plugged, SECTOR as u32, false));
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    let on_disk = std::fs::read(&disk).unwrap();
    assert_eq!(on_disk[8 * SECTOR..9 * SECTOR], [0x5a; SECTOR]);
    std::fs::remove_file(&disk).unwrap();
}
