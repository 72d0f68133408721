//! Passed-through devices (the config's `vfio` list) on the VM's PCI bus:
//! each is opened (checked, reset, guest RAM mapped for its DMA), gets MSI
//! GSIs with their irqfds from the device manager, and takes a PCI slot
//! whose BARs the manager places (its BAR pages then become memory slots
//! through the root's [`crate::device_manager::pci::VmBarMapper`]); its INTx
//! pin, if it has one, raises the line the DSDT's `_PRT` names for its slot.

use std::io;
use std::sync::Arc;

use sie_config::VmConfig;
use sie_hv::{GuestMemory, Vm};
use sie_pci::MsiInterrupts;
use sie_vfio::VfioPciDevice;

use crate::device_manager::DeviceManager;
use crate::device_manager::msi::MsiVectors;
use crate::error::{Result, VmmError};

/// Puts every device of `config.vfio` on the PCI bus `manager` holds.
pub fn attach(
    config: &VmConfig,
    vm: &Arc<dyn Vm>,
    memory: &GuestMemory,
    manager: &mut DeviceManager<'_>,
) -> Result<()> {
    for entry in &config.vfio {
        let name = format!("vfio-{}", entry.id);
        let device = VfioPciDevice::open(&entry.path, memory, |count| {
            let first = manager
                .allocate_msi_gsis(&name, count)
                .map_err(|e| io::Error::other(crate::error::error_chain(&e)))?;
            // VFIO signals the irqfds itself: a masked vector's signal
            // must wait for the PBA, not meet a missing route.
            let vectors = MsiVectors::detached_while_unrouted(vm.clone(), first, count)
                .map_err(|e| io::Error::other(crate::error::error_chain(&e)))?;
            Ok(Arc::new(vectors) as Arc<dyn MsiInterrupts>)
        })
        .map_err(|source| VmmError::Vfio {
            id: entry.id.clone(),
            source: Box::new(source),
        })?;
        let device = Arc::new(device);
        let bdf = manager.add_pci_device(&name, device.clone())?;
        // INTx: a level-triggered line through a resampling irqfd on the
        // GSI the DSDT's _PRT gives the device's slot and pin.
        if let Some(intx) = device.intx()
            && let Some(gsi) = manager.pci_intx_gsi(bdf, intx.pin - 1)
        {
            vm.register_irqfd_resample(&intx.trigger, &intx.resample, gsi)?;
            device.set_interrupt_line(u8::try_from(gsi).unwrap_or(0xff));
        }
        tracing::info!(
            "vfio {}: {} passed through at {bdf}",
            entry.id,
            entry.path.display()
        );
    }
    Ok(())
}
