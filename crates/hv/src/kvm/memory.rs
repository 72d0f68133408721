//! Guest memory a KVM VM maps, kept alive by the VM and by each of its vCPUs
//! (a vCPU's descriptor keeps the kernel-side VM alive, so the mappings it
//! may still touch must outlive the `KvmVm` value too), and the slots it
//! was registered as (re-registered when dirty logging starts).

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_userspace_memory_region;
use vm_memory::MmapRegion;

use crate::GuestMemory;

/// Guest memory the kernel has been told about, kept mapped for as long as
/// the VM or any of its vCPUs lives.
#[derive(Debug, Default)]
pub(crate) struct KeptMemory {
    pub(super) inner: Mutex<MemorySlots>,
}

#[derive(Debug, Default)]
pub(super) struct MemorySlots {
    /// The next free KVM memory slot number.
    pub(super) next_slot: u32,
    /// Clones of every mapped `GuestMemory`; a clone shares the
    /// underlying host mappings, so they stay valid while it lives.
    pub(super) kept: Vec<GuestMemory>,
    /// Every slot as registered, so dirty logging can flip its flags.
    pub(super) entries: Vec<kvm_userspace_memory_region>,
    /// Whether slots carry `KVM_MEM_LOG_DIRTY_PAGES` (and later ones will).
    pub(super) log_dirty: bool,
    /// Device memory slots (BAR pages of a passed-through device) and the
    /// mappings they point at, kept until the slot is removed.
    pub(super) device: Vec<(kvm_userspace_memory_region, Arc<MmapRegion>)>,
    /// Slots freed by removed device memory, reused first.
    pub(super) free_slots: Vec<u32>,
}
