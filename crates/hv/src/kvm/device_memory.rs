//! Host mappings that are not guest RAM (a passed-through device's BAR
//! pages) placed in the guest as memory slots of their own, so the guest
//! reaches the device without exits. They are kept out of dirty logging
//! and snapshots, and can be removed and placed again when the guest moves
//! the BAR.

use std::sync::{Arc, PoisonError};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::MmapRegion;

use super::call;
use super::memory::KeptMemory;
use crate::{HvError, Result};

const PAGE: u64 = 4096;

/// Registers `region` at `guest_addr` in a free slot; returns the slot.
pub(super) fn map(
    fd: &VmFd,
    memory: &KeptMemory,
    guest_addr: u64,
    region: Arc<MmapRegion>,
) -> Result<u32> {
    let len = region.size() as u64;
    if len == 0 || !len.is_multiple_of(PAGE) || !guest_addr.is_multiple_of(PAGE) {
        return Err(HvError::Invalid(format!(
            "device memory of {len:#x} bytes at {guest_addr:#x} is not whole pages"
        )));
    }
    let mut slots = memory.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let slot = match slots.free_slots.pop() {
        Some(slot) => slot,
        None => {
            slots.next_slot += 1;
            slots.next_slot - 1
        }
    };
    let entry = kvm_userspace_memory_region {
        slot,
        flags: 0,
        guest_phys_addr: guest_addr,
        memory_size: len,
        userspace_addr: region.as_ptr() as u64,
    };
    // SAFETY: the mapping is owned by `region`, which is kept in
    // `slots.device` (held by the VM and every vCPU through `KeptMemory`)
    // until `unmap` has removed the slot from the kernel.
    if let Err(e) = unsafe { fd.set_user_memory_region(entry) } {
        slots.free_slots.push(slot);
        return Err(call("KVM_SET_USER_MEMORY_REGION (device)")(e));
    }
    slots.device.push((entry, region));
    Ok(slot)
}

/// Removes the device slot `slot`.
pub(super) fn unmap(fd: &VmFd, memory: &KeptMemory, slot: u32) -> Result<()> {
    let mut slots = memory.inner.lock().unwrap_or_else(PoisonError::into_inner);
    let at = slots
        .device
        .iter()
        .position(|(entry, _)| entry.slot == slot)
        .ok_or_else(|| HvError::Invalid(format!("slot {slot} holds no device memory")))?;
    let mut entry = slots.device[at].0;
    entry.memory_size = 0;
    // SAFETY: a zero-sized region deletes the slot; no host memory is named.
    unsafe { fd.set_user_memory_region(entry) }
        .map_err(call("KVM_SET_USER_MEMORY_REGION (remove device)"))?;
    // The kernel no longer reaches the mapping: it may go.
    slots.device.remove(at);
    slots.free_slots.push(slot);
    Ok(())
}
