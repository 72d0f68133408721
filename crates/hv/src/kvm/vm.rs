//! [`KvmVm`]: one KVM virtual machine: memory slots, the in-kernel
//! platform devices, interrupt plumbing and vCPU creation.

use std::sync::{Arc, Mutex, PoisonError};

use kvm_bindings::{
    KVM_MEM_LOG_DIRTY_PAGES, KVM_PIT_SPEAKER_DUMMY, kvm_pit_config, kvm_userspace_memory_region,
};
use kvm_ioctls::{IoEventAddress as KvmIoEventAddress, NoDatamatch, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

use super::call;
use super::memory::KeptMemory;
use super::routing::MsiRoutes;
use super::vcpu::KvmVcpu;
use crate::{DirtyLog, GuestMemory, HvError, IoEventAddress, MsiMessage, Result, Vcpu, Vm};

/// One KVM virtual machine. Created by [`super::Kvm`].
#[derive(Debug)]
pub struct KvmVm {
    fd: VmFd,
    /// `KVM_GET_VCPU_MMAP_SIZE`: bytes to map of each vCPU file.
    run_size: usize,
    memory: Arc<KeptMemory>,
    /// The MSI routes set so far (every update sends the whole table).
    msi_routes: Mutex<MsiRoutes>,
}

impl KvmVm {
    pub(crate) fn new(fd: VmFd, run_size: usize) -> KvmVm {
        KvmVm {
            fd,
            run_size,
            memory: Arc::new(KeptMemory::default()),
            msi_routes: Mutex::new(MsiRoutes::default()),
        }
    }

    /// The number of KVM memory slots in use.
    pub fn memory_slots(&self) -> u32 {
        self.memory
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_slot
    }
}

/// The width KVM compares a datamatch against: 4 bytes (the register width
/// of virtio-mmio and most PIO devices), or 8 when the value needs it.
fn datamatch_width(value: u64) -> usize {
    if u32::try_from(value).is_ok() { 4 } else { 8 }
}

fn kvm_address(addr: IoEventAddress) -> KvmIoEventAddress {
    match addr {
        IoEventAddress::Pio(port) => KvmIoEventAddress::Pio(port),
        IoEventAddress::Mmio(gpa) => KvmIoEventAddress::Mmio(gpa),
    }
}

impl Vm for KvmVm {
    fn save_state(&self) -> Result<crate::VmState> {
        Ok(crate::VmState {
            kvm: super::state::save_vm(&self.fd)?,
            skipped: Vec::new(),
            saved_at_unix_ns: crate::state::unix_now_ns(),
        })
    }

    fn restore_state(&self, state: &crate::VmState) -> Result<()> {
        super::state::restore_vm(&self.fd, &state.kvm)
    }

    fn advance_clock(&self, by: std::time::Duration) -> Result<u64> {
        super::state::advance_clock(&self.fd, by)
    }

    fn map_memory(&self, memory: &GuestMemory) -> Result<()> {
        let mut slots = self
            .memory
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Keep the clone before telling the kernel, so there is no moment
        // when a slot points at memory nothing in sie keeps alive.
        slots.kept.push(memory.clone());
        for region in memory.iter() {
            let slot = slots.next_slot;
            let host = region.as_ptr() as u64;
            let flags = if slots.log_dirty {
                KVM_MEM_LOG_DIRTY_PAGES
            } else {
                0
            };
            let entry = kvm_userspace_memory_region {
                slot,
                flags,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host,
            };
            // SAFETY: `host..host+len` is a live mapping owned by `region`;
            // a clone of the collection holding it is kept in `self.memory`,
            // which the VM and every vCPU (the only things that can make the
            // kernel touch the slot) hold an Arc to, so the mapping outlives
            // every use the kernel can make of it.
            unsafe { self.fd.set_user_memory_region(entry) }
                .map_err(call("KVM_SET_USER_MEMORY_REGION"))?;
            slots.entries.push(entry);
            slots.next_slot += 1;
        }
        Ok(())
    }

    fn map_device_memory(&self, guest_addr: u64, region: Arc<MmapRegion>) -> Result<u32> {
        super::device_memory::map(&self.fd, &self.memory, guest_addr, region, false)
    }

    fn map_read_only_device_memory(&self, guest_addr: u64, region: Arc<MmapRegion>) -> Result<u32> {
        super::device_memory::map(&self.fd, &self.memory, guest_addr, region, true)
    }

    fn unmap_device_memory(&self, slot: u32) -> Result<()> {
        super::device_memory::unmap(&self.fd, &self.memory, slot)
    }

    fn enable_dirty_log(&self) -> Result<()> {
        let mut slots = self
            .memory
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.log_dirty = true;
        for entry in &mut slots.entries {
            entry.flags |= KVM_MEM_LOG_DIRTY_PAGES;
            // SAFETY: the same slot, guest range and host mapping `map_memory`
            // registered (only the flags change); the mapping is still kept
            // alive by `slots.kept`, as argued there.
            unsafe { self.fd.set_user_memory_region(*entry) }
                .map_err(call("KVM_SET_USER_MEMORY_REGION (dirty log)"))?;
        }
        Ok(())
    }

    fn take_dirty_log(&self) -> Result<Vec<DirtyLog>> {
        let slots = self
            .memory
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !slots.log_dirty {
            return Err(HvError::Invalid("dirty page logging is off".into()));
        }
        slots
            .entries
            .iter()
            .map(|entry| {
                let len = usize::try_from(entry.memory_size)
                    .map_err(|_| HvError::Invalid("memory slot too large".into()))?;
                let pages = self
                    .fd
                    .get_dirty_log(entry.slot, len)
                    .map_err(call("KVM_GET_DIRTY_LOG"))?;
                Ok(DirtyLog {
                    guest_addr: entry.guest_phys_addr,
                    len: entry.memory_size,
                    pages,
                })
            })
            .collect()
    }

    fn create_platform(&self, tss_addr: u64, identity_map_addr: u64) -> Result<()> {
        let tss = usize::try_from(tss_addr)
            .map_err(|_| HvError::Invalid(format!("TSS address {tss_addr:#x} too large")))?;
        self.fd
            .set_identity_map_address(identity_map_addr)
            .map_err(call("KVM_SET_IDENTITY_MAP_ADDR"))?;
        self.fd
            .set_tss_address(tss)
            .map_err(call("KVM_SET_TSS_ADDR"))?;
        self.fd
            .create_irq_chip()
            .map_err(call("KVM_CREATE_IRQCHIP"))?;
        // The dummy speaker port (0x61) keeps guests' PIT calibration happy
        // without an emulated PC speaker.
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd.create_pit2(pit).map_err(call("KVM_CREATE_PIT2"))
    }

    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(call("KVM_CREATE_VCPU"))?;
        let vcpu = KvmVcpu::new(id, fd, self.run_size, Arc::clone(&self.memory))?;
        Ok(Box::new(vcpu))
    }

    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd.register_irqfd(fd, gsi).map_err(call("KVM_IRQFD"))
    }

    fn register_irqfd_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd_with_resample(fd, resample, gsi)
            .map_err(call("KVM_IRQFD (resample)"))
    }

    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .unregister_irqfd(fd, gsi)
            .map_err(call("KVM_IRQFD (deassign)"))
    }

    fn set_msi_route(&self, gsi: u32, message: Option<MsiMessage>) -> Result<()> {
        let mut routes = self
            .msi_routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let table = routes.table_with(gsi, message)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(call("KVM_SET_GSI_ROUTING"))?;
        routes.commit(gsi, message);
        Ok(())
    }

    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> Result<()> {
        let addr = kvm_address(addr);
        // kvm-ioctls takes the access width from the datamatch type's size.
        let result = match datamatch {
            None => self.fd.register_ioevent(fd, &addr, NoDatamatch),
            Some(value) => match u32::try_from(value) {
                Ok(narrow) if datamatch_width(value) == 4 => {
                    self.fd.register_ioevent(fd, &addr, narrow)
                }
                _ => self.fd.register_ioevent(fd, &addr, value),
            },
        };
        result.map_err(call("KVM_IOEVENTFD"))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> Result<()> {
        let addr = kvm_address(addr);
        let result = match datamatch {
            None => self.fd.unregister_ioevent(fd, &addr, NoDatamatch),
            Some(value) => match u32::try_from(value) {
                Ok(narrow) if datamatch_width(value) == 4 => {
                    self.fd.unregister_ioevent(fd, &addr, narrow)
                }
                _ => self.fd.unregister_ioevent(fd, &addr, value),
            },
        };
        result.map_err(call("KVM_IOEVENTFD (deassign)"))
    }

    fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()> {
        self.fd
            .set_irq_line(gsi, active)
            .map_err(call("KVM_IRQ_LINE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datamatch_is_four_bytes_unless_the_value_needs_eight() {
        assert_eq!(datamatch_width(0), 4);
        assert_eq!(datamatch_width(u64::from(u32::MAX)), 4);
        assert_eq!(datamatch_width(u64::from(u32::MAX) + 1), 8);
    }
}
