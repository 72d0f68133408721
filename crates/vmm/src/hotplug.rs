//! Hotpluggable memory (virtio-mem): the region past RAM that
//! `memory-hotplug` asks for, placed by the device manager in the
//! device-memory window (128 MiB aligned: Linux adds hotplugged memory in
//! 128 MiB memory blocks on x86), backed by anonymous memory in regions of
//! `slot_size_mib` from the start, and the device the guest plugs its
//! blocks through.
//!
//! The region is reserved before guest memory is handed to anything
//! ([`reserve`]): its regions join the guest memory every device, the
//! balloon, core dumps and gdb read and write, and are mapped into KVM as
//! that memory's slots (one per `slot_size_mib`), so a guest whose page
//! cache lands in plugged memory does I/O from it like from boot RAM. The
//! guest is not told it is RAM: the e820 map and ACPI tables come from
//! `mem_size_mib` alone, and the guest learns of the region through the
//! device only.
//!
//! Memory the guest unplugs is given back to the host with
//! `madvise(MADV_DONTNEED)`, so the VMM's RSS falls; a plugged block costs
//! nothing until the guest touches it (`MAP_NORESERVE`). Devices do not
//! check which blocks are plugged: a guest that points a device at an
//! unplugged block gets zeros (or its data back) and only costs itself
//! host memory, never more than `total_size_mib`.

use std::sync::Arc;

use sie_config::MemoryHotplug;
use sie_hv::GuestMemory;
use sie_virtio::VirtioCore;
use sie_virtio::mem::{Discard, Mem};
use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::{MmapRegionBuilder, NewBitmap};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestRegionMmap};

use crate::device_manager::DeviceManager;
use crate::error::{Result, VmmError};

const MIB: u64 = 1 << 20;
/// Linux's memory block size on x86 (with less than 64 GiB of RAM): where
/// the region starts.
const REGION_ALIGN: u64 = 128 * MIB;

/// The placed device, for `PATCH` and `GET /hotplug/memory`.
pub struct Hotplug {
    /// The device behind its transport.
    pub transport: Arc<VirtioCore<Mem>>,
    /// The configuration it was built from.
    pub config: MemoryHotplug,
}

impl Hotplug {
    /// Asks the guest to have `mib` MiB plugged: the device's requested
    /// size, then a configuration-change interrupt.
    pub fn request(&self, mib: u64) -> std::result::Result<(), String> {
        let bytes = mib.checked_mul(MIB).ok_or("requested size overflows")?;
        self.transport
            .with_device(|mem| mem.set_requested_size(bytes))?;
        self.transport.config_changed();
        Ok(())
    }

    /// `GET /hotplug/memory`: Firecracker's `MemoryHotplugStatus`.
    pub fn status(&self) -> serde_json::Value {
        let (plugged, requested) = self
            .transport
            .with_device(|mem| (mem.plugged_size(), mem.requested_size()));
        serde_json::json!({
            "total_size_mib": self.config.total_size_mib,
            "slot_size_mib": self.config.slot_size_mib,
            "block_size_mib": self.config.block_size_mib,
            "plugged_size_mib": plugged / MIB,
            "requested_size_mib": requested / MIB,
        })
    }
}

/// One slot of the region: guest memory and a KVM slot at once.
type Slot = Arc<GuestRegionMmap<AtomicBitmap>>;

/// `MADV_DONTNEED` on `len` bytes at `offset` into the slots (each
/// `slot_len` long) that back the region.
fn discard(slots: &[Slot], slot_len: u64, offset: u64, len: u64) -> std::io::Result<()> {
    let end = offset.saturating_add(len);
    let mut at = offset;
    while at < end {
        let index = usize::try_from(at / slot_len).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let slot = slots.get(index).ok_or(std::io::ErrorKind::InvalidInput)?;
        let within = at % slot_len;
        let piece = (slot_len - within).min(end - at);
        let (start, count) = (
            usize::try_from(within).map_err(|_| std::io::ErrorKind::InvalidInput)?,
            usize::try_from(piece).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        );
        // SAFETY: `start + count <= slot_len`, the size of the mapping
        // `slot` owns; MADV_DONTNEED on private anonymous memory only drops
        // its pages (they read as zero again), which the guest gave up.
        let done =
            unsafe { libc::madvise(slot.as_ptr().add(start).cast(), count, libc::MADV_DONTNEED) };
        if done != 0 {
            return Err(std::io::Error::last_os_error());
        }
        at += piece;
    }
    Ok(())
}

/// The device's name in errors.
pub(crate) const NAME: &str = "hotpluggable memory (virtio-mem)";

/// The hotpluggable region, reserved and backed, waiting for its device.
pub struct Region {
    /// Where boot RAM ends: device memory placed later goes past it too.
    pub ram_end: u64,
    addr: u64,
    total: u64,
    slot_len: u64,
    block: u64,
    slots: Vec<Slot>,
}

/// `len` bytes of anonymous memory at `at`, touched pages only.
fn anonymous_slot(at: GuestAddress, len: usize) -> std::io::Result<Slot> {
    let mapping = MmapRegionBuilder::new_with_bitmap(len, AtomicBitmap::with_len(len))
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let slot = GuestRegionMmap::new(mapping, at)
        .ok_or_else(|| std::io::Error::other("the region is past the address space"))?;
    Ok(Arc::new(slot))
}

/// Reserves the hotpluggable region `config` asks for past the boot RAM
/// `memory` holds, and backs it: `memory` with the region's slots added
/// (what devices, KVM and the rest of sie are given), and the region for
/// [`place`]. Called before the memory is mapped or handed out.
pub(crate) fn reserve(
    config: &MemoryHotplug,
    memory: &GuestMemory,
    manager: &mut DeviceManager<'_>,
) -> Result<(GuestMemory, Region)> {
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
        name: NAME.to_string(),
        source,
    };
    let ram_end = memory.last_addr().0.saturating_add(1);
    let total = config.total_size_mib.saturating_mul(MIB);
    let slot_len = config.slot_size_mib.saturating_mul(MIB);
    let addr = manager.allocate_device_memory(NAME, ram_end, total, REGION_ALIGN.max(slot_len))?;
    let len = usize::try_from(slot_len).map_err(|e| fail(e.into()))?;
    let mut slots = Vec::new();
    let mut memory = memory.clone();
    for index in 0..total / slot_len {
        let slot = anonymous_slot(GuestAddress(addr + index * slot_len), len)
            .map_err(|e| fail(e.into()))?;
        memory = memory
            .insert_region(slot.clone())
            .map_err(|e| fail(e.into()))?;
        slots.push(slot);
    }
    let region = Region {
        ram_end,
        addr,
        total,
        slot_len,
        block: config.block_size_mib.saturating_mul(MIB),
        slots,
    };
    Ok((memory, region))
}

/// The device for the reserved `region`: unplugged blocks go back to the
/// host through the same mappings guest memory and KVM use.
pub(crate) fn place(region: Region) -> Mem {
    let Region {
        addr,
        total,
        slot_len,
        block,
        slots,
        ..
    } = region;
    let give_back: Discard = Box::new(move |offset, len| discard(&slots, slot_len, offset, len));
    Mem::new(addr, total, block, give_back)
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestMemoryRegion};

    use super::*;

    fn anonymous(len: usize) -> Slot {
        anonymous_slot(GuestAddress(0), len).unwrap()
    }

    #[test]
    fn discarded_blocks_read_as_zero_across_slots() {
        let slots = [anonymous(2 * 4096), anonymous(2 * 4096)];
        for slot in &slots {
            // SAFETY: each mapping holds 2 pages, writable.
            unsafe { std::ptr::write_bytes(slot.as_ptr(), 0xaa, 2 * 4096) };
        }
        // The second page of slot 0 and the first of slot 1.
        discard(&slots, 2 * 4096, 4096, 2 * 4096).unwrap();
        // SAFETY: as above, read back.
        let byte = |slot: usize, at: usize| unsafe { *slots[slot].as_ptr().add(at) };
        assert_eq!(
            [byte(0, 0), byte(0, 4096), byte(1, 0), byte(1, 4096)],
            [0xaa, 0, 0, 0xaa]
        );
        assert!(discard(&slots, 2 * 4096, 3 * 4096, 2 * 4096).is_err());
    }

    const MIB_USIZE: usize = 1 << 20;

    /// 64 MiB of boot RAM and a 256 MiB region in two 128 MiB slots.
    fn reserved() -> (GuestMemory, GuestMemory, Region) {
        let boot = GuestMemory::from_ranges(&[(GuestAddress(0), 64 * MIB_USIZE)]).unwrap();
        let vm = crate::test_doubles::FakeVm::default();
        let obs = Arc::new(sie_obs::Observatory::new(std::time::Instant::now(), 1));
        let mut manager = DeviceManager::new(&vm, obs).unwrap();
        let config = MemoryHotplug {
            total_size_mib: 256,
            slot_size_mib: 128,
            block_size_mib: 2,
        };
        let (memory, region) = reserve(&config, &boot, &mut manager).unwrap();
        (boot, memory, region)
    }

    #[test]
    fn plugged_memory_is_device_memory_and_unplugging_empties_the_same_pages() {
        let (_, memory, region) = reserved();
        let (window, _) = sie_arch::layout::device_memory_window(64 * MIB).unwrap();
        assert_eq!((region.ram_end, region.addr), (64 * MIB, window));
        // Boot RAM and one region per KVM slot: what devices, dumps and gdb
        // are given, and what KVM maps.
        assert_eq!(memory.num_regions(), 3);
        let plugged = GuestAddress(region.addr + 128 * MIB + 0x1000);
        memory.write_obj(0x5eu8, plugged).unwrap();
        assert_eq!(memory.read_obj::<u8>(plugged).unwrap(), 0x5e);
        let end = GuestAddress(region.addr + 256 * MIB);
        assert!(
            memory.read_obj::<u8>(end).is_err(),
            "nothing past the region"
        );
        // The device gives unplugged blocks back through the very mapping
        // devices read: the byte reads as zero afterwards.
        discard(&region.slots, region.slot_len, 128 * MIB, 2 * MIB).unwrap();
        assert_eq!(memory.read_obj::<u8>(plugged).unwrap(), 0);
    }

    #[test]
    fn the_boot_memory_map_is_the_same_with_hotplug() {
        use sie_arch::loader::{EntryMode, KernelFormat, LoadedKernel};
        let (boot, memory, _) = reserved();
        let kernel = LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Linux64,
            setup_header: None,
            end: GuestAddress(0x110_0000),
            format: KernelFormat::Elf,
        };
        // The builder hands the boot info `mem_size_mib` alone; the zero
        // page (e820 included) must not change because memory holds more.
        let page = |memory: &GuestMemory| {
            let at = sie_arch::boot_info::write_boot_info(
                memory,
                &kernel,
                "console=ttyS0",
                None,
                None,
                64 * MIB,
            )
            .unwrap();
            let mut bytes = vec![0u8; 4096];
            memory.read_slice(&mut bytes, at).unwrap();
            bytes
        };
        assert_eq!(page(&memory), page(&boot));
    }

    #[test]
    fn a_core_dump_holds_the_plugged_region() {
        let (_, memory, region) = reserved();
        let plugged = region.addr + 0x2000;
        memory
            .write_slice(b"plugged page", GuestAddress(plugged))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("sie-hotplug-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.core");
        let vcpus = [crate::core_dump::VcpuRegisters::default()];
        crate::core_dump::write(&path, &memory, &vcpus, false).unwrap();
        let regions: Vec<(u64, u64)> = memory.iter().map(|r| (r.start_addr().0, r.len())).collect();
        let layout = crate::core_dump::elf::layout(&vcpus, &regions);
        let bytes = std::fs::read(&path).unwrap();
        let at = usize::try_from(layout.segments[1].file_offset).unwrap() + 0x2000;
        assert_eq!(&bytes[at..at + 12], b"plugged page");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_device_is_wired_to_the_reserved_region_and_pmem_goes_past_it() {
        use crate::virtio::{VirtioDevices, Wiring};
        let boot = GuestMemory::from_ranges(&[(GuestAddress(0), 64 * MIB_USIZE)]).unwrap();
        let fake = Arc::new(crate::test_doubles::FakeVm::default());
        let vm: Arc<dyn sie_hv::Vm> = fake.clone();
        let obs = Arc::new(sie_obs::Observatory::new(std::time::Instant::now(), 1));
        let mut manager = DeviceManager::new(fake.as_ref(), obs).unwrap();
        let config = sie_config::VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "memory-hotplug": {"total_size_mib": 256}}"#,
        )
        .unwrap();
        let hotplug = config.memory_hotplug.clone().unwrap();
        let mmds = Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(
            sie_mmds::DEFAULT_SIZE_LIMIT,
        )));
        let wiring = |memory: &GuestMemory, region, manager: &mut DeviceManager<'_>| {
            VirtioDevices::attach(
                &config,
                &mut Wiring {
                    vm: &vm,
                    memory,
                    hotplug: region,
                    manager,
                    mmds: &mmds,
                },
            )
        };
        // Without its region reserved with guest memory, the device is
        // refused rather than placed where devices cannot reach.
        let error = wiring(&boot, None, &mut manager).err().unwrap();
        assert!(error.to_string().contains(NAME), "{error}");
        let (memory, region) = reserve(&hotplug, &boot, &mut manager).unwrap();
        let addr = region.addr;
        let devices = wiring(&memory, Some(region), &mut manager).unwrap();
        let device = devices.hotplug.expect("the virtio-mem device");
        let status = device.status();
        assert_eq!(status["total_size_mib"], 256);
        // The device tells the guest of the region guest memory holds
        // (virtio_mem_config: addr at 16, region_size at 24).
        let mut config_space = [0u8; 16];
        device
            .transport
            .with_device(|mem| sie_virtio::VirtioDevice::read_config(mem, 16, &mut config_space));
        let field = |at: usize| u64::from_le_bytes(config_space[at..at + 8].try_into().unwrap());
        assert_eq!((field(0), field(8)), (addr, 256 * MIB));
        // Device memory placed later goes past the region.
        let next = manager
            .allocate_device_memory("next", 64 * MIB, 2 * MIB, 2 * MIB)
            .unwrap();
        assert_eq!(next, addr + 256 * MIB);
    }
}

#[cfg(test)]
#[path = "hotplug_blk_tests.rs"]
mod blk_tests;
