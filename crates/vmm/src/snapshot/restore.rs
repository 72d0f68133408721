//! A snapshot becomes a VM again: the same machine built from the saved
//! configuration (nothing of a boot: no kernel is read), guest RAM mapped
//! from the memory file, then every piece of state put back.

use std::path::Path;
use std::sync::Arc;

use sie_hv::Hypervisor;

use super::{Snapshot, SnapshotError, check_snapshottable, memory_file};
use crate::builder::{self, BuildOptions, BuiltVm};
use crate::control::VmControl;

/// Builds the VM `snapshot` describes with its RAM from `mem_path`; the
/// vCPUs are ready to continue where they stopped.
pub fn restore(
    snapshot: &Snapshot,
    mem_path: &Path,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm, SnapshotError> {
    let config = &snapshot.config;
    check_snapshottable(config)?;
    let build_error = |e: crate::VmmError| SnapshotError::Build(crate::error_chain(&e));
    let count = builder::vcpu_count(config, hv).map_err(build_error)?;
    let memory = memory_file::map(mem_path, &snapshot.memory)?;
    let machine =
        builder::assemble(config, hv, options, control, memory, count).map_err(build_error)?;
    let state_error = |what: &str, e: sie_hv::HvError| {
        SnapshotError::Build(format!("{what}: {}", crate::error_chain(&e)))
    };
    machine
        .vm
        .restore_state(&snapshot.vm)
        .map_err(|e| state_error("the in-kernel devices", e))?;
    for (vcpu, state) in machine.vcpus.iter().zip(&snapshot.vcpus) {
        vcpu.restore_state(state)
            .map_err(|e| state_error(&format!("vCPU {}", state.id), e))?;
    }
    machine
        .devices
        .restore(&snapshot.devices)
        .map_err(build_error)?;
    let mut built = machine.into_built();
    built.memory_from_file = true;
    Ok(built)
}
