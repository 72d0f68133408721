//! Builds a VM from one validated configuration, in one linear function:
//! observatory, memory, VM and platform, kernel and initrd, devices (placed
//! by the device manager), firmware tables and command line (derived from
//! what it placed), boot parameters, vCPUs. Nothing here runs the guest.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sie_config::VmConfig;
use sie_hv::GuestMemory;
use sie_hv::{Hypervisor, Vcpu, Vm};
use sie_obs::Observatory;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::console::ConsoleOutput;
use crate::control::VmControl;
use crate::device_manager::DeviceManager;
use crate::dispatch::ExitContext;
use crate::error::{Result, VmmError};
use crate::guest_cpu::GuestCpu;
use crate::platform::{self, ExtraDevice, PlatformDevices};
use crate::virtio::{VirtioDevices, Wiring};

/// sie's own vCPU limit: xAPIC ids and the MADT entries sie writes stop at 254.
pub const MAX_VCPUS: u32 = 254;

/// Host-side choices that are not part of the VM's configuration.
pub struct BuildOptions {
    /// When sie started; boot markers are timed from here.
    pub start: Instant,
    /// Where COM1's output goes.
    pub console: ConsoleOutput,
    /// Devices to add on the port bus besides the standard ones.
    pub extra_pio: Vec<ExtraDevice>,
    /// Decompress bzImages on the host through this cache (`None`: the
    /// guest decompresses its kernel itself, the classic way).
    pub host_decompress: Option<sie_vmlinux::KernelCache>,
    /// The metadata store that `mmds-config`'s interfaces answer from (the
    /// controller's, which the API fills); `None`: an empty one of its own.
    pub mmds: Option<sie_mmds::SharedMmds>,
}

impl BuildOptions {
    /// Console on stdout, no extra devices, host-side decompression through
    /// the user's cache directory.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            console: ConsoleOutput::stdout(),
            extra_pio: Vec::new(),
            host_decompress: Some(sie_vmlinux::KernelCache::new(
                sie_vmlinux::KernelCache::default_dir()
                    .unwrap_or_else(|| std::env::temp_dir().join("sie-vmlinux")),
            )),
            mmds: None,
        }
    }

    /// For a guest whose console nobody reads: output dropped, no extra
    /// devices, the kernel booted as given (the doctor's probes, tests).
    pub fn quiet() -> Self {
        Self {
            start: Instant::now(),
            console: ConsoleOutput::new(Box::new(std::io::sink())),
            extra_pio: Vec::new(),
            host_decompress: None,
            mmds: None,
        }
    }
}

/// A VM ready to run.
pub struct BuiltVm {
    /// The hypervisor's VM; kept alive while vCPUs run.
    pub vm: Arc<dyn Vm>,
    /// Guest RAM.
    pub memory: GuestMemory,
    /// The vCPUs, configured for boot.
    pub vcpus: Vec<Box<dyn Vcpu>>,
    /// Buses and statistics used by the exit dispatch.
    pub exits: Arc<ExitContext>,
    /// The VM's stop/outcome control.
    pub control: Arc<VmControl>,
    /// Exit and device statistics, which every device registered in.
    pub observatory: Arc<Observatory>,
    /// Devices the event loop needs (console input).
    pub devices: PlatformDevices,
    /// Paravirtual devices: their event-thread workers and counters.
    pub virtio: VirtioDevices,
    /// Guest RAM is a snapshot's memory file, mapped copy-on-write.
    pub memory_from_file: bool,
    /// PCI hotplug, with `pci` on.
    pub pci_hotplug: Option<Arc<crate::device_manager::hotplug::PciHotplug>>,
}

fn open_regular(what: &'static str, path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|source| VmmError::OpenFile {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !is_file {
        return Err(VmmError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Swaps a bzImage for its host-decompressed vmlinux (see `sie_vmlinux`);
/// any other kernel is returned as it is.
fn host_decompressed(
    cache: &sie_vmlinux::KernelCache,
    mut file: File,
    path: &Path,
) -> Result<File> {
    use std::io::{Seek, SeekFrom};
    let seek_error = |source| VmmError::OpenFile {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    };
    let outcome = cache.vmlinux_for(&mut file);
    file.seek(SeekFrom::Start(0)).map_err(seek_error)?;
    match outcome {
        Ok(mut kernel) => {
            let compression = kernel
                .compression
                .map_or_else(|| "compressed".to_string(), |c| c.to_string());
            tracing::info!(
                "booting the bzImage's {compression} payload decompressed on the host ({})",
                if kernel.hit {
                    "cached"
                } else {
                    "decompressed now"
                }
            );
            kernel.file.seek(SeekFrom::Start(0)).map_err(seek_error)?;
            Ok(kernel.file)
        }
        // Not a bzImage, too short to be one (the loader says what is wrong),
        // or one that carries no payload (tiny test kernels): nothing to do.
        Err(
            sie_vmlinux::Error::NotBzImage
            | sie_vmlinux::Error::Truncated
            | sie_vmlinux::Error::NoPayload,
        ) => Ok(file),
        Err(error) if error.classic_boot_is_safe() => {
            tracing::warn!("booting the bzImage the classic way: {error}");
            Ok(file)
        }
        Err(source) => Err(VmmError::HostDecompress {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Refuses configuration sections this version cannot honour, so that a
/// config file asking for them fails loudly instead of booting without them.
fn refuse_unsupported(config: &VmConfig) -> Result<()> {
    // Checked before anything is built, so a device that cannot be passed
    // is refused in its one line (the fix included) without side effects.
    for device in &config.vfio {
        sie_vfio::sysfs::check_device(&device.path, std::path::Path::new("/dev/vfio")).map_err(
            |source| VmmError::Vfio {
                id: device.id.clone(),
                source: Box::new(sie_vfio::VfioPciError::Host(source.into())),
            },
        )?;
    }
    Ok(())
}

/// The vCPU count `config` asks for, checked against what `hv` allows.
pub(crate) fn vcpu_count(config: &VmConfig, hv: &dyn Hypervisor) -> Result<u32> {
    let machine = config.machine_config.clone().unwrap_or_default();
    let vcpu_count = u32::from(machine.vcpu_count);
    let max_vcpus = hv.max_vcpus().min(MAX_VCPUS);
    if vcpu_count == 0 || vcpu_count > max_vcpus {
        return Err(VmmError::VcpuCount {
            requested: u64::from(vcpu_count),
            max: u64::from(max_vcpus),
        });
    }
    Ok(vcpu_count)
}

/// Guest RAM of `mib` MiB, laid out around the MMIO hole: anonymous, or
/// memfds when it is to be `shared` (a local migration hands them over).
fn anonymous_memory(mib: u64, pages: sie_config::HugePages, shared: bool) -> Result<GuestMemory> {
    let memory_error =
        |source: Box<dyn std::error::Error + Send + Sync>| VmmError::GuestMemory { mib, source };
    let mem_bytes = mib
        .checked_mul(1 << 20)
        .ok_or_else(|| memory_error("size overflows".into()))?;
    let regions = sie_arch::layout::ram_regions(mem_bytes).map_err(|e| memory_error(e.into()))?;
    // The dirty-page bitmaps are allocated before the mappings (one bit per
    // page: gigabytes for a size no host can map), so try the address
    // space first and refuse such a size at once.
    for &(_, len) in &regions {
        reserve_address_space(len).map_err(|e| memory_error(e.into()))?;
    }
    if shared {
        return crate::shared_memory::create(&regions).map_err(|e| memory_error(e.into()));
    }
    crate::guest_memory::anonymous(&regions, pages).map_err(|e| memory_error(e.into()))
}

/// Whether `len` bytes of address space can be mapped (nothing is kept).
fn reserve_address_space(len: usize) -> std::io::Result<()> {
    // SAFETY: a fresh anonymous PROT_NONE mapping at an address the kernel
    // picks; it touches no existing memory and is unmapped right away.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: exactly the mapping made above, which nothing else uses.
    unsafe { libc::munmap(at, len) };
    Ok(())
}

/// A VM with its memory mapped, its in-kernel platform, every device placed
/// and its vCPUs created, but nothing of a boot or a restore done yet.
pub(crate) struct Machine {
    pub(crate) vm: Arc<dyn Vm>,
    pub(crate) memory: GuestMemory,
    pub(crate) obs: Arc<Observatory>,
    pub(crate) devices: PlatformDevices,
    pub(crate) virtio: VirtioDevices,
    pub(crate) layout: crate::device_manager::DeviceLayout,
    pub(crate) vcpus: Vec<Box<dyn Vcpu>>,
    pub(crate) control: Arc<VmControl>,
    pub(crate) vmgenid: crate::vmgenid::VmGenId,
}

/// Whether `config` asks for dirty page tracking (for Diff snapshots).
pub(crate) fn tracks_dirty_pages(config: &VmConfig) -> bool {
    config
        .machine_config
        .as_ref()
        .and_then(|machine| machine.track_dirty_pages)
        == Some(true)
}

/// The part of a build a boot and a restore share: observatory, VM,
/// memory slots, platform, devices (placed by the device manager), vCPUs.
pub(crate) fn assemble(
    config: &VmConfig,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
    memory: GuestMemory,
    vcpu_count: u32,
    premade: Option<PremadeVm>,
) -> Result<Machine> {
    // The observatory comes first: every device registers in it as it is
    // placed, and the boot-marker devices write to it directly.
    let obs = Arc::new(Observatory::new(options.start, vcpu_count as usize));
    let premade = premade.filter(|p| p.fits(config, &memory));
    let vm = match &premade {
        Some(premade) => premade.vm.clone(),
        None => hv.create_vm()?,
    };
    let mut manager = DeviceManager::new(vm.as_ref(), obs.clone())?;
    // Boot RAM's size, before the hotpluggable region joins guest memory:
    // what the PCI window is placed after.
    let ram: u64 = memory.iter().map(|region| region.len()).sum();
    // The hotpluggable region joins guest memory before it is mapped or
    // handed to any device, so devices reach plugged memory like RAM.
    let (memory, hotplug) = match &config.memory_hotplug {
        Some(hotplug) => {
            let (memory, region) = crate::hotplug::reserve(hotplug, &memory, &mut manager)?;
            (memory, Some(region))
        }
        None => (memory, None),
    };
    exclude_from_fork(&memory);
    if !premade.as_ref().is_some_and(PremadeVm::has_memory) {
        vm.map_memory(&memory)?;
    }
    if tracks_dirty_pages(config) {
        vm.enable_dirty_log()?;
    }
    // After the memory. Creating the VM and its platform ahead of time (on
    // a thread while the API waits) was measured and gains nothing: KVM
    // then maps RAM as many ms slower as the platform had taken (3-5 ms,
    // shadow MMU host), and KVM_CREATE_VM alone is 0.2 ms.
    vm.create_platform(
        sie_arch::layout::KVM_TSS_ADDR,
        sie_arch::layout::KVM_IDENTITY_MAP_ADDR,
    )?;
    let devices = platform::create(
        &mut manager,
        &obs,
        control.clone(),
        options.console,
        options.extra_pio,
    )?;
    if config.pci_enabled() {
        manager.add_pci_bus(vm.clone(), ram, !config.vfio.is_empty())?;
        crate::vfio::attach(config, &vm, &memory, &mut manager)?;
    }
    let mmds = options.mmds.unwrap_or_else(|| {
        Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(
            sie_mmds::DEFAULT_SIZE_LIMIT,
        )))
    });
    let mut wiring = Wiring {
        vm: &vm,
        memory: &memory,
        hotplug,
        manager: &mut manager,
        mmds: &mmds,
    };
    let mut virtio = VirtioDevices::attach(config, &mut wiring)?;
    // Last, so the other devices stay where a serial-console VM has them.
    crate::virtio_console::attach(config, &mut virtio, &mut wiring, &devices.console)?;
    // After the virtio devices, so their interrupt lines stay where they were.
    let vmgenid = crate::vmgenid::VmGenId::place(&mut manager)?;
    let layout = manager.finish();
    let vcpus = (0..vcpu_count)
        .map(|id| vm.create_vcpu(id))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(Machine {
        vm,
        memory,
        obs,
        devices,
        virtio,
        layout,
        vcpus,
        control,
        vmgenid,
    })
}

/// A VM created ahead of the rest of its build: a migration's receiver
/// makes it and gives it its RAM while the pages still come, so the
/// switch-over does not wait for `KVM_CREATE_VM` and the memory slots (on
/// a shadow-MMU host, milliseconds per GiB); an API's VMM makes one, empty,
/// while it waits for the request that boots or loads a VM.
pub struct PremadeVm {
    vm: Arc<dyn Vm>,
    /// Each region's guest address, host address and length, as mapped;
    /// `None` while the VM has no RAM yet.
    mapped: Option<Vec<(u64, usize, u64)>>,
}

impl PremadeVm {
    /// Creates a VM on `hv` and maps `memory` into it.
    pub fn make(hv: &dyn Hypervisor, memory: &GuestMemory) -> Result<Self> {
        let vm = hv.create_vm()?;
        vm.map_memory(memory)?;
        Ok(Self {
            vm,
            mapped: Some(regions_of(memory)),
        })
    }

    /// Maps `memory` into this VM, made empty ([`PremadeVm::empty`]); one
    /// that has RAM already is dropped and a new one made on `hv`.
    pub fn with_memory(self, hv: &dyn Hypervisor, memory: &GuestMemory) -> Result<Self> {
        if self.has_memory() {
            return Self::make(hv, memory);
        }
        self.vm.map_memory(memory)?;
        Ok(Self {
            vm: self.vm,
            mapped: Some(regions_of(memory)),
        })
    }

    /// Creates a VM on `hv` with no RAM yet: the build maps it.
    pub fn empty(hv: &dyn Hypervisor) -> Result<Self> {
        Ok(Self {
            vm: hv.create_vm()?,
            mapped: None,
        })
    }

    /// Whether the build of `config` on `memory` can use this VM: an empty
    /// one always; one with RAM only when its slots map exactly `memory`'s
    /// regions and no hotpluggable region is to join them (it joins guest
    /// memory before that is mapped).
    fn fits(&self, config: &VmConfig, memory: &GuestMemory) -> bool {
        match &self.mapped {
            None => true,
            Some(mapped) => config.memory_hotplug.is_none() && *mapped == regions_of(memory),
        }
    }

    fn has_memory(&self) -> bool {
        self.mapped.is_some()
    }
}

fn regions_of(memory: &GuestMemory) -> Vec<(u64, usize, u64)> {
    memory
        .iter()
        .map(|region| {
            (
                region.start_addr().0,
                region.as_ptr() as usize,
                region.len(),
            )
        })
        .collect()
}

impl Machine {
    pub(crate) fn into_built(self) -> BuiltVm {
        let pci_hotplug = self.layout.pci_hotplug.clone();
        let exits = Arc::new(ExitContext {
            pio: self.layout.pio,
            mmio: self.layout.mmio,
            obs: self.obs.clone(),
            debug: Default::default(),
        });
        BuiltVm {
            vm: self.vm,
            memory: self.memory,
            vcpus: self.vcpus,
            exits,
            control: self.control,
            observatory: self.obs,
            devices: self.devices,
            virtio: self.virtio,
            memory_from_file: false,
            pci_hotplug,
        }
    }
}

/// Builds the VM described by `config` (already validated) on `hv`, ready
/// to boot. Its stop control exists before it (the controller creates it at
/// start-up, so a stop signal that arrives before `InstanceStart` takes the
/// same path).
pub fn build(
    config: &VmConfig,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm> {
    build_on(config, hv, options, control, None)
}

/// [`build`] on a VM made ahead with no RAM yet (a new one if `None`).
pub fn build_on(
    config: &VmConfig,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
    premade: Option<PremadeVm>,
) -> Result<BuiltVm> {
    refuse_unsupported(config)?;
    let vcpu_count = vcpu_count(config, hv)?;
    let guest_cpu = GuestCpu::plan(
        &config.machine_config.clone().unwrap_or_default(),
        config.cpu_config.as_ref(),
        hv,
    )?;
    let mib = config
        .machine_config
        .clone()
        .unwrap_or_default()
        .mem_size_mib;

    // Open user files first: a typo in a path should not cost a VM.
    let boot = &config.boot_source;
    let mut kernel_file = open_regular("kernel", &boot.kernel_image_path)?;
    if let Some(cache) = &options.host_decompress {
        kernel_file = host_decompressed(cache, kernel_file, &boot.kernel_image_path)?;
    }
    let initrd = match &boot.initrd_path {
        Some(path) => Some((path, open_regular("initrd", path)?)),
        None => None,
    };

    let pages = config
        .machine_config
        .as_ref()
        .map_or(sie_config::HugePages::None, |machine| machine.huge_pages());
    let shared = config
        .machine_config
        .as_ref()
        .is_some_and(|machine| machine.shared_memory());
    let memory = anonymous_memory(mib, pages, shared)?;
    let machine = assemble(config, hv, options, control, memory, vcpu_count, premade)?;
    let memory = &machine.memory;
    machine.vmgenid.write_new_id(memory)?;

    let kernel = sie_arch::loader::load_kernel(memory, &mut kernel_file).map_err(|source| {
        VmmError::Kernel {
            path: boot.kernel_image_path.clone(),
            source,
        }
    })?;
    let initrd = match initrd {
        Some((path, mut file)) => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            let loaded = sie_arch::loader::load_initrd(memory, &mut file, size, &kernel).map_err(
                |source| VmmError::Initrd {
                    path: path.clone(),
                    source,
                },
            )?;
            Some(loaded)
        }
        None => None,
    };

    let rsdp = sie_arch::acpi::create_acpi_tables(
        memory,
        &sie_arch::acpi::AcpiConfig {
            vcpus: vcpu_count,
            devices: machine.layout.acpi.clone(),
        },
    )
    .map_err(|e| VmmError::Platform(e.into()))?;
    let cmdline = crate::virtio::boot_cmdline(
        boot.boot_args_for(config.console_device()),
        config,
        &machine.layout,
    )
    .map_err(|e| VmmError::Platform(e.into()))?;
    let boot_info = sie_arch::boot_info::write_boot_info(
        memory,
        &kernel,
        &cmdline,
        initrd,
        Some(rsdp),
        mib << 20,
    )
    .map_err(|e| VmmError::Platform(e.into()))?;

    configure_vcpus_for_boot(&guest_cpu, &machine.vcpus, memory, &kernel, boot_info)?;
    Ok(machine.into_built())
}

/// Keeps guest RAM out of any child process: the teardown reaper (see
/// `teardown`) forks after the guest ran, and copying the page tables of
/// guest RAM it never touches would cost time on the exit path.
fn exclude_from_fork(memory: &GuestMemory) {
    for region in memory.iter() {
        // SAFETY: the range is exactly one mapping vm-memory created and
        // owns; MADV_DONTFORK changes only what a future fork inherits.
        let rc = unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_DONTFORK,
            )
        };
        if rc != 0 {
            tracing::debug!("madvise(MADV_DONTFORK) failed on guest RAM");
        }
    }
}

fn configure_vcpus_for_boot(
    guest_cpu: &GuestCpu,
    vcpus: &[Box<dyn Vcpu>],
    memory: &GuestMemory,
    kernel: &sie_arch::loader::LoadedKernel,
    boot_info: GuestAddress,
) -> Result<()> {
    let count = u32::try_from(vcpus.len()).unwrap_or(u32::MAX);
    let sregs =
        sie_arch::regs::boot_sregs(memory, kernel).map_err(|e| VmmError::Platform(e.into()))?;
    let regs = sie_arch::regs::boot_regs(kernel, boot_info);
    let fpu = sie_arch::regs::boot_fpu();
    let msrs = sie_arch::regs::boot_msrs();
    for (id, vcpu) in (0u32..).zip(vcpus) {
        let cpuid = guest_cpu.cpuid(id, count);
        vcpu.set_cpuid(&cpuid)?;
        guest_cpu.check_hidden(vcpu.as_ref(), &cpuid)?;
        let written = vcpu.set_msrs(&msrs)?;
        if written < msrs.len() {
            tracing::warn!(
                "KVM accepted {written} of {} boot MSRs; the first refused is {:#x}",
                msrs.len(),
                msrs[written].index
            );
        }
        guest_cpu.configure_msrs(vcpu.as_ref())?;
        vcpu.set_fpu(&fpu)?;
        // Only the boot CPU gets the entry state: APs wait for INIT/SIPI
        // like real hardware, and the boot sregs' APIC base marks the BSP.
        if id == 0 {
            vcpu.set_sregs(&sregs)?;
            vcpu.set_regs(&regs)?;
        }
        let mut lapic = vcpu.lapic()?;
        sie_arch::regs::configure_lapic(&mut lapic);
        vcpu.set_lapic(&lapic)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_address(vm: &Arc<dyn Vm>) -> *const () {
        Arc::as_ptr(vm).cast()
    }

    #[test]
    fn a_premade_vm_carries_the_build_on_the_memory_it_maps_and_only_there() {
        let hv = sie_hv::kvm::Kvm::open().expect("/dev/kvm");
        let config = VmConfig::new(sie_config::BootSource {
            kernel_image_path: "/nonexistent".into(),
            boot_args: None,
            initrd_path: None,
        });
        let control = || Arc::new(VmControl::new().unwrap());
        let memory = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();
        let other = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();

        let premade = PremadeVm::make(&hv, &memory).unwrap();
        assert!(premade.fits(&config, &memory.clone()));
        assert!(
            !premade.fits(&config, &other),
            "the same layout elsewhere in the host"
        );
        let made = vm_address(&premade.vm);
        let machine = assemble(
            &config,
            &hv,
            BuildOptions::quiet(),
            control(),
            memory,
            1,
            Some(premade),
        )
        .unwrap();
        assert_eq!(
            vm_address(&machine.vm),
            made,
            "the premade VM is the one built"
        );

        let premade = PremadeVm::make(&hv, &other).unwrap();
        // Held, so the new VM cannot take the unused one's address.
        let held = premade.vm.clone();
        let unused = vm_address(&held);
        let fresh = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();
        let machine = assemble(
            &config,
            &hv,
            BuildOptions::quiet(),
            control(),
            fresh,
            1,
            Some(premade),
        )
        .unwrap();
        assert_ne!(
            vm_address(&machine.vm),
            unused,
            "a VM mapping other RAM is dropped"
        );
    }

    #[test]
    fn an_empty_premade_vm_is_built_on_and_given_its_ram_by_the_build() {
        let hv = sie_hv::kvm::Kvm::open().expect("/dev/kvm");
        let mut config = VmConfig::new(sie_config::BootSource {
            kernel_image_path: "/nonexistent".into(),
            boot_args: None,
            initrd_path: None,
        });
        let memory = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();
        let premade = PremadeVm::empty(&hv).unwrap();
        assert!(!premade.has_memory());
        config.memory_hotplug = Some(sie_config::MemoryHotplug {
            total_size_mib: 128,
            slot_size_mib: 128,
            block_size_mib: 2,
        });
        assert!(
            premade.fits(&config, &memory),
            "an empty VM takes any memory, a hotpluggable region too"
        );
        config.memory_hotplug = None;
        let made = vm_address(&premade.vm);
        let machine = assemble(
            &config,
            &hv,
            BuildOptions::quiet(),
            Arc::new(VmControl::new().unwrap()),
            memory.clone(),
            1,
            Some(premade),
        )
        .unwrap();
        assert_eq!(
            vm_address(&machine.vm),
            made,
            "the empty VM is the one built"
        );
        // The build gave it the RAM: a second mapping of the same slots
        // is refused by KVM, so mapping it again here fails.
        assert!(
            machine.vm.map_memory(&memory).is_err(),
            "the build mapped the RAM into the premade VM"
        );
    }

    #[test]
    fn an_empty_premade_vm_given_ram_maps_exactly_that_ram() {
        let hv = sie_hv::kvm::Kvm::open().expect("/dev/kvm");
        let config = VmConfig::new(sie_config::BootSource {
            kernel_image_path: "/nonexistent".into(),
            boot_args: None,
            initrd_path: None,
        });
        let memory = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();
        let other = anonymous_memory(16, sie_config::HugePages::None, false).unwrap();
        let empty = PremadeVm::empty(&hv).unwrap();
        let made = vm_address(&empty.vm);
        let premade = empty.with_memory(&hv, &memory).unwrap();
        assert_eq!(vm_address(&premade.vm), made, "the same VM, now with RAM");
        assert!(premade.has_memory());
        assert!(premade.fits(&config, &memory));
        assert!(!premade.fits(&config, &other));
    }
}
