//! Guest memory a KVM VM maps, kept alive by the VM and by each of its vCPUs
//! (a vCPU's descriptor keeps the kernel-side VM alive, so the mappings it
//! may still touch must outlive the `KvmVm` value too).

use std::sync::Mutex;

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
    /// Clones of every mapped `GuestMemoryMmap`; a clone shares the
    /// underlying host mappings, so they stay valid while it lives.
    pub(super) kept: Vec<GuestMemory>,
}
