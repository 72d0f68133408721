//! Saved state of a vCPU and of a VM's in-kernel devices, as plain data.
//!
//! The types are opaque to the VMM (it stores and hands them back) and
//! serializable, so a snapshot can carry them. What a backend cannot give
//! is skipped with a recorded reason rather than failing the save: on some
//! hosts a piece of state (nested virtualization state, debug registers)
//! is refused even when the guest never used it.

use serde::{Deserialize, Serialize};

use crate::kvm::state::{KvmVcpuState, KvmVmState};

/// Everything a vCPU needs to continue where it stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    /// The vCPU's id (its APIC id).
    pub id: u32,
    pub(crate) kvm: KvmVcpuState,
    /// State the backend could not give, and why.
    pub skipped: Vec<String>,
}

/// The VM's in-kernel devices: interrupt controllers, PIT, clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub(crate) kvm: KvmVmState,
    /// State the backend could not give, and why.
    pub skipped: Vec<String>,
}

impl VcpuState {
    /// The general registers' instruction pointer (for reports and tests).
    pub fn rip(&self) -> u64 {
        self.kvm.regs.rip
    }
}
