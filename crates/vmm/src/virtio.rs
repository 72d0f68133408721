//! The paravirtual devices of one VM: each configured drive and network
//! interface, the vsock, the entropy device and the balloon, each behind its own
//! virtio-MMIO window, with an interrupt line and one ioeventfd per queue;
//! windows and lines come from the device manager. (The virtio console is
//! placed through the same `VirtioDevices::add` by `virtio_console.rs`.)
//!
//! A queue notification is an ioeventfd: the guest's write to QueueNotify
//! wakes the VMM event thread without a trip through the vCPU's exit
//! dispatch; the device answers through an irqfd. So the vCPU thread only
//! sees the device's rare register accesses during driver setup.
//!
//! Rate limiters from the configuration are set on each device before its
//! worker exists (the worker watches their timers from the start);
//! `PATCH` changes them later through [`VirtioDevices::blocks`] and
//! [`VirtioDevices::nets`].
//!
//! A drive's `io_engine` and `cache_type` are given to its device when it
//! is created (an Async drive on a host without io_uring fails here); a
//! Sync drive's worker thread starts with the vCPUs
//! ([`VirtioDevices::start_workers`]), installing its own seccomp filter.
//!
//! Every device is described once, to the device manager, which derives
//! both descriptions the guest gets: the ACPI DSDT (`LNRO0005`, which stock
//! distro kernels bind to) and `virtio_mmio.device=` on the command line
//! (for minimal kernels built without ACPI).

use std::fs::{File, OpenOptions};
use std::sync::Arc;

use event_manager::MutEventSubscriber;
use linux_loader::cmdline::Cmdline;
use sie_arch::acpi::AcpiDevice;
use sie_config::VmConfig;
use sie_hv::GuestMemory;
use sie_hv::{IoEventAddress, Vm};
use sie_mmds::MmdsStack;
use sie_virtio::balloon::{Balloon, BalloonOptions, HostDiscard};
use sie_virtio::block::{Block, BlockOptions, CacheType, IoEngine};
use sie_virtio::net::{Net, Tap, parse_mac};
use sie_virtio::pci::VirtioPciDevice;
use sie_virtio::rate_limiter::{BucketConfig, LimiterConfig, RateLimiter};
use sie_virtio::rng::Rng;
use sie_virtio::vsock::Vsock;
use sie_virtio::{
    CountersSnapshot, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET, TransportSnapshot, VirtioCore,
    VirtioDevice, VirtioMmioTransport, VirtioTransport, VirtioWorker,
};

use crate::device_manager::msi::MsiVectors;
use crate::device_manager::{DeviceLayout, DeviceManager};
use crate::error::{Result, VmmError};

/// Counters of one virtio device, read when statistics are asked for.
pub struct VirtioStats {
    /// e.g. `virtio-blk:rootfs`.
    pub name: String,
    /// Reads the device's counters.
    pub read: Box<dyn Fn() -> CountersSnapshot + Send + Sync>,
    /// Reads the counters only this kind of device has (virtio-net's frames
    /// and drops per direction); none for most.
    pub extra: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>,
}

impl VirtioStats {
    /// Every counter as name/value pairs: the generic ones, then the
    /// device's own.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut fields = (self.read)().fields().to_vec();
        fields.extend((self.extra)());
        fields
    }
}

/// The paravirtual devices, once created.
#[derive(Default)]
pub struct VirtioDevices {
    /// The event-thread halves, to be added to the VMM's event manager.
    pub workers: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// Block devices by drive id (for `PATCH /drives`), whatever their transport.
    pub blocks: Vec<(String, Arc<VirtioCore<Block>>)>,
    /// Network devices by interface id (for `PATCH /network-interfaces`).
    pub nets: Vec<(String, Arc<VirtioCore<Net>>)>,
    /// The balloon (for `PATCH /balloon` and its statistics and hinting).
    pub balloon: Option<Arc<VirtioCore<Balloon>>>,
    /// Counters per device.
    pub stats: Vec<VirtioStats>,
    /// The hotpluggable memory device, if configured.
    pub hotplug: Option<crate::hotplug::Hotplug>,
    /// Every virtio-MMIO transport, in the order they were placed (for
    /// snapshots; virtio-PCI transports cannot be saved yet, and a VM with
    /// them is not snapshotted).
    pub transports: Vec<Arc<dyn TransportSnapshot>>,
    /// The virtio console (`--console virtio`), if placed.
    pub console: Option<VirtioConsole>,
}

/// The host's handles on a placed virtio console.
pub struct VirtioConsole {
    pub(crate) input: sie_virtio::console::ConsoleInput,
    /// Signalled when the guest took buffered input.
    pub(crate) room: vmm_sys_util::eventfd::EventFd,
}

impl VirtioConsole {
    /// The input side and its "input room" eventfd, for stdin or the
    /// console socket (as COM1 offers them).
    pub fn input(
        &self,
    ) -> Option<(
        Arc<dyn crate::console::input::SerialInput>,
        vmm_sys_util::eventfd::EventFd,
    )> {
        let room = self.room.try_clone().ok()?;
        Some((Arc::new(self.input.clone()), room))
    }
}

/// What `attach` needs from the VM being built.
pub struct Wiring<'a, 'm> {
    /// The hypervisor's VM (ioeventfds; MSI routes, kept by PCI devices).
    pub vm: &'a Arc<dyn Vm>,
    /// Guest memory: boot RAM and the hotpluggable region, if any.
    pub memory: &'a GuestMemory,
    /// The hotpluggable region `memory` holds, reserved before it was
    /// handed out, for its device.
    pub hotplug: Option<crate::hotplug::Region>,
    /// Places each device and gives it an interrupt line.
    pub manager: &'a mut DeviceManager<'m>,
    /// The metadata store, for the interfaces `mmds-config` names.
    pub mmds: &'a sie_mmds::SharedMmds,
}

/// sie-virtio's form of a configured (or patched) rate limiter: absent
/// buckets are "no limit" when a device is built and "unchanged" in a patch.
pub fn limiter_config(limiter: Option<&sie_config::RateLimiter>) -> LimiterConfig {
    let bucket = |b: &sie_config::TokenBucket| BucketConfig {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    };
    LimiterConfig {
        bandwidth: limiter.and_then(|l| l.bandwidth.as_ref()).map(bucket),
        ops: limiter.and_then(|l| l.ops.as_ref()).map(bucket),
    }
}

fn open_drive(path: &std::path::Path, read_only: bool) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory));
    }
    Ok(file)
}

/// The block device for `drive` (its file opened, its options and rate
/// limiter set) and the name errors carry.
pub(crate) fn block_for(drive: &sie_config::Drive) -> Result<(String, Block)> {
    let name = format!(
        "drive {} ({})",
        drive.drive_id,
        drive.path_on_host.display()
    );
    let read_only = drive.is_read_only.unwrap_or(false);
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
        name: name.clone(),
        source,
    };
    let file = open_drive(&drive.path_on_host, read_only).map_err(|e| fail(e.into()))?;
    let options = BlockOptions {
        read_only,
        cache: match drive.cache_type {
            sie_config::CacheType::Unsafe => CacheType::Unsafe,
            sie_config::CacheType::Writeback => CacheType::Writeback,
        },
        engine: match drive.io_engine {
            sie_config::IoEngine::Sync => IoEngine::Sync,
            sie_config::IoEngine::Async => IoEngine::Async,
        },
    };
    let mut block = Block::new(file, &drive.drive_id, options).map_err(|e| fail(e.into()))?;
    block
        .update_rate_limiter(&limiter_config(drive.rate_limiter.as_deref()))
        .map_err(|e| fail(e.into()))?;
    Ok((name, block))
}

/// The network device for `nic` (its tap opened, its MAC, MTU and rate
/// limiters set; no MMDS) and the name errors carry.
pub(crate) fn net_for(nic: &sie_config::NetworkInterface) -> Result<(String, Net)> {
    let name = format!(
        "network interface {} (tap {})",
        nic.iface_id, nic.host_dev_name
    );
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
        name: name.clone(),
        source,
    };
    let mac = nic
        .guest_mac
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|e| fail(e.into()))?;
    let tap = Tap::open(&nic.host_dev_name).map_err(|e| fail(e.into()))?;
    let mut net = Net::new(tap, mac, nic.mtu).map_err(|e| fail(e.into()))?;
    net.update_rate_limiters(
        Some(&limiter_config(nic.rx_rate_limiter.as_deref())),
        Some(&limiter_config(nic.tx_rate_limiter.as_deref())),
    )
    .map_err(|e| fail(e.into()))?;
    Ok((name, net))
}

impl VirtioDevices {
    /// Creates every paravirtual device `config` asks for and wires it.
    pub fn attach(config: &VmConfig, wiring: &mut Wiring<'_, '_>) -> Result<Self> {
        let mut devices = Self::default();
        if let Some(mmds) = &config.mmds_config {
            let version = match mmds.version {
                sie_config::MmdsVersion::V1 => sie_mmds::MmdsVersion::V1,
                sie_config::MmdsVersion::V2 => sie_mmds::MmdsVersion::V2,
            };
            wiring
                .mmds
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .configure(version, mmds.imds_compat);
        }
        for drive in &config.drives {
            let (name, block) = block_for(drive)?;
            let transport = devices.add(
                wiring,
                format!("virtio-blk:{}", drive.drive_id),
                block,
                &name,
            )?;
            devices.blocks.push((drive.drive_id.clone(), transport));
        }
        for nic in &config.network_interfaces {
            let (name, mut net) = net_for(nic)?;
            let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
                name: name.clone(),
                source,
            };
            if let Some(mmds) = config
                .mmds_config
                .as_ref()
                .filter(|mmds| mmds.network_interfaces.contains(&nic.iface_id))
            {
                let stack =
                    MmdsStack::new(wiring.mmds.clone(), mmds.ipv4()).map_err(|e| fail(e.into()))?;
                net.set_mmds(stack);
            }
            let net_stats = net.stats().clone();
            let transport =
                devices.add(wiring, format!("virtio-net:{}", nic.iface_id), net, &name)?;
            // Dropped frames are what an operator asks about first (a tap
            // that went away drops everything the guest sends).
            if let Some(stats) = devices.stats.last_mut() {
                stats.extra = Box::new(move || net_stats.snapshot().fields().to_vec());
            }
            devices.nets.push((nic.iface_id.clone(), transport));
        }
        if let Some(vsock) = &config.vsock {
            let name = format!("vsock ({})", vsock.uds_path.display());
            let device = Vsock::new(u64::from(vsock.guest_cid), &vsock.uds_path).map_err(|e| {
                VmmError::Virtio {
                    name: name.clone(),
                    source: e.into(),
                }
            })?;
            devices.add(wiring, "virtio-vsock".to_string(), device, &name)?;
        }
        if let Some(entropy) = &config.entropy {
            let limiter = RateLimiter::new(&limiter_config(entropy.rate_limiter.as_deref()))
                .map_err(|e| VmmError::Virtio {
                    name: "entropy device".to_string(),
                    source: e.into(),
                })?;
            devices.add(
                wiring,
                "virtio-rng".to_string(),
                Rng::with_rate_limiter(limiter),
                "entropy device",
            )?;
        }
        // Device memory goes past boot RAM, in the device manager's window
        // (after the hotpluggable region, which `memory` may already hold).
        let ram_end = wiring.hotplug.as_ref().map_or_else(
            || {
                vm_memory::GuestMemoryBackend::last_addr(wiring.memory)
                    .0
                    .saturating_add(1)
            },
            |region| region.ram_end,
        );
        for pmem in &config.pmem {
            let (name, device) =
                crate::pmem::place(pmem, wiring.vm.as_ref(), ram_end, &mut *wiring.manager)?;
            devices.add(wiring, format!("virtio-pmem:{}", pmem.id), device, &name)?;
        }
        if let Some(hotplug) = &config.memory_hotplug {
            let region = wiring.hotplug.take().ok_or_else(|| VmmError::Virtio {
                name: crate::hotplug::NAME.to_string(),
                source: "its region was not reserved with guest memory".into(),
            })?;
            let device = crate::hotplug::place(region);
            let transport = devices.add(
                wiring,
                "virtio-mem".to_string(),
                device,
                crate::hotplug::NAME,
            )?;
            devices.hotplug = Some(crate::hotplug::Hotplug {
                transport,
                config: hotplug.clone(),
            });
        }
        if let Some(balloon) = &config.balloon {
            let options = BalloonOptions {
                target_pages: balloon.target_pages(),
                deflate_on_oom: balloon.deflate_on_oom,
                stats_interval_s: balloon.stats_polling_interval_s,
                free_page_reporting: balloon.free_page_reporting,
                free_page_hinting: balloon.free_page_hinting,
            };
            // Guest RAM is anonymous (or a private map of a memory file):
            // dropped pages read back as zeros (or the file's data).
            let device =
                Balloon::new(options, Box::new(HostDiscard)).map_err(|e| VmmError::Virtio {
                    name: "balloon".to_string(),
                    source: e.into(),
                })?;
            let counters = device.balloon_counters().clone();
            let transport = devices.add(wiring, "virtio-balloon".to_string(), device, "balloon")?;
            if let Some(stats) = devices.stats.last_mut() {
                stats.extra = Box::new(move || counters.fields());
            }
            devices.balloon = Some(transport);
        }
        Ok(devices)
    }

    /// Starts each Sync drive's worker thread (`sie-blk N`), which installs
    /// `seccomp`'s `blk` filter before any I/O. Before the vCPUs run, so no
    /// request is served before.
    pub fn start_workers(&self, seccomp: &sie_seccomp::Seccomp) -> Result<()> {
        for (index, (id, transport)) in self.blocks.iter().enumerate() {
            let filters = seccomp.clone();
            let setup: sie_virtio::block::ThreadSetup = Box::new(move || {
                filters
                    .install(sie_seccomp::ThreadKind::Blk)
                    .map_err(|e| crate::error::error_chain(&e))
            });
            transport
                .with_device(|block| block.start_worker(format!("sie-blk {index}"), setup))
                .map_err(|source| VmmError::Virtio {
                    name: format!("drive {id}"),
                    source: source.into(),
                })?;
        }
        Ok(())
    }

    /// Places one device on the transport the VM uses: virtio-PCI with
    /// `pci` on, virtio-MMIO otherwise.
    pub(crate) fn add<D: VirtioDevice + 'static>(
        &mut self,
        wiring: &mut Wiring<'_, '_>,
        bus_name: String,
        device: D,
        name: &str,
    ) -> Result<Arc<VirtioCore<D>>> {
        let core = if wiring.manager.has_pci() {
            self.add_pci(wiring, &bus_name, device, name)?
        } else {
            self.add_mmio(wiring, &bus_name, device, name)?
        };
        let counters = core.clone();
        self.stats.push(VirtioStats {
            name: bus_name,
            read: Box::new(move || counters.counters()),
            extra: Box::new(Vec::new),
        });
        Ok(core)
    }

    /// An MMIO window and an interrupt line from the device manager, an
    /// ioeventfd per queue, a worker for the event thread.
    fn add_mmio<D: VirtioDevice + 'static>(
        &mut self,
        wiring: &mut Wiring<'_, '_>,
        bus_name: &str,
        device: D,
        name: &str,
    ) -> Result<Arc<VirtioCore<D>>> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
            name: name.to_string(),
            source,
        };
        let (irq, line) = wiring.manager.allocate_line(name)?;
        let transport = Arc::new(
            VirtioMmioTransport::new(device, wiring.memory.clone(), line)
                .map_err(|e| fail(e.into()))?,
        );
        let base = wiring
            .manager
            .add_mmio(bus_name, None, MMIO_WINDOW_LEN, transport.clone())?;
        for (index, event) in transport.queue_events().iter().enumerate() {
            wiring
                .vm
                .register_ioevent(
                    event,
                    IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    Some(index as u64),
                )
                .map_err(|e| fail(e.into()))?;
        }
        wiring.manager.describe(AcpiDevice::VirtioMmio {
            addr: base,
            len: MMIO_WINDOW_LEN,
            irq,
        });
        self.workers
            .push(Box::new(VirtioWorker::new(transport.clone())));
        self.transports.push(transport.clone());
        Ok(transport.core().clone())
    }

    /// A PCI slot with BAR 0 placed by the device manager (the device
    /// registers its notify ioeventfds there, and moves them with the BAR),
    /// one MSI-X vector per queue plus one for configuration changes (an
    /// irqfd each, routed as the guest programs them), a worker.
    fn add_pci<D: VirtioDevice + 'static>(
        &mut self,
        wiring: &mut Wiring<'_, '_>,
        bus_name: &str,
        device: D,
        name: &str,
    ) -> Result<Arc<VirtioCore<D>>> {
        let count = VirtioPciDevice::<D>::vectors_needed(&device);
        let first_gsi = wiring.manager.allocate_msi_gsis(name, count)?;
        let vectors = Arc::new(MsiVectors::new(wiring.vm.clone(), first_gsi, count)?);
        let transport = Arc::new(
            VirtioPciDevice::new(device, wiring.memory.clone(), vectors).map_err(|e| {
                VmmError::Virtio {
                    name: name.to_string(),
                    source: e.into(),
                }
            })?,
        );
        wiring.manager.add_pci_device(bus_name, transport.clone())?;
        self.workers
            .push(Box::new(VirtioWorker::new(transport.clone())));
        Ok(transport.core().clone())
    }
}

/// Why the kernel command line could not be built.
#[derive(Debug, thiserror::Error)]
#[error("kernel command line: {0}")]
pub struct CmdlineError(linux_loader::cmdline::Error);

/// The root device arguments for the first drive marked `is_root_device`
/// (`root=/dev/vdX` in drive order, or `root=PARTUUID=`), unless `base`
/// already names a root.
fn root_args(base: &str, config: &VmConfig) -> Option<String> {
    if base.split_whitespace().any(|arg| arg.starts_with("root=")) {
        return None;
    }
    let Some(index) = config.drives.iter().position(|d| d.is_root_device) else {
        return crate::pmem::root_args(&config.pmem);
    };
    let drive = &config.drives[index];
    let root = match &drive.partuuid {
        Some(uuid) => format!("root=PARTUUID={uuid}"),
        // Drives are /dev/vda, vdb, ... in attach order; past vdz Linux
        // goes on with vdaa, which sie does not spell out.
        None => format!("root=/dev/vd{}", char::from(b'a' + (index % 26) as u8)),
    };
    let mode = if drive.is_read_only == Some(true) {
        "ro"
    } else {
        "rw"
    };
    Some(format!("{root} {mode}"))
}

/// The kernel command line: `base`, the root device, `console=hvc0` (with
/// the virtio console, unless `base` names a console), `pci=off` (unless
/// the VM has PCI or `base` says otherwise about PCI), then what the device manager derives
/// for the placed devices (`virtio_mmio.device=`).
pub fn boot_cmdline(
    base: &str,
    config: &VmConfig,
    layout: &DeviceLayout,
) -> std::result::Result<String, CmdlineError> {
    let mut cmdline = Cmdline::new(sie_arch::layout::CMDLINE_MAX_SIZE).map_err(CmdlineError)?;
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim()).map_err(CmdlineError)?;
    }
    if let Some(root) = root_args(base, config) {
        cmdline.insert_str(root).map_err(CmdlineError)?;
    }
    // The virtio console is the console unless the user named one.
    if config.console_device() == sie_config::ConsoleDevice::Virtio
        && !base
            .split_whitespace()
            .any(|word| word.starts_with("console="))
    {
        cmdline.insert_str("console=hvc0").map_err(CmdlineError)?;
    }
    // Without PCI, sie has no PCI bus: without `pci=off` Linux probes ports
    // 0xCF8/0xCFC for one, ~33,000 exits per Debian boot that nothing
    // answers. A user's own `pci=` wins.
    if !config.pci_enabled() && !base.split_whitespace().any(|word| word.starts_with("pci=")) {
        cmdline.insert_str("pci=off").map_err(CmdlineError)?;
    }
    layout
        .add_virtio_mmio_args(&mut cmdline)
        .map_err(CmdlineError)?;
    let text = cmdline.as_cstring().map_err(CmdlineError)?;
    Ok(text.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_doubles::FakeVm;
    use sie_obs::Observatory;
    use std::time::Instant;

    fn config(drives: serde_json::Value) -> VmConfig {
        VmConfig::from_json(
            &serde_json::json!({
                "boot-source": {"kernel_image_path": "k"},
                "drives": drives,
            })
            .to_string(),
        )
        .unwrap()
    }

    fn layout_with_one_virtio_device() -> DeviceLayout {
        let vm = FakeVm::default();
        let mut manager =
            DeviceManager::new(&vm, Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
        manager.describe(AcpiDevice::VirtioMmio {
            addr: 0xc000_1000,
            len: 0x1000,
            irq: 5,
        });
        manager.finish()
    }

    #[test]
    fn the_root_drive_becomes_root_on_the_command_line() {
        let layout = layout_with_one_virtio_device();
        let config_a = config(serde_json::json!([
            {"drive_id": "data", "path_on_host": "d", "is_root_device": false},
            {"drive_id": "root", "path_on_host": "r", "is_root_device": true, "is_read_only": true}
        ]));
        assert_eq!(
            boot_cmdline("console=ttyS0", &config_a, &layout).unwrap(),
            "console=ttyS0 root=/dev/vdb ro pci=off virtio_mmio.device=4K@0xc0001000:5"
        );
        let config_b = config(serde_json::json!([
            {"drive_id": "root", "path_on_host": "r", "is_root_device": true, "partuuid": "abcd-01"}
        ]));
        assert!(
            boot_cmdline("x", &config_b, &layout)
                .unwrap()
                .starts_with("x root=PARTUUID=abcd-01 rw")
        );
        let empty = DeviceManager::new(
            &FakeVm::default(),
            Arc::new(Observatory::new(Instant::now(), 1)),
        )
        .unwrap()
        .finish();
        assert_eq!(
            boot_cmdline("root=/dev/sda", &config_b, &empty).unwrap(),
            "root=/dev/sda pci=off"
        );
    }

    #[test]
    fn pci_is_off_unless_the_user_says_otherwise() {
        let empty = DeviceManager::new(
            &FakeVm::default(),
            Arc::new(Observatory::new(Instant::now(), 1)),
        )
        .unwrap()
        .finish();
        let config = config(serde_json::json!([]));
        assert_eq!(
            boot_cmdline("console=ttyS0", &config, &empty).unwrap(),
            "console=ttyS0 pci=off"
        );
        assert_eq!(
            boot_cmdline("pci=nomsi quiet", &config, &empty).unwrap(),
            "pci=nomsi quiet"
        );
        // `nopci=off` is not a pci= argument.
        assert_eq!(
            boot_cmdline("nopci=off", &config, &empty).unwrap(),
            "nopci=off pci=off"
        );
        let mut with_pci = config.clone();
        with_pci.pci = Some(sie_config::PciConfig { enabled: true });
        assert_eq!(
            boot_cmdline("console=ttyS0", &with_pci, &empty).unwrap(),
            "console=ttyS0"
        );
    }

    #[test]
    fn a_command_line_too_long_for_the_kernel_is_an_error() {
        let layout = layout_with_one_virtio_device();
        let long = "x".repeat(sie_arch::layout::CMDLINE_MAX_SIZE);
        let error = boot_cmdline(&long, &config(serde_json::json!([])), &layout).unwrap_err();
        assert!(
            error.to_string().starts_with("kernel command line"),
            "{error}"
        );
    }

    fn mmds() -> sie_mmds::SharedMmds {
        Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(
            sie_mmds::DEFAULT_SIZE_LIMIT,
        )))
    }

    #[test]
    fn devices_take_windows_and_lines_from_the_manager() {
        let fake = Arc::new(FakeVm::default());
        let vm: Arc<dyn Vm> = fake.clone();
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let mut manager = DeviceManager::new(fake.as_ref(), obs.clone()).unwrap();
        // The legacy platform's lines, as platform.rs claims them.
        for gsi in [1, 3, 4] {
            manager.fixed_line(gsi).unwrap();
        }
        let memory = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let config =
            VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}, "entropy": {}}"#)
                .unwrap();
        let devices = VirtioDevices::attach(
            &config,
            &mut Wiring {
                vm: &vm,
                memory: &memory,
                hotplug: None,
                manager: &mut manager,
                mmds: &mmds(),
            },
        )
        .unwrap();
        assert_eq!(devices.workers.len(), 1);
        let layout = manager.finish();
        let base = sie_arch::layout::PLATFORM_MMIO_START;
        assert_eq!(
            layout.acpi,
            [AcpiDevice::VirtioMmio {
                addr: base,
                len: MMIO_WINDOW_LEN,
                irq: 5
            }]
        );
        assert!(layout.mmio.find(base).is_some());
        assert_eq!(
            *fake.ioevents.lock().unwrap(),
            [(IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET), Some(0))]
        );
        assert_eq!(obs.report().devices[0].name, "virtio-rng");
    }

    #[test]
    fn with_pci_devices_go_on_the_bus_with_msi_vectors_and_no_line() {
        let fake = Arc::new(FakeVm::default());
        let vm: Arc<dyn Vm> = fake.clone();
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let mut manager = DeviceManager::new(fake.as_ref(), obs.clone()).unwrap();
        manager.add_pci_bus(vm.clone(), 1 << 20, false).unwrap();
        let memory = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let config = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"}, "entropy": {}, "pci": {"enabled": true}}"#,
        )
        .unwrap();
        let devices = VirtioDevices::attach(
            &config,
            &mut Wiring {
                vm: &vm,
                memory: &memory,
                hotplug: None,
                manager: &mut manager,
                mmds: &mmds(),
            },
        )
        .unwrap();
        assert_eq!(devices.workers.len(), 1);
        assert!(devices.transports.is_empty(), "no MMIO transport");
        let layout = manager.finish();
        // Only the host bridge and its hotplug are described: no
        // virtio-mmio device.
        let [
            AcpiDevice::PciHostBridge(_),
            AcpiDevice::PciHotplug {
                irq: hotplug_line, ..
            },
        ] = layout.acpi.as_slice()
        else {
            panic!("{:?}", layout.acpi);
        };
        // rng: one queue, so two vectors (queue and configuration), GSIs 24
        // and 25, and no ISA line (the only one is the hotplug event's).
        assert_eq!(*fake.irqfds.lock().unwrap(), [*hotplug_line, 24, 25]);
        // BAR 0 went into the 64-bit window (4 GiB up), its notify
        // ioeventfd with it.
        let root = layout.pci.expect("a PCI root");
        let device = root.device(1).expect("the device in slot 1");
        let bar = device.bars()[0];
        assert_eq!((bar.address, bar.decoding), (4 << 30, true));
        let ioevents = fake.ioevents.lock().unwrap();
        assert_eq!(ioevents.len(), 1);
        assert!(matches!(ioevents[0], (IoEventAddress::Mmio(a), None) if a >= 4 << 30));
        let cmdline = boot_cmdline("console=ttyS0", &config, &layout_with_no_devices()).unwrap();
        assert_eq!(cmdline, "console=ttyS0");
    }

    fn layout_with_no_devices() -> DeviceLayout {
        DeviceManager::new(
            &FakeVm::default(),
            Arc::new(Observatory::new(Instant::now(), 1)),
        )
        .unwrap()
        .finish()
    }

    #[test]
    fn the_balloon_is_placed_with_its_own_counters() {
        let fake = Arc::new(FakeVm::default());
        let vm: Arc<dyn Vm> = fake.clone();
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let mut manager = DeviceManager::new(fake.as_ref(), obs.clone()).unwrap();
        let memory = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let config = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "balloon": {"amount_mib": 1, "deflate_on_oom": true,
                            "stats_polling_interval_s": 1, "free_page_reporting": true}}"#,
        )
        .unwrap();
        let devices = VirtioDevices::attach(
            &config,
            &mut Wiring {
                vm: &vm,
                memory: &memory,
                hotplug: None,
                manager: &mut manager,
                mmds: &mmds(),
            },
        )
        .unwrap();
        let balloon = devices.balloon.as_ref().expect("a balloon");
        assert_eq!(balloon.with_device(|b| b.target_pages()), 256);
        // inflate, deflate, stats, reporting: one ioeventfd each.
        assert_eq!(fake.ioevents.lock().unwrap().len(), 4);
        let stats = &devices.stats[0];
        assert_eq!(stats.name, "virtio-balloon");
        let fields = stats.fields();
        assert!(fields.contains(&("inflated_pages", 0)), "{fields:?}");
        assert!(fields.contains(&("requests", 0)), "{fields:?}");
    }
}
