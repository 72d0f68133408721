//! The paravirtual devices of one VM: each configured drive and network
//! interface, the vsock and the entropy device, each behind its own
//! virtio-MMIO window, with an interrupt line and one ioeventfd per queue.
//!
//! A queue notification is an ioeventfd: the guest's write to QueueNotify
//! wakes the VMM event thread without a trip through the vCPU's exit
//! dispatch; the device answers through an irqfd. So the vCPU thread only
//! sees the device's rare register accesses during driver setup.
//!
//! Every device is described twice: in the ACPI DSDT (`LNRO0005`, which
//! stock distro kernels bind to) and as `virtio_mmio.device=` on the
//! command line (for minimal kernels built without ACPI).

use std::fs::{File, OpenOptions};
use std::sync::Arc;

use event_manager::MutEventSubscriber;
use sie_arch::acpi::VirtioMmioAcpi;
use sie_config::VmConfig;
use sie_devices::{Bus, DeviceRegistry, Interrupt};
use sie_hv::{IoEventAddress, Vm};
use sie_virtio::block::Block;
use sie_virtio::net::{Net, Tap, parse_mac};
use sie_virtio::rng::Rng;
use sie_virtio::vsock::Vsock;
use sie_virtio::{
    CountersSnapshot, MMIO_WINDOW_LEN, QUEUE_NOTIFY_OFFSET, VirtioDevice, VirtioMmioTransport,
    VirtioWorker,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::error::{Result, VmmError};

/// Interrupt lines for virtio devices: the ISA lines no legacy device
/// uses, then the I/O APIC's PCI-range pins.
const IRQS: [u32; 17] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22,
];

/// One device's place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// MMIO base.
    pub base: u64,
    /// Interrupt line (GSI).
    pub irq: u32,
}

/// Counters of one virtio device, read when statistics are asked for.
pub struct VirtioStats {
    /// e.g. `virtio-blk:rootfs`.
    pub name: String,
    /// Reads the device's counters.
    pub read: Box<dyn Fn() -> CountersSnapshot + Send + Sync>,
}

/// The paravirtual devices, once created.
#[derive(Default)]
pub struct VirtioDevices {
    /// The event-thread halves, to be added to the VMM's event manager.
    pub workers: Vec<Box<dyn MutEventSubscriber + Send>>,
    /// Block devices by drive id (for `PATCH /drives`).
    pub blocks: Vec<(String, Arc<VirtioMmioTransport<Block>>)>,
    /// Counters per device.
    pub stats: Vec<VirtioStats>,
    /// Their ACPI descriptions.
    pub acpi: Vec<VirtioMmioAcpi>,
    /// `virtio_mmio.device=` arguments for kernels without ACPI.
    pub cmdline: Vec<String>,
}

/// What `attach` needs from the VM being built.
pub struct Wiring<'a> {
    /// The hypervisor's VM (irqfds, ioeventfds).
    pub vm: &'a dyn Vm,
    /// Guest RAM.
    pub memory: &'a GuestMemoryMmap,
    /// The MMIO bus being built.
    pub mmio: &'a mut Bus,
    /// Names for the observatory.
    pub registry: &'a mut DeviceRegistry,
}

fn slot(index: usize) -> Option<Slot> {
    let irq = *IRQS.get(index)?;
    let base = sie_arch::layout::VIRTIO_MMIO_START + index as u64 * MMIO_WINDOW_LEN;
    Some(Slot { base, irq })
}

fn open_drive(path: &std::path::Path, read_only: bool) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
    if file.metadata()?.is_dir() {
        return Err(std::io::Error::from(std::io::ErrorKind::IsADirectory));
    }
    Ok(file)
}

impl VirtioDevices {
    /// Creates every paravirtual device `config` asks for and wires it.
    pub fn attach(config: &VmConfig, wiring: &mut Wiring<'_>) -> Result<Self> {
        let mut devices = Self::default();
        for drive in &config.drives {
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
            let block = Block::new(file, read_only, &drive.drive_id).map_err(|e| fail(e.into()))?;
            let transport = devices.add(
                wiring,
                format!("virtio-blk:{}", drive.drive_id),
                block,
                &name,
            )?;
            devices.blocks.push((drive.drive_id.clone(), transport));
        }
        for nic in &config.network_interfaces {
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
            let net = Net::new(tap, mac, None).map_err(|e| fail(e.into()))?;
            devices.add(wiring, format!("virtio-net:{}", nic.iface_id), net, &name)?;
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
        if config.entropy.is_some() {
            devices.add(
                wiring,
                "virtio-rng".to_string(),
                Rng::new(),
                "entropy device",
            )?;
        }
        Ok(devices)
    }

    /// Places one device in the next slot.
    fn add<D: VirtioDevice + 'static>(
        &mut self,
        wiring: &mut Wiring<'_>,
        bus_name: String,
        device: D,
        name: &str,
    ) -> Result<Arc<VirtioMmioTransport<D>>> {
        let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
            name: name.to_string(),
            source,
        };
        let slot = slot(self.acpi.len())
            .ok_or_else(|| fail("too many virtio devices (at most 17)".into()))?;
        let line = EventFd::new(EFD_NONBLOCK).map_err(|e| fail(e.into()))?;
        wiring
            .vm
            .register_irqfd(&line, slot.irq)
            .map_err(|e| fail(e.into()))?;
        let line: Arc<dyn Interrupt> = Arc::new(line);
        let transport = Arc::new(
            VirtioMmioTransport::new(device, wiring.memory.clone(), line)
                .map_err(|e| fail(e.into()))?,
        );
        for (index, event) in transport.queue_events().iter().enumerate() {
            wiring
                .vm
                .register_ioevent(
                    event,
                    IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET),
                    Some(index as u64),
                )
                .map_err(|e| fail(e.into()))?;
        }
        let id = wiring.registry.register(bus_name.clone());
        wiring
            .mmio
            .insert(slot.base, MMIO_WINDOW_LEN, transport.clone(), id)
            .map_err(|e| fail(e.into()))?;
        self.workers
            .push(Box::new(VirtioWorker::new(transport.clone())));
        let counters = transport.clone();
        self.stats.push(VirtioStats {
            name: bus_name,
            read: Box::new(move || counters.counters()),
        });
        self.acpi.push(VirtioMmioAcpi {
            addr: slot.base,
            len: MMIO_WINDOW_LEN,
            irq: slot.irq,
        });
        self.cmdline.push(format!(
            "virtio_mmio.device=4K@{:#x}:{}",
            slot.base, slot.irq
        ));
        Ok(transport)
    }
}

/// The kernel command line with the root device and the virtio-mmio
/// devices added. A `root=` the user wrote wins.
pub fn boot_cmdline(base: &str, config: &VmConfig, devices: &VirtioDevices) -> String {
    let mut cmdline = base.to_string();
    let has_root = base.split_whitespace().any(|arg| arg.starts_with("root="));
    if !has_root && let Some(index) = config.drives.iter().position(|d| d.is_root_device) {
        let drive = &config.drives[index];
        let root = match &drive.partuuid {
            Some(uuid) => format!("root=PARTUUID={uuid}"),
            None => format!("root=/dev/vd{}", (b'a' + index as u8) as char),
        };
        cmdline.push(' ');
        cmdline.push_str(&root);
        cmdline.push_str(if drive.is_read_only == Some(true) {
            " ro"
        } else {
            " rw"
        });
    }
    for device in &devices.cmdline {
        cmdline.push(' ');
        cmdline.push_str(device);
    }
    cmdline
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_layout_and_skip_used_lines() {
        assert_eq!(
            slot(0),
            Some(Slot {
                base: 0xC000_1000,
                irq: 5
            })
        );
        assert_eq!(slot(3).map(|s| s.irq), Some(9), "IRQ 8 is the RTC's");
        assert_eq!(slot(16).map(|s| s.base), Some(0xC001_1000));
        assert_eq!(slot(17), None);
    }

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

    #[test]
    fn the_root_drive_becomes_root_on_the_command_line() {
        let devices = VirtioDevices {
            cmdline: vec!["virtio_mmio.device=4K@0xc0001000:5".into()],
            ..Default::default()
        };
        let config_a = config(serde_json::json!([
            {"drive_id": "data", "path_on_host": "d", "is_root_device": false},
            {"drive_id": "root", "path_on_host": "r", "is_root_device": true, "is_read_only": true}
        ]));
        assert_eq!(
            boot_cmdline("console=ttyS0", &config_a, &devices),
            "console=ttyS0 root=/dev/vdb ro virtio_mmio.device=4K@0xc0001000:5"
        );
        let config_b = config(serde_json::json!([
            {"drive_id": "root", "path_on_host": "r", "is_root_device": true, "partuuid": "abcd-01"}
        ]));
        assert!(boot_cmdline("x", &config_b, &devices).starts_with("x root=PARTUUID=abcd-01 rw"));
        assert_eq!(
            boot_cmdline("root=/dev/sda", &config_b, &VirtioDevices::default()),
            "root=/dev/sda"
        );
    }
}
