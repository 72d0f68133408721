//! Firecracker's snapshot requests: `PUT /snapshot/create` and
//! `PUT /snapshot/load`, in its exact shapes (deprecated fields included,
//! since older clients still send them).
//!
//! `mem_backend.backend_type` is Firecracker's `File` or `Uffd`, or sie's
//! own `Lazy` (page faults served inside sie from the memory file, with a
//! working set recorded once and prefetched on later loads).
//!
//! [`SnapshotLoad::plan`] turns a load request into what sie will do, or a
//! one-line refusal for each field that asks for something sie cannot do
//! yet: every accepted field takes effect.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `snapshot_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only what changed since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
    /// Where the VM's state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
}

/// `mem_backend.backend_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// Map the memory file copy-on-write.
    #[default]
    File,
    /// Hand page faults to a user process over a Unix socket.
    Uffd,
    /// sie extension: serve page faults from the file inside sie, recording
    /// the guest's working set on the first restore and prefetching it on
    /// later ones.
    Lazy,
}

impl MemBackendType {
    /// The backend a command-line word names: `file`, `uffd` or `lazy`.
    pub fn from_word(word: &str) -> Result<Self, String> {
        match word.to_ascii_lowercase().as_str() {
            "file" => Ok(Self::File),
            "uffd" => Ok(Self::Uffd),
            "lazy" => Ok(Self::Lazy),
            _ => Err(format!(
                "unknown memory backend {word:?} (file, uffd or lazy)"
            )),
        }
    }
}

/// `mem_backend`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// How guest memory is brought back.
    pub backend_type: MemBackendType,
    /// The memory file (File, Lazy) or the handler's socket (Uffd).
    pub backend_path: PathBuf,
}

/// One `network_overrides` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface's id in the snapshot.
    pub iface_id: String,
    /// The tap to use instead.
    pub host_dev_name: String,
}

/// Refuses an interface named twice or a tap name Linux would not take
/// (`what` starts the line: the request's path).
pub fn check_network_overrides(what: &str, overrides: &[NetworkOverride]) -> Result<(), String> {
    for (index, entry) in overrides.iter().enumerate() {
        if overrides[..index]
            .iter()
            .any(|e| e.iface_id == entry.iface_id)
        {
            return Err(format!(
                "{what}: network_overrides names iface_id {:?} twice",
                entry.iface_id
            ));
        }
        if entry.host_dev_name.is_empty() || entry.host_dev_name.len() >= 16 {
            return Err(format!(
                "{what}: network_overrides: host_dev_name {:?} is not a tap name (1 to 15 bytes)",
                entry.host_dev_name
            ));
        }
    }
    Ok(())
}

/// `vsock_override`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The Unix socket to use instead.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The snapshot file.
    pub snapshot_path: PathBuf,
    /// How memory comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated form of `mem_backend: {File, path}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// Deprecated form of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages for later Diff snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded (else it stays paused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    /// Taps to use instead of the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_overrides: Option<Vec<NetworkOverride>>,
    /// Vsock socket to use instead of the snapshot's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest clock by the time spent as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    /// Huge pages for the restored memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
}

/// `huge_pages` of a load: what backs the restored guest's RAM.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HugePages {
    /// Base pages (the memory file mapped as it is).
    #[default]
    None,
    /// Whatever the snapshotted VM's `machine-config` had.
    Snapshot,
    /// Anonymous memory the kernel may back with transparent huge pages
    /// (`MADV_HUGEPAGE`), filled from the memory file before the vCPUs run.
    Transparent,
    /// 2 MiB hugetlb pages (`MAP_HUGETLB`), filled from the memory file
    /// before the vCPUs run.
    TwoMiB,
}

/// What a load request asks for, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadPlan {
    /// The snapshot file.
    pub snapshot_path: PathBuf,
    /// How guest memory comes back.
    pub backend: MemBackendType,
    /// The memory file (File, Lazy) or the page-fault handler's socket
    /// (Uffd).
    pub backend_path: PathBuf,
    /// Resume once loaded.
    pub resume: bool,
    /// Taps to use instead of the snapshot's, by interface id.
    pub network_overrides: Vec<NetworkOverride>,
    /// The vsock's Unix socket instead of the snapshot's.
    pub vsock_override: Option<PathBuf>,
    /// Advance the guest clock by the time the VM spent as files.
    pub clock_realtime: bool,
    /// Track dirty pages (for Diff snapshots of the restored VM).
    pub track_dirty_pages: bool,
    /// What backs the restored RAM.
    pub huge_pages: HugePages,
}

impl SnapshotLoad {
    /// A load of `snapshot_path` with its memory from `backend_path` by
    /// `backend_type`.
    pub fn from_files(
        snapshot_path: PathBuf,
        backend_type: MemBackendType,
        backend_path: PathBuf,
        resume: bool,
    ) -> Self {
        Self {
            snapshot_path,
            mem_backend: Some(MemBackend {
                backend_type,
                backend_path,
            }),
            mem_file_path: None,
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: Some(resume),
            network_overrides: None,
            vsock_override: None,
            clock_realtime: None,
            huge_pages: None,
        }
    }

    /// Checks the request and says what sie will do: one line naming the
    /// first field sie cannot honour, or that contradicts another.
    pub fn plan(&self) -> Result<LoadPlan, String> {
        let (backend, backend_path) = match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => {
                return Err("snapshot/load: give mem_backend or mem_file_path, not both".into());
            }
            (None, None) => {
                return Err("snapshot/load: mem_backend (or mem_file_path) is required".into());
            }
            (None, Some(path)) => (MemBackendType::File, path.clone()),
            (Some(backend), None) => (backend.backend_type, backend.backend_path.clone()),
        };
        if backend_path.as_os_str().is_empty() {
            return Err("snapshot/load: mem_backend.backend_path is empty".into());
        }
        let network_overrides = self.network_overrides.clone().unwrap_or_default();
        check_network_overrides("snapshot/load", &network_overrides)?;
        if self
            .vsock_override
            .as_ref()
            .is_some_and(|o| o.uds_path.as_os_str().is_empty())
        {
            return Err("snapshot/load: vsock_override: uds_path is empty".into());
        }
        let huge_pages = match self.huge_pages.as_deref() {
            None | Some("None") => HugePages::None,
            Some("Snapshot") => HugePages::Snapshot,
            Some("Transparent") => HugePages::Transparent,
            Some("2M") => HugePages::TwoMiB,
            Some(other) => {
                return Err(format!(
                    "snapshot/load: huge_pages {other:?}: use \"None\", \"Snapshot\", \"Transparent\" or \"2M\""
                ));
            }
        };
        if matches!(huge_pages, HugePages::Transparent | HugePages::TwoMiB)
            && backend != MemBackendType::File
        {
            return Err(format!(
                "snapshot/load: huge_pages {:?} with mem_backend {backend:?} is not supported yet (use File)",
                self.huge_pages.as_deref().unwrap_or_default()
            ));
        }
        Ok(LoadPlan {
            snapshot_path: self.snapshot_path.clone(),
            backend,
            backend_path,
            resume: self.resume_vm.unwrap_or(false),
            network_overrides,
            vsock_override: self.vsock_override.as_ref().map(|o| o.uds_path.clone()),
            clock_realtime: self.clock_realtime.unwrap_or(false),
            huge_pages,
            // Firecracker's deprecated name for the same switch.
            track_dirty_pages: self.track_dirty_pages == Some(true)
                || self.enable_diff_snapshots == Some(true),
        })
    }
}

impl SnapshotCreate {
    /// One line naming what sie cannot do yet, if anything (a Diff of a
    /// VM that does not track dirty pages is refused by the VMM, which
    /// knows the VM).
    pub fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(json: &str) -> Result<LoadPlan, String> {
        serde_json::from_str::<SnapshotLoad>(json)
            .map_err(|e| e.to_string())?
            .plan()
    }

    #[test]
    fn firecracker_shapes_parse_and_plan() {
        let plan = load(
            r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "File", "backend_path": "m"},
                "resume_vm": true, "track_dirty_pages": false, "network_overrides": []}"#,
        )
        .unwrap();
        assert_eq!(plan.backend_path, PathBuf::from("m"));
        assert_eq!(plan.backend, MemBackendType::File);
        assert!(plan.resume);
        assert!(!plan.track_dirty_pages);
        for switch in ["track_dirty_pages", "enable_diff_snapshots"] {
            let json =
                format!(r#"{{"snapshot_path": "s", "mem_file_path": "m", "{switch}": true}}"#);
            assert!(load(&json).unwrap().track_dirty_pages, "{switch}");
        }
        let old =
            load(r#"{"snapshot_path": "s", "mem_file_path": "m", "enable_diff_snapshots": false}"#)
                .unwrap();
        assert_eq!(
            (old.backend, old.backend_path, old.resume),
            (MemBackendType::File, PathBuf::from("m"), false)
        );
        assert!(!old.clock_realtime && old.network_overrides.is_empty());
        for (word, backend) in [
            ("Uffd", MemBackendType::Uffd),
            ("Lazy", MemBackendType::Lazy),
        ] {
            let plan = load(&format!(
                r#"{{"snapshot_path": "s", "mem_backend": {{"backend_type": "{word}", "backend_path": "p"}}}}"#
            ))
            .unwrap();
            assert_eq!(
                (plan.backend, plan.backend_path),
                (backend, PathBuf::from("p"))
            );
            assert_eq!(MemBackendType::from_word(&word.to_lowercase()), Ok(backend));
        }
        assert!(
            MemBackendType::from_word("mmap")
                .unwrap_err()
                .contains("file, uffd or lazy")
        );
    }

    #[test]
    fn huge_pages_are_planned() {
        for (word, pages) in [
            ("None", HugePages::None),
            ("Snapshot", HugePages::Snapshot),
            ("Transparent", HugePages::Transparent),
            ("2M", HugePages::TwoMiB),
        ] {
            let json = format!(
                r#"{{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "{word}"}}"#
            );
            assert_eq!(load(&json).unwrap().huge_pages, pages, "{word}");
        }
        let plan = load(r#"{"snapshot_path": "s", "mem_file_path": "m"}"#).unwrap();
        assert_eq!(plan.huge_pages, HugePages::None);
    }

    #[test]
    fn overrides_and_clock_are_planned() {
        let plan = load(
            r#"{"snapshot_path": "s", "mem_file_path": "m", "clock_realtime": true,
                "network_overrides": [{"iface_id": "eth0", "host_dev_name": "tap7"}],
                "vsock_override": {"uds_path": "/run/v.sock"}}"#,
        )
        .unwrap();
        assert!(plan.clock_realtime);
        assert_eq!(
            plan.network_overrides,
            vec![NetworkOverride {
                iface_id: "eth0".into(),
                host_dev_name: "tap7".into()
            }]
        );
        assert_eq!(plan.vsock_override, Some(PathBuf::from("/run/v.sock")));
    }

    #[test]
    fn what_sie_cannot_do_yet_is_refused_by_name() {
        let cases = [
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Lazy", "backend_path": ""}}"#,
                "backend_path is empty",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a", "host_dev_name": "t"}, {"iface_id": "a", "host_dev_name": "u"}]}"#,
                "twice",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "a", "host_dev_name": "a-name-far-too-long"}]}"#,
                "not a tap name",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "vsock_override": {"uds_path": ""}}"#,
                "uds_path is empty",
            ),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "huge_pages": "1G"}"#,
                "huge_pages \"1G\": use",
            ),
            (
                r#"{"snapshot_path": "s", "mem_backend": {"backend_type": "Lazy", "backend_path": "m"}, "huge_pages": "2M"}"#,
                "with mem_backend Lazy is not supported yet",
            ),
            (r#"{"snapshot_path": "s"}"#, "required"),
            (
                r#"{"snapshot_path": "s", "mem_file_path": "m", "mem_backend": {"backend_type": "File", "backend_path": "m"}}"#,
                "not both",
            ),
        ];
        for (json, word) in cases {
            let error = load(json).unwrap_err();
            assert!(error.contains(word), "{json}: {error}");
        }
        let diff: SnapshotCreate = serde_json::from_str(
            r#"{"snapshot_type": "Diff", "snapshot_path": "s", "mem_file_path": "m"}"#,
        )
        .unwrap();
        assert_eq!(diff.snapshot_type, Some(SnapshotType::Diff));
        assert_eq!(diff.check(), Ok(()));
        assert!(
            serde_json::from_str::<SnapshotCreate>(
                r#"{"snapshot_path": "s", "mem_file_path": "m", "x": 1}"#
            )
            .is_err()
        );
    }
}
