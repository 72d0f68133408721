//! What a snapshot is made of, as the rest of the module reads and writes
//! it: the checked contents of a snapshot file, what can go wrong, and which
//! VMs can be snapshotted at all.

use sie_config::VmConfig;
use sie_hv::{VcpuState, VmState};

use super::format;
use super::memory_file::{self, RegionEntry};
use crate::platform::PlatformState;

/// Why a snapshot could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// What this version cannot snapshot or restore yet.
    #[error("{0} not supported yet")]
    Unsupported(&'static str),
    /// A Diff snapshot of a VM that does not track dirty pages.
    #[error(
        "Diff snapshots need dirty page tracking: set track_dirty_pages in machine-config (or in snapshot/load)"
    )]
    DiffWithoutTracking,
    /// The VM must be paused first.
    #[error("the microVM must be paused before a snapshot is created")]
    NotPaused,
    /// A file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The snapshot file is damaged or of another format.
    #[error("snapshot {path}: {source}")]
    Format {
        /// Its path.
        path: String,
        /// What is wrong.
        source: format::FormatError,
    },
    /// A section does not parse.
    #[error("snapshot {path}: section {section}: {message}")]
    Section {
        /// Its path.
        path: String,
        /// Which section.
        section: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The snapshot was taken where this host cannot follow.
    #[error("snapshot {path} was taken on a {found} CPU; this host's is {host}")]
    CpuVendor {
        /// Its path.
        path: String,
        /// Its CPU vendor.
        found: String,
        /// This host's.
        host: String,
    },
    /// Reading state from a vCPU or the VM failed.
    #[error("saving the VM's state: {0}")]
    State(String),
    /// The memory file cannot back the VM.
    #[error(transparent)]
    Memory(#[from] memory_file::MemoryFileError),
    /// The `Uffd` backend's page-fault handler is not there or refused.
    #[error("the page-fault handler at {path}: {source}")]
    UffdHandler {
        /// Its socket.
        path: String,
        /// Why it could not be handed guest memory.
        source: std::io::Error,
    },
    /// Building the restored VM failed.
    #[error("restoring the VM: {0}")]
    Build(String),
}

/// Everything a snapshot file holds, checked.
#[derive(Debug)]
pub struct Snapshot {
    /// The configuration the VM was built from.
    pub config: VmConfig,
    /// The in-kernel devices.
    pub vm: VmState,
    /// Every vCPU, in id order.
    pub vcpus: Vec<VcpuState>,
    /// The legacy devices.
    pub devices: PlatformState,
    /// Every virtio transport (registers and queues), in placement order.
    pub virtio: Vec<sie_virtio::TransportState>,
    /// Guest RAM's layout in the memory file.
    pub memory: Vec<RegionEntry>,
    /// The id its memory file must carry (see [`super::pairing`]).
    pub pair_id: Option<String>,
}

/// Refuses configurations whose state sie cannot save yet: today every
/// device sie offers can be saved (the balloon's own state travels with its
/// transport); the check stays the one place a new kind of device (a
/// passed-through one) is refused by name.
pub fn check_snapshottable(_config: &VmConfig) -> Result<(), SnapshotError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_sie_offers_is_snapshottable() {
        let config = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "drives": [{"drive_id": "d", "path_on_host": "p", "is_root_device": false}],
                "network-interfaces": [{"iface_id": "n", "host_dev_name": "tap0"}],
                "vsock": {"guest_cid": 3, "uds_path": "/tmp/v"}, "entropy": {},
                "balloon": {"amount_mib": 0, "deflate_on_oom": false},
                "console": {"device": "virtio"}}"#,
        )
        .unwrap();
        assert!(check_snapshottable(&config).is_ok());
    }
}
