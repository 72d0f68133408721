//! Drives and network interfaces added to a running PCI VM (`PUT
//! /drives/{id}` and `PUT /network-interfaces/{id}` after boot with
//! `--enable-pci`).
//!
//! Building a device needs what the VMM thread's seccomp filter forbids
//! once the VM runs: opening eventfds, KVM irqfds and ioeventfds, a new
//! `sie-blk` thread. So a `sie-hotplug` thread is spawned before that
//! filter goes on (it keeps the process-wide build filter, as the vCPU
//! threads did before theirs) and runs the builds the VMM thread hands it;
//! the VMM thread waits for the result (milliseconds) and adds the new
//! device's worker to its event loop.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use event_manager::MutEventSubscriber;
use sie_hv::{GuestMemory, Vm};
use sie_virtio::VirtioDevice;
use sie_virtio::block::Block;
use sie_virtio::net::Net;
use sie_virtio::pci::VirtioPciDevice;
use sie_virtio::{VirtioCore, VirtioTransport, VirtioWorker};

use crate::device_manager::hotplug::PciHotplug;
use crate::device_manager::msi::MsiVectors;
use crate::error::{Result, VmmError};
use crate::virtio::{VirtioStats, block_for, net_for};

type Job = Box<dyn FnOnce() + Send>;

/// The thread that builds hotplugged devices.
pub struct HotplugWorker {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HotplugWorker {
    /// Spawns `sie-hotplug`; it ends when the worker is dropped.
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sie-hotplug".to_string())
            .spawn(move || {
                for job in queue {
                    job();
                }
            })?;
        Ok(Self {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `job` on the thread and returns its result.
    pub fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let (done, result) = mpsc::sync_channel(1);
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(Box::new(move || {
                let _ = done.send(job());
            }));
        let gone = || VmmError::Platform("the sie-hotplug thread is gone".into());
        sent.map_err(|_| gone())?;
        result.recv().map_err(|_| gone())
    }
}

/// A device on the bus: what the VMM thread keeps of it.
pub struct Plugged<D: VirtioDevice> {
    /// Its device (for `PATCH`).
    pub core: Arc<VirtioCore<D>>,
    /// Its event-thread half.
    pub worker: Box<dyn MutEventSubscriber + Send>,
    /// Its counters.
    pub stats: VirtioStats,
    /// The slot it took.
    pub slot: u8,
}

/// Puts `device` on virtio-PCI (MSI-X vectors from the hotplug GSIs),
/// runs `started` on it (a drive's `sie-blk` thread), and plugs it into a
/// free slot, which tells the guest. Runs on `sie-hotplug`.
fn plug<D: VirtioDevice + 'static>(
    device: D,
    name: &str,
    bus_name: String,
    vm: Arc<dyn Vm>,
    memory: GuestMemory,
    hotplug: &PciHotplug,
    started: impl FnOnce(&VirtioPciDevice<D>) -> Result<()>,
) -> Result<Plugged<D>> {
    let count = VirtioPciDevice::<D>::vectors_needed(&device);
    let gsis = hotplug.allocate_msi_gsis(name, count)?;
    let built = (|| {
        // The allocator's range starts below 24 + 1000.
        let first = u32::try_from(gsis.start()).unwrap_or(u32::MAX);
        let vectors = Arc::new(MsiVectors::new(vm, first, count)?);
        let transport = Arc::new(VirtioPciDevice::new(device, memory, vectors).map_err(|e| {
            VmmError::Virtio {
                name: name.to_string(),
                source: e.into(),
            }
        })?);
        started(&transport)?;
        Ok(transport)
    })();
    let transport = match built {
        Ok(transport) => transport,
        Err(error) => {
            hotplug.free_msi_gsis(&gsis);
            return Err(error);
        }
    };
    let slot = hotplug.plug(&bus_name, transport.clone(), Some(gsis))?;
    let counters = transport.core().clone();
    Ok(Plugged {
        core: transport.core().clone(),
        worker: Box::new(VirtioWorker::new(transport)),
        stats: VirtioStats {
            name: bus_name,
            read: Box::new(move || counters.counters()),
            extra: Box::new(Vec::new),
        },
        slot,
    })
}

/// Builds the block device for `drive` (its `sie-blk` thread under the
/// `blk` filter) and plugs it. Runs on `sie-hotplug`.
pub fn plug_drive(
    drive: &sie_config::Drive,
    vm: Arc<dyn Vm>,
    memory: GuestMemory,
    hotplug: &PciHotplug,
    seccomp: sie_seccomp::Seccomp,
) -> Result<Plugged<Block>> {
    let (name, block) = block_for(drive)?;
    let bus_name = format!("virtio-blk:{}", drive.drive_id);
    let thread = format!("sie-blk {}", drive.drive_id);
    plug(block, &name, bus_name, vm, memory, hotplug, |transport| {
        let setup: sie_virtio::block::ThreadSetup = Box::new(move || {
            seccomp
                .install(sie_seccomp::ThreadKind::Blk)
                .map_err(|e| crate::error::error_chain(&e))
        });
        transport
            .core()
            .with_device(|block| block.start_worker(thread, setup))
            .map_err(|source| VmmError::Virtio {
                name: name.clone(),
                source: source.into(),
            })
    })
}

/// Builds the network device for `nic` (its tap opened) and plugs it.
/// Runs on `sie-hotplug`.
pub fn plug_net(
    nic: &sie_config::NetworkInterface,
    vm: Arc<dyn Vm>,
    memory: GuestMemory,
    hotplug: &PciHotplug,
) -> Result<Plugged<Net>> {
    let (name, net) = net_for(nic)?;
    let net_stats = net.stats().clone();
    let bus_name = format!("virtio-net:{}", nic.iface_id);
    let mut plugged = plug(net, &name, bus_name, vm, memory, hotplug, |_| Ok(()))?;
    plugged.stats.extra = Box::new(move || net_stats.snapshot().fields().to_vec());
    Ok(plugged)
}
