//! The virtio console (`--console virtio`): a `sie_virtio::console`
//! device placed like every other virtio device (MMIO or PCI), writing to
//! the same [`ConsoleOutput`] COM1 writes to, and taking the console's
//! input (stdin or the console socket) in COM1's place.
//!
//! COM1 stays on the bus and keeps its output sink, so a guest that also
//! prints to `ttyS0` (an `earlyprintk`, a getty) is still seen; it only
//! gets no input.
//!
//! Guest output is written on the event thread (COM1's is written on the
//! vCPU thread that exits): a stdout that blocks (a stopped terminal, a
//! pipe nobody reads) then holds up the event loop rather than one vCPU.
//! `serial_out_path` and the console socket never block.

use std::sync::Arc;

use sie_config::{ConsoleDevice, VmConfig};
use sie_devices::Interrupt;
use sie_virtio::console::{Console, ConsoleInput};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::console::ConsoleOutput;
use crate::console::input::SerialInput;
use crate::error::{Result, VmmError};
use crate::virtio::{VirtioConsole, VirtioDevices, Wiring};

/// The device's name in statistics and on the bus.
pub const NAME: &str = "virtio-console";

impl SerialInput for ConsoleInput {
    fn enqueue(&self, bytes: &[u8]) -> usize {
        ConsoleInput::enqueue(self, bytes)
    }
}

/// Places the virtio console if `config` asks for it.
pub fn attach(
    config: &VmConfig,
    devices: &mut VirtioDevices,
    wiring: &mut Wiring<'_, '_>,
    output: &ConsoleOutput,
) -> Result<()> {
    if config.console_device() != ConsoleDevice::Virtio {
        return Ok(());
    }
    let fail = |source: std::io::Error| VmmError::Virtio {
        name: NAME.to_string(),
        source: source.into(),
    };
    let room = EventFd::new(EFD_NONBLOCK).map_err(fail)?;
    let notifier: Arc<dyn Interrupt> = Arc::new(room.try_clone().map_err(fail)?);
    let device = Console::new(Box::new(output.clone()), Some(notifier)).map_err(fail)?;
    let input = device.input();
    devices.add(wiring, NAME.to_string(), device, NAME)?;
    if let Some(stats) = devices.stats.last_mut() {
        let waiting = input.clone();
        stats.extra = Box::new(move || vec![("input_buffered_bytes", waiting.buffered() as u64)]);
    }
    devices.console = Some(VirtioConsole { input, room });
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use sie_arch::acpi::AcpiDevice;
    use sie_hv::{GuestMemory, Vm};
    use sie_obs::Observatory;
    use sie_virtio::MMIO_WINDOW_LEN;

    use super::*;
    use crate::device_manager::{DeviceLayout, DeviceManager};
    use crate::test_doubles::FakeVm;
    use crate::virtio::boot_cmdline;

    fn config(extra: &str) -> VmConfig {
        VmConfig::from_json(&format!(
            r#"{{"boot-source": {{"kernel_image_path": "k"}}{extra}}}"#
        ))
        .unwrap()
    }

    /// Attaches `config`'s devices; returns them and the layout.
    fn place(config: &VmConfig) -> (VirtioDevices, DeviceLayout) {
        let fake = Arc::new(FakeVm::default());
        let vm: Arc<dyn Vm> = fake.clone();
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let mut manager = DeviceManager::new(fake.as_ref(), obs).unwrap();
        for gsi in [1, 3, 4] {
            manager.fixed_line(gsi).unwrap();
        }
        let memory = GuestMemory::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
        let mmds = Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(1 << 10)));
        let mut wiring = Wiring {
            vm: &vm,
            memory: &memory,
            hotplug: None,
            manager: &mut manager,
            mmds: &mmds,
        };
        let mut devices = VirtioDevices::attach(config, &mut wiring).unwrap();
        let output = ConsoleOutput::new(Box::new(std::io::sink()));
        attach(config, &mut devices, &mut wiring, &output).unwrap();
        (devices, manager.finish())
    }

    #[test]
    fn virtio_places_a_console_with_its_input_and_serial_places_none() {
        let (devices, layout) = place(&config(r#", "console": {"device": "virtio"}"#));
        assert_eq!(devices.workers.len(), 1);
        assert_eq!(devices.stats[0].name, NAME);
        assert!(
            devices.stats[0]
                .fields()
                .contains(&("input_buffered_bytes", 0))
        );
        assert!(matches!(
            layout.acpi.as_slice(),
            [AcpiDevice::VirtioMmio {
                len: MMIO_WINDOW_LEN,
                ..
            }]
        ));
        let (sink, _room) = devices.console.as_ref().unwrap().input().unwrap();
        assert_eq!(sink.enqueue(b"x"), 1);
        assert_eq!(
            devices.stats[0].fields().last(),
            Some(&("input_buffered_bytes", 1))
        );

        for serial in ["", r#", "console": {"device": "serial"}"#] {
            let (devices, layout) = place(&config(serial));
            assert!(devices.console.is_none() && devices.workers.is_empty());
            assert!(layout.acpi.is_empty());
        }
    }

    #[test]
    fn virtio_adds_console_hvc0_unless_the_command_line_names_a_console() {
        let virtio = config(r#", "console": {"device": "virtio"}"#);
        let (_, layout) = place(&virtio);
        let base = virtio.boot_source.boot_args_for(ConsoleDevice::Virtio);
        let cmdline = boot_cmdline(base, &virtio, &layout).unwrap();
        assert!(
            cmdline.starts_with("console=hvc0 reboot=k panic=-1"),
            "{cmdline}"
        );
        assert_eq!(cmdline.matches("console=").count(), 1);
        assert_eq!(
            boot_cmdline("quiet", &virtio, &layout).unwrap(),
            "quiet console=hvc0 pci=off virtio_mmio.device=4K@0xc0000000:5"
        );
        assert_eq!(
            boot_cmdline("console=ttyS0 quiet", &virtio, &layout).unwrap(),
            "console=ttyS0 quiet pci=off virtio_mmio.device=4K@0xc0000000:5"
        );
        let serial = config("");
        let (_, empty) = place(&serial);
        assert_eq!(
            boot_cmdline("quiet", &serial, &empty).unwrap(),
            "quiet pci=off"
        );
    }
}
