//! A snapshot becomes a VM again: the same machine built from the saved
//! configuration (nothing of a boot: no kernel is read), guest RAM brought
//! back by the chosen backend, then every piece of state put back.
//!
//! Memory backends: `File` maps the memory file copy-on-write; `Uffd`
//! hands anonymous RAM's userfaultfd to an external page-fault handler
//! (Firecracker's protocol, [`super::uffd`]); `Lazy` serves the faults in
//! sie and records and prefetches a working set ([`super::lazy`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sie_config::{HugePages, MemBackendType};
use sie_hv::GuestMemory;
use sie_hv::Hypervisor;
use sie_seccomp::Seccomp;

use super::memory_file::{self, MemoryFileError};
use super::model::{Snapshot, SnapshotError, check_snapshottable};
use super::{huge_pages, lazy, uffd};
use crate::builder::{self, BuildOptions, BuiltVm};
use crate::control::VmControl;

/// Where a restored VM's RAM comes from.
#[derive(Clone, Debug)]
pub struct RestoreMemory {
    /// File, Uffd or Lazy.
    pub backend: MemBackendType,
    /// The memory file (File, Lazy) or the handler's socket (Uffd).
    pub path: PathBuf,
    /// The filters; the Lazy backend's thread installs the `uffd` one.
    pub seccomp: Seccomp,
    /// Huge pages for the File backend (`None`: the file mapped as it is;
    /// `Snapshot` is resolved by the caller).
    pub huge_pages: HugePages,
}

impl RestoreMemory {
    /// The memory file at `path`, mapped copy-on-write.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self {
            backend: MemBackendType::File,
            path: path.into(),
            seccomp: Seccomp::disabled(),
            huge_pages: HugePages::None,
        }
    }
}

/// Guest RAM from `source`, and the lazy handler if there is one.
/// Why a snapshot of shared RAM refuses another memory backend.
const SHARED_NEEDS_FILE: &str = "this snapshot's guest RAM is shared memory (shared_memory): load it with the File backend and no huge_pages";

fn guest_memory(
    source: &RestoreMemory,
    snapshot: &Snapshot,
) -> Result<(GuestMemory, Option<lazy::LazyMemory>), SnapshotError> {
    let path: &Path = &source.path;
    let shared = snapshot
        .config
        .machine_config
        .as_ref()
        .is_some_and(|machine| machine.shared_memory());
    if shared {
        // Shared RAM stays shared (a local migration can hand it on): it
        // is read into fresh memfds, so only the File backend applies.
        if source.backend != MemBackendType::File
            || !matches!(source.huge_pages, HugePages::None | HugePages::Snapshot)
        {
            return Err(SnapshotError::Build(SHARED_NEEDS_FILE.into()));
        }
        return Ok((huge_pages::load_shared(path, &snapshot.memory)?, None));
    }
    match source.backend {
        MemBackendType::File => match source.huge_pages {
            HugePages::None | HugePages::Snapshot => {
                Ok((memory_file::map(path, &snapshot.memory)?, None))
            }
            pages => Ok((huge_pages::load(path, &snapshot.memory, pages)?, None)),
        },
        MemBackendType::Lazy => {
            let lazy = lazy::open(path, &snapshot.memory, &source.seccomp)?;
            Ok((lazy.memory.clone(), Some(lazy)))
        }
        MemBackendType::Uffd => {
            let memory =
                lazy::anonymous(&snapshot.memory).map_err(|source| MemoryFileError::Io {
                    path: "(anonymous guest RAM)".into(),
                    source,
                })?;
            let handler_error = |source| SnapshotError::UffdHandler {
                path: path.display().to_string(),
                source,
            };
            let uffd = uffd::register_all(&memory, uffd::FEATURE_EVENT_REMOVE)
                .map_err(|e| handler_error(std::io::Error::other(format!("userfaultfd: {e}"))))?;
            uffd::handoff(path, &memory, &uffd).map_err(handler_error)?;
            // Like Firecracker, sie keeps its end for the VM's life: if the
            // handler dies, the guest waits rather than reading zeros.
            uffd::keep(uffd);
            Ok((memory, None))
        }
    }
}

/// Builds the VM `snapshot` describes with its RAM from `source`; the
/// vCPUs are ready to continue where they stopped. With `clock_realtime`
/// the guest's clock moves forward by the time since the snapshot was
/// taken (host wall clock), else it continues from its saved value.
/// `premade`: a VM made ahead, with no RAM yet (a new one is made if
/// `None`).
pub fn restore(
    snapshot: &Snapshot,
    source: &RestoreMemory,
    premade: Option<crate::builder::PremadeVm>,
    clock_realtime: bool,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm, SnapshotError> {
    check_snapshottable(&snapshot.config)?;
    if source.backend != MemBackendType::Uffd {
        // The memory file must be this snapshot's (Uffd's path is the
        // handler's socket: the handler answers for its file).
        super::pairing::check(&source.path, snapshot.pair_id.as_deref())
            .map_err(SnapshotError::Build)?;
    }
    let (memory, lazy) = guest_memory(source, snapshot)?;
    let mut built = build_restored(
        snapshot,
        (memory, premade),
        Restored::Clone { clock_realtime },
        hv,
        options,
        control,
    )?;
    // Every backend leaves pages that hold data without being resident, so
    // a later snapshot must read them all.
    built.memory_from_file = true;
    if let Some(lazy) = lazy {
        lazy.mark_loaded();
    }
    Ok(built)
}

/// How a restored VM relates to the one its state was saved from.
#[derive(Clone, Copy)]
enum Restored {
    /// A copy of it (from a snapshot): a new generation id, and the guest
    /// clock moved forward when `clock_realtime`.
    Clone {
        /// Advance the guest clock by the snapshot's age.
        clock_realtime: bool,
    },
    /// The same VM, moved (a live migration): it keeps its generation id.
    Moved,
}

/// Builds the VM a migration's `snapshot` (its state) describes on guest
/// RAM that already holds every page it received; the vCPUs are ready to
/// continue where they stopped on the source.
/// `premade`: the VM the receiver made on `memory` ahead of the state
/// (unused, and a new one made, if it does not map `memory`).
pub fn restore_with_memory(
    snapshot: &Snapshot,
    memory: GuestMemory,
    premade: Option<crate::builder::PremadeVm>,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm, SnapshotError> {
    check_snapshottable(&snapshot.config)?;
    build_restored(
        snapshot,
        (memory, premade),
        Restored::Moved,
        hv,
        options,
        control,
    )
}

fn build_restored(
    snapshot: &Snapshot,
    (memory, premade): (GuestMemory, Option<crate::builder::PremadeVm>),
    how: Restored,
    hv: &dyn Hypervisor,
    options: BuildOptions,
    control: Arc<VmControl>,
) -> Result<BuiltVm, SnapshotError> {
    let config = &snapshot.config;
    let build_error =
        |e: crate::error::VmmError| SnapshotError::Build(crate::error::error_chain(&e));
    let count = builder::vcpu_count(config, hv).map_err(build_error)?;
    let machine = builder::assemble(config, hv, options, control, memory, count, premade)
        .map_err(build_error)?;
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
    if let Restored::Clone {
        clock_realtime: true,
    } = how
    {
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
    if let Restored::Clone { .. } = how {
        // A restored VM is a clone: it gets a new generation id and hears about
        // it before its vCPUs run, so it reseeds its RNG. (No backend writes
        // guest RAM back to the memory file: the file keeps the old id.)
        machine
            .vmgenid
            .write_new_id(&machine.memory)
            .map_err(build_error)?;
        machine.vmgenid.notify().map_err(build_error)?;
    }
    Ok(machine.into_built())
}
