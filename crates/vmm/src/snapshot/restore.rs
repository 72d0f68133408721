//! A snapshot becomes a VM again: the same machine built from the saved
//! configuration (nothing of a boot: no kernel is read), guest RAM mapped
//! from the memory file, then every piece of state put back.

use std::path::Path;
use std::sync::Arc;

use sie_hv::Hypervisor;

use super::memory_file;
use super::model::{Snapshot, SnapshotError, check_snapshottable};
use crate::builder::{self, BuildOptions, BuiltVm};
use crate::control::VmControl;

/// Builds the VM `snapshot` describes with its RAM from `mem_path`; the
/// vCPUs are ready to continue where they stopped. With `clock_realtime`
/// the guest's clock moves forward by the time since the snapshot was
/// taken (host wall clock), else it continues from its saved value.
pub fn restore(
    snapshot: &Snapshot,
    mem_path: &Path,
    clock_realtime: bool,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm, SnapshotError> {
    let config = &snapshot.config;
    check_snapshottable(config)?;
    let build_error =
        |e: crate::error::VmmError| SnapshotError::Build(crate::error::error_chain(&e));
    let count = builder::vcpu_count(config, hv).map_err(build_error)?;
    super::pairing::check(mem_path, snapshot.pair_id.as_deref()).map_err(SnapshotError::Build)?;
    let memory = memory_file::map(mem_path, &snapshot.memory)?;
    let machine =
        builder::assemble(config, hv, options, control, memory, count).map_err(build_error)?;
    let state_error = |what: &str, e: sie_hv::HvError| {
        SnapshotError::Build(format!("{what}: {}", crate::error::error_chain(&e)))
    };
    machine
        .vm
        .restore_state(&snapshot.vm)
        .map_err(|e| state_error("the in-kernel devices", e))?;
    for (vcpu, state) in machine.vcpus.iter().zip(&snapshot.vcpus) {
        vcpu.restore_state(state)
            .map_err(|e| state_error(&format!("vCPU {}", state.id), e))?;
        // The guest was stopped for as long as it was files: its watchdog
        // must not count that time as a soft lockup.
        vcpu.notify_paused()
            .map_err(|e| state_error(&format!("vCPU {}", state.id), e))?;
    }
    if clock_realtime {
        let age = snapshot.vm.age();
        machine
            .vm
            .advance_clock(age)
            .map_err(|e| state_error("the guest clock", e))?;
        tracing::info!("guest clock advanced by {} ms", age.as_millis());
    }
    machine
        .devices
        .restore(&snapshot.devices)
        .map_err(build_error)?;
    let transports = &machine.virtio.transports;
    if transports.len() != snapshot.virtio.len() {
        return Err(SnapshotError::Build(format!(
            "the snapshot has {} virtio devices, its configuration {}",
            snapshot.virtio.len(),
            transports.len()
        )));
    }
    for (index, (transport, saved)) in transports.iter().zip(&snapshot.virtio).enumerate() {
        transport
            .load(saved)
            .map_err(|e| SnapshotError::Build(format!("virtio device {index}: {e}")))?;
    }
    // A restored VM is a clone: it gets a new generation id and hears about
    // it before its vCPUs run, so it reseeds its RNG. (The memory file is
    // mapped copy-on-write: the file keeps the old id.)
    machine
        .vmgenid
        .write_new_id(&machine.memory)
        .map_err(build_error)?;
    machine.vmgenid.notify().map_err(build_error)?;
    let mut built = machine.into_built();
    built.memory_from_file = true;
    Ok(built)
}
