//! The VM Generation ID: 16 random bytes in guest memory that change
//! whenever the VM becomes a clone of itself (a snapshot restored), with an
//! interrupt on a Generic Event Device telling the guest to read them again.
//! Linux's vmgenid driver then reseeds its RNG, so two clones of one
//! snapshot never hand out the same random numbers.

use std::sync::Arc;

use sie_arch::acpi::AcpiDevice;
use sie_devices::Interrupt;
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::device_manager::DeviceManager;
use crate::error::{Result, VmmError};

/// Bytes in a generation id.
pub const VMGENID_LEN: usize = 16;

/// The id's place and the line that announces a new one.
pub struct VmGenId {
    addr: u64,
    notify: Arc<dyn Interrupt>,
}

pub(crate) fn random_id() -> std::io::Result<[u8; VMGENID_LEN]> {
    let mut id = [0u8; VMGENID_LEN];
    // SAFETY: `id` is valid for writes of its whole length; getrandom writes
    // at most that many bytes.
    let got = unsafe { libc::getrandom(id.as_mut_ptr().cast(), id.len(), 0) };
    if got != id.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(id)
}

impl VmGenId {
    /// Takes an interrupt line for the event device and describes both
    /// devices to the guest.
    pub fn place(manager: &mut DeviceManager<'_>) -> Result<Self> {
        let (irq, notify) = manager.allocate_line("vmgenid")?;
        let addr = sie_arch::layout::VMGENID_ADDR;
        manager.describe(AcpiDevice::VmGenId { addr, irq });
        Ok(Self { addr, notify })
    }

    /// Writes a fresh random id into guest memory and returns it.
    pub fn write_new_id(&self, memory: &GuestMemory) -> Result<[u8; VMGENID_LEN]> {
        let id = random_id().map_err(|source| VmmError::Host {
            what: "drawing a VM generation id",
            source,
        })?;
        memory
            .write_slice(&id, GuestAddress(self.addr))
            .map_err(|e| VmmError::Platform(format!("writing the VM generation id: {e}").into()))?;
        Ok(id)
    }

    /// The id now in guest memory.
    pub fn read_id(&self, memory: &GuestMemory) -> Result<[u8; VMGENID_LEN]> {
        let mut id = [0u8; VMGENID_LEN];
        memory
            .read_slice(&mut id, GuestAddress(self.addr))
            .map_err(|e| VmmError::Platform(format!("reading the VM generation id: {e}").into()))?;
        Ok(id)
    }

    /// Tells the guest the id changed (before its vCPUs run again).
    pub fn notify(&self) -> Result<()> {
        self.notify.trigger().map_err(|source| VmmError::Host {
            what: "notifying the guest of a new VM generation id",
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_doubles::FakeVm;
    use sie_obs::Observatory;
    use std::time::Instant;

    #[test]
    fn each_new_id_is_fresh_and_lands_in_guest_memory() {
        let vm = FakeVm::default();
        let mut manager =
            DeviceManager::new(&vm, Arc::new(Observatory::new(Instant::now(), 1))).unwrap();
        let vmgenid = VmGenId::place(&mut manager).unwrap();
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let first = vmgenid.write_new_id(&memory).unwrap();
        assert_eq!(vmgenid.read_id(&memory).unwrap(), first);
        let second = vmgenid.write_new_id(&memory).unwrap();
        assert_ne!(first, second);
        vmgenid.notify().unwrap();
        let layout = manager.finish();
        assert!(matches!(
            layout.acpi.as_slice(),
            [AcpiDevice::VmGenId { addr, .. }] if *addr == sie_arch::layout::VMGENID_ADDR
        ));
        assert_eq!(vm.irqfds.lock().unwrap().len(), 1);
    }
}
