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
    /// Host wall-clock time of the save, in nanoseconds since the Unix
    /// epoch (0 in snapshots written before sie recorded it): what a
    /// restore with `clock_realtime` advances the guest clock by.
    #[serde(default)]
    pub saved_at_unix_ns: u64,
}

impl VmState {
    /// How long ago (host wall clock) this state was saved; zero when the
    /// time is unknown or in the future (a host clock set back).
    pub fn age(&self) -> std::time::Duration {
        if self.saved_at_unix_ns == 0 {
            return std::time::Duration::ZERO;
        }
        let saved = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(self.saved_at_unix_ns);
        std::time::SystemTime::now()
            .duration_since(saved)
            .unwrap_or_default()
    }
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl VcpuState {
    /// The general registers' instruction pointer (for reports and tests).
    pub fn rip(&self) -> u64 {
        self.kvm.regs.rip
    }
}
