//! Snapshots: a paused VM becomes two files, and the files become a VM
//! again in a new process.
//!
//! The snapshot file ([`format`]) holds, each in its own checksummed
//! section, the configuration the VM was built from, the in-kernel devices'
//! state, every vCPU's state, the legacy devices' state and the RAM layout.
//! The memory file ([`memory_file`]) holds guest RAM at its guest-physical
//! offsets, with holes where the guest never wrote; a Diff memory file
//! ([`dirty`]) holds only the pages written since the previous snapshot,
//! and [`rebase`] copies it onto its base. Both are written
//! crash-safely ([`durable`]). A restore checks the whole snapshot before it
//! creates anything, builds the same machine from the saved configuration
//! (the device manager places every device where it was), brings guest RAM
//! back with the chosen backend ([`restore`]: the memory file mapped
//! copy-on-write, an external userfaultfd handler ([`uffd`]), or sie's own
//! ([`lazy`], with a recorded [`working_set`])) and puts every piece of
//! state back.
//!
//! Virtio devices are saved as their transports' registers and queues
//! (`sie_virtio::TransportState`); a rate limiter starts again with full
//! buckets, vsock tells the guest its connections are gone, and the
//! virtio console's host input not yet delivered stays behind. Not yet:
//! nothing: a restore may also put guest RAM on huge pages ([`huge_pages`]).

pub mod dirty;
pub mod durable;
mod fault_handler;
pub mod format;
pub mod huge_pages;
pub mod lazy;
pub mod memory_file;
mod model;
pub mod overrides;
pub mod pairing;
pub mod rebase;
mod restore;
pub mod uffd;
pub mod working_set;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sie_config::VmConfig;

use memory_file::RegionEntry;

pub use model::{Snapshot, SnapshotError, check_snapshottable};
pub use restore::{RestoreMemory, restore, restore_with_memory};

const SECTION_CONFIG: &str = "config";
const SECTION_VM: &str = "vm";
const SECTION_VCPUS: &str = "vcpus";
const SECTION_DEVICES: &str = "devices";
const SECTION_MEMORY: &str = "memory";
const SECTION_VIRTIO: &str = "virtio";

/// The snapshot format version sie writes, as `--snapshot-version` prints it.
pub fn format_version() -> String {
    format!("{}.{}.0", format::FORMAT_MAJOR, format::FORMAT_MINOR)
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemorySection {
    regions: Vec<RegionEntry>,
    /// The id the memory file's `user.sie.snapshot` attribute must carry
    /// (see [`pairing`]); absent in snapshots written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pair_id: Option<String>,
}

/// The host CPU's vendor string (CPUID leaf 0).
pub fn host_cpu_vendor() -> String {
    let leaf = std::arch::x86_64::__cpuid(0);
    let mut vendor = Vec::with_capacity(12);
    for register in [leaf.ebx, leaf.edx, leaf.ecx] {
        vendor.extend_from_slice(&register.to_le_bytes());
    }
    String::from_utf8_lossy(&vendor).into_owned()
}

fn json_section<T: Serialize>(value: &T) -> Vec<u8> {
    // The state types are plain data: serializing them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// What `create` wrote.
#[derive(Debug)]
pub struct Created {
    /// Bytes of guest RAM written (untouched pages are holes).
    pub memory_bytes: u64,
    /// The pair this one replaced, freed when dropped (see
    /// [`durable::Replaced`]).
    pub old_files: durable::Replaced,
}

/// Which memory a snapshot writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryKind {
    /// All of guest RAM (untouched pages as holes).
    Full,
    /// Only the pages written since the previous snapshot (or since the VM
    /// started): needs dirty page tracking.
    Diff,
}

/// Writes a paused VM's snapshot to `snapshot_path` and all its RAM to
/// `mem_path`. `config` is what the VM was built from.
pub fn create(
    vm: &mut crate::vm::StartedVm,
    config: &VmConfig,
    msr_indices: Vec<u32>,
    snapshot_path: &Path,
    mem_path: &Path,
) -> Result<Created, SnapshotError> {
    create_as(
        vm,
        config,
        msr_indices,
        (snapshot_path, mem_path),
        MemoryKind::Full,
    )
}

/// [`create`], writing the memory `kind` says. `paths` are the snapshot
/// file and the memory file. Either kind starts a new dirty-page period: a
/// later Diff holds what was written after this snapshot.
pub fn create_as(
    vm: &mut crate::vm::StartedVm,
    config: &VmConfig,
    msr_indices: Vec<u32>,
    (snapshot_path, mem_path): (&Path, &Path),
    kind: MemoryKind,
) -> Result<Created, SnapshotError> {
    check_snapshottable(config)?;
    let tracking = crate::builder::tracks_dirty_pages(config);
    if kind == MemoryKind::Diff && !tracking {
        return Err(SnapshotError::DiffWithoutTracking);
    }
    if !vm.vcpus.is_paused() {
        return Err(SnapshotError::NotPaused);
    }
    let pair_id = pairing::new_id().map_err(io_error("pair id", mem_path))?;
    let (bytes, virtio) = encode_state(vm, config, msr_indices, Some(pair_id.clone()))?;
    // Taken before any page is copied, so a write racing with the copy
    // lands in the next Diff as well. Nothing may fail between taking the
    // pages and writing them but the writes, whose failure marks them again.
    let pages = dirty::take(vm.memory(), vm.hv_vm(), tracking)
        .map_err(|e| SnapshotError::State(crate::error::error_chain(&e)))?;
    let memory = vm.memory();
    let files = write_files((snapshot_path, mem_path), &bytes, || match kind {
        MemoryKind::Full => memory_file::stage(memory, mem_path, vm.memory_from_file(), &pair_id),
        MemoryKind::Diff => dirty::stage_diff(memory, mem_path, &pages, &pair_id),
    });
    if files.is_err() {
        // The pages taken still differ from the last snapshot that exists.
        dirty::mark_again(memory, &pages);
    }
    dirty::mark_rings(memory, &virtio);
    files
}

/// A paused VM's state as a snapshot file's bytes (everything but guest
/// RAM), and its virtio transports' state (whose rings' pages a caller
/// marks). Requests in flight complete first.
pub fn encode_state(
    vm: &mut crate::vm::StartedVm,
    config: &VmConfig,
    msr_indices: Vec<u32>,
    pair_id: Option<String>,
) -> Result<(Vec<u8>, Vec<sie_virtio::TransportState>), SnapshotError> {
    if !vm.vcpus.is_paused() {
        return Err(SnapshotError::NotPaused);
    }
    // Drives' requests in flight land in guest memory and the used rings
    // first, so nothing saved below misses them.
    for transport in &vm.virtio.transports {
        transport.quiesce();
    }
    let mut vcpus = Vec::with_capacity(vm.vcpus.len());
    for index in 0..vm.vcpus.len() {
        let indices = msr_indices.clone();
        let state = vm
            .vcpus
            .with_vcpu(index, move |vcpu| vcpu.save_state(&indices))
            .map_err(|e| SnapshotError::State(e.to_string()))?
            .map_err(|e| SnapshotError::State(crate::error::error_chain(&e)))?;
        for reason in &state.skipped {
            tracing::info!("snapshot: vCPU {index}: skipped {reason}");
        }
        vcpus.push(state);
    }
    let vm_state = vm
        .hv_vm()
        .save_state()
        .map_err(|e| SnapshotError::State(crate::error::error_chain(&e)))?;
    let devices = vm.devices.state();
    let virtio: Vec<sie_virtio::TransportState> =
        vm.virtio.transports.iter().map(|t| t.save()).collect();
    let bytes = format::encode(
        &host_cpu_vendor(),
        &[
            (SECTION_CONFIG, json_section(config)),
            (SECTION_VM, json_section(&vm_state)),
            (SECTION_VCPUS, json_section(&vcpus)),
            (SECTION_DEVICES, json_section(&devices)),
            (SECTION_VIRTIO, json_section(&virtio)),
            (
                SECTION_MEMORY,
                json_section(&MemorySection {
                    regions: memory_file::layout_of(vm.memory()),
                    pair_id,
                }),
            ),
        ],
    );
    Ok((bytes, virtio))
}

/// An I/O error on the file at `path`, for `map_err`.
fn io_error(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.display().to_string();
    move |source| SnapshotError::Io { what, path, source }
}

/// Writes the memory file (`stage_memory` writes it under a temporary name
/// and returns the bytes of RAM it wrote) and the snapshot file's `bytes`,
/// then renames both into place.
fn write_files(
    (snapshot_path, mem_path): (&Path, &Path),
    bytes: &[u8],
    stage_memory: impl FnOnce() -> std::io::Result<(durable::Staged, u64)>,
) -> Result<Created, SnapshotError> {
    for path in [snapshot_path, mem_path] {
        durable::remove_stale_temporaries(path);
    }
    let (memory, memory_bytes) = stage_memory().map_err(io_error("memory file", mem_path))?;
    let state = durable::stage(snapshot_path, |file| std::io::Write::write_all(file, bytes))
        .map_err(io_error("snapshot file", snapshot_path))?;
    // Both files are complete on disk; only the two renames remain, so a
    // kill leaves the old pair, the new pair, or (between the renames) a
    // pair that `pairing::check` refuses. The memory file goes first: its
    // rename is the slow one (the filesystem may flush and free blocks in
    // it), and a kill that aborts it leaves the old pair whole.
    let old_files = durable::replace_all(vec![memory, state])
        .map_err(io_error("snapshot file", snapshot_path))?;
    Ok(Created {
        memory_bytes,
        old_files,
    })
}

fn parse<T: serde::de::DeserializeOwned>(
    path: &Path,
    decoded: &format::Decoded,
    section: &'static str,
) -> Result<T, SnapshotError> {
    let bytes = decoded
        .section(section)
        .map_err(|source| SnapshotError::Format {
            path: path.display().to_string(),
            source,
        })?;
    serde_json::from_slice(bytes).map_err(|e| SnapshotError::Section {
        path: path.display().to_string(),
        section,
        message: e.to_string(),
    })
}

/// Reads and checks a whole snapshot file.
pub fn read(path: &Path) -> Result<Snapshot, SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        what: "snapshot file",
        path: path.display().to_string(),
        source,
    })?;
    decode_snapshot(path, &bytes)
}

/// Checks a snapshot file's bytes (`path` only names it in errors): its
/// format, every checksum, the CPU vendor, and that the sections agree
/// with each other.
pub fn decode_snapshot(path: &Path, bytes: &[u8]) -> Result<Snapshot, SnapshotError> {
    let decoded = format::decode(bytes).map_err(|source| SnapshotError::Format {
        path: path.display().to_string(),
        source,
    })?;
    let host = host_cpu_vendor();
    if decoded.table.cpu_vendor != host {
        return Err(SnapshotError::CpuVendor {
            path: path.display().to_string(),
            found: decoded.table.cpu_vendor.clone(),
            host,
        });
    }
    let config: VmConfig = parse(path, &decoded, SECTION_CONFIG)?;
    let memory: MemorySection = parse(path, &decoded, SECTION_MEMORY)?;
    let snapshot = Snapshot {
        vm: parse(path, &decoded, SECTION_VM)?,
        vcpus: parse(path, &decoded, SECTION_VCPUS)?,
        devices: parse(path, &decoded, SECTION_DEVICES)?,
        virtio: parse(path, &decoded, SECTION_VIRTIO)?,
        memory: memory.regions,
        pair_id: memory.pair_id,
        config,
    };
    let section_error = |section, message: String| SnapshotError::Section {
        path: path.display().to_string(),
        section,
        message,
    };
    snapshot
        .config
        .validate()
        .map_err(|e| section_error(SECTION_CONFIG, e.to_string()))?;
    let machine = snapshot.config.machine_config.clone().unwrap_or_default();
    if snapshot.vcpus.len() != usize::from(machine.vcpu_count) {
        return Err(section_error(
            SECTION_VCPUS,
            format!(
                "{} vCPU states for {} vCPUs",
                snapshot.vcpus.len(),
                machine.vcpu_count
            ),
        ));
    }
    let expected = sie_arch::layout::ram_regions(machine.mem_size_mib << 20)
        .map_err(|e| section_error(SECTION_MEMORY, e.to_string()))?;
    let same_layout = expected.len() == snapshot.memory.len()
        && expected
            .iter()
            .zip(&snapshot.memory)
            .all(|((addr, len), entry)| addr.0 == entry.guest_addr && *len as u64 == entry.len);
    if !same_layout {
        return Err(section_error(
            SECTION_MEMORY,
            format!(
                "the RAM layout does not match {} MiB of memory",
                machine.mem_size_mib
            ),
        ));
    }
    Ok(snapshot)
}

/// `--describe-snapshot`: the format version a file was written with.
pub fn describe(path: &Path) -> Result<String, SnapshotError> {
    let mut prefix = [0u8; 12];
    let mut file = std::fs::File::open(path).map_err(|source| SnapshotError::Io {
        what: "snapshot file",
        path: path.display().to_string(),
        source,
    })?;
    std::io::Read::read_exact(&mut file, &mut prefix).map_err(|source| SnapshotError::Io {
        what: "snapshot file",
        path: path.display().to_string(),
        source,
    })?;
    let (major, minor) = format::version_of(&prefix).map_err(|source| SnapshotError::Format {
        path: path.display().to_string(),
        source,
    })?;
    Ok(format!("{major}.{minor}.0"))
}
