//! PCI hotplug at run time: what the device manager hands over when the VM
//! is built (the root bus, its hotplug controller, the BAR windows'
//! allocators with the ranges each slot holds, the MSI GSIs), so a device
//! can be put into a free slot of the running VM and taken out again.
//!
//! [`PciHotplug::plug`] places the device's BARs, adds it to the root and
//! tells the guest (ACPI device check: Linux's acpiphp rescans the slot).
//! [`PciHotplug::unplug`] asks the guest to eject (ACPI eject request),
//! waits until its `_EJ0` says it let go, then removes the device from the
//! root (its BARs unmapped, so its ioeventfds go with them) and frees its
//! BAR ranges and MSI GSIs. The caller drops the device's irqfds and
//! worker.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sie_pci::{HotplugController, PciDevice, PciRoot, SLOTS};
use vm_allocator::{AddressAllocator, AllocPolicy, RangeInclusive};

use super::pci::BarWindows;
use crate::error::{Result, VmmError};

/// Why a hotplug request failed.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Every slot holds a device.
    #[error("no free PCI slot for {0}")]
    NoFreeSlot(String),
    /// No device in the slot to remove.
    #[error("PCI slot {0} holds no hotpluggable device")]
    EmptySlot(u8),
    /// No room for the device's MSI vectors.
    #[error("no {0} free MSI interrupts")]
    NoMsi(u16),
    /// The controller refused or the guest did not let go in time.
    #[error(transparent)]
    Controller(#[from] sie_pci::HotplugError),
    /// The root bus refused the device.
    #[error(transparent)]
    Root(#[from] sie_pci::PciRootError),
}

struct Resources {
    windows: BarWindows,
    msi_gsis: AddressAllocator,
    /// MSI GSIs each hotplugged slot holds.
    msi_held: BTreeMap<u8, RangeInclusive>,
}

/// The running VM's side of PCI hotplug.
pub struct PciHotplug {
    root: Arc<PciRoot>,
    controller: Arc<HotplugController>,
    resources: Mutex<Resources>,
}

fn fail(name: &str, error: HotplugError) -> VmmError {
    VmmError::Device {
        name: name.to_string(),
        source: Box::new(error),
    }
}

impl PciHotplug {
    pub(super) fn new(
        root: Arc<PciRoot>,
        controller: Arc<HotplugController>,
        windows: BarWindows,
        msi_gsis: AddressAllocator,
    ) -> Self {
        Self {
            root,
            controller,
            resources: Mutex::new(Resources {
                windows,
                msi_gsis,
                msi_held: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Resources> {
        self.resources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The root bus.
    pub fn root(&self) -> &Arc<PciRoot> {
        &self.root
    }

    /// The hotplug controller.
    pub fn controller(&self) -> &Arc<HotplugController> {
        &self.controller
    }

    /// Takes `count` consecutive GSIs for a new device's MSI vectors; give
    /// them to [`Self::plug`] (which frees them with the slot) or back with
    /// [`Self::free_msi_gsis`].
    pub fn allocate_msi_gsis(&self, name: &str, count: u16) -> Result<RangeInclusive> {
        self.lock()
            .msi_gsis
            .allocate(u64::from(count.max(1)), 1, AllocPolicy::FirstMatch)
            .map_err(|_| fail(name, HotplugError::NoMsi(count)))
    }

    /// Gives back GSIs from [`Self::allocate_msi_gsis`] never plugged.
    pub fn free_msi_gsis(&self, range: &RangeInclusive) {
        if let Err(error) = self.lock().msi_gsis.free(range) {
            tracing::warn!(%error, "freeing MSI GSIs");
        }
    }

    /// Puts `device` into the first free slot (its BARs placed, `msi` held
    /// with the slot) and tells the guest. Returns the slot.
    pub fn plug(
        &self,
        name: &str,
        device: Arc<dyn PciDevice>,
        msi: Option<RangeInclusive>,
    ) -> Result<u8> {
        let slot = (1..SLOTS)
            .find(|&slot| self.root.device(slot).is_none())
            .ok_or_else(|| fail(name, HotplugError::NoFreeSlot(name.to_string())))?;
        {
            let mut resources = self.lock();
            let windows = &mut resources.windows;
            let added = self.root.add_device_at(slot, device, &mut |request| {
                windows.place(request).map_err(|e| Box::new(e) as _)
            });
            if let Err(error) = added {
                windows.free_slot(slot);
                return Err(fail(name, error.into()));
            }
            if let Some(range) = msi {
                resources.msi_held.insert(slot, range);
            }
        }
        if let Err(error) = self.controller.announce_added(slot) {
            self.release(slot);
            return Err(fail(name, error.into()));
        }
        tracing::info!(slot, device = name, "PCI device hotplugged");
        Ok(slot)
    }

    /// Asks the guest to eject the device in `slot`, waits up to `timeout`
    /// for it to let go, then takes the device off the bus and frees its
    /// resources. On a timeout the device stays (the request stays
    /// pending: a later call waits again).
    pub fn unplug(&self, slot: u8, timeout: Duration) -> Result<Arc<dyn PciDevice>> {
        let name = format!("PCI slot {slot}");
        if slot == 0 || self.root.device(slot).is_none() {
            return Err(fail(&name, HotplugError::EmptySlot(slot)));
        }
        if !self.controller.removal_pending(slot) {
            self.controller
                .request_removal(slot)
                .map_err(|e| fail(&name, e.into()))?;
        }
        self.controller
            .wait_released(slot, timeout)
            .map_err(|e| fail(&name, e.into()))?;
        let device = self.release(slot);
        device.ok_or_else(|| fail(&name, HotplugError::EmptySlot(slot)))
    }

    /// Takes the device in `slot` off the bus and frees what it held.
    fn release(&self, slot: u8) -> Option<Arc<dyn PciDevice>> {
        let device = self.root.remove_device(slot);
        let mut resources = self.lock();
        resources.windows.free_slot(slot);
        if let Some(range) = resources.msi_held.remove(&slot)
            && let Err(error) = resources.msi_gsis.free(&range)
        {
            tracing::warn!(slot, %error, "freeing MSI GSIs");
        }
        tracing::info!(slot, "PCI device unplugged");
        device
    }
}

#[cfg(test)]
#[path = "hotplug_tests.rs"]
mod tests;
