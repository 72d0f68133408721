//! sie's `vfio` resource (an extension: Firecracker has no passthrough): a
//! host PCI device bound to vfio-pci, given to the guest. Filled by
//! `--vfio PATH` on `sie run`, the config file's `vfio` list and
//! `PUT /vfio/{id}`. A VFIO device puts the VM's devices on PCI (it needs
//! a PCI bus), and makes the VM impossible to snapshot or migrate.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::resource_id::{IdError, validate_id};

/// One passed-through device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioDevice {
    /// The resource id (`[A-Za-z0-9_]`, 1 to 64 characters).
    pub id: String,
    /// The device's sysfs directory, e.g. `/sys/bus/pci/devices/0000:00:03.0`.
    pub path: PathBuf,
}

/// The one-line refusal for snapshots and migration of a VM with a
/// passed-through device (the device's state lives in hardware).
pub const VFIO_NOT_SNAPSHOTTABLE: &str = "VM has a passed-through device (vfio): not snapshottable";

/// Why a `vfio` entry is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VfioConfigError {
    /// A bad id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// The path is not an absolute sysfs path.
    #[error(
        "vfio: path {0:?} must be the device's absolute sysfs path, e.g. /sys/bus/pci/devices/0000:00:03.0"
    )]
    Path(PathBuf),
    /// Two entries name the same device.
    #[error("vfio: {0:?} is passed through twice")]
    SamePath(PathBuf),
    /// A passed-through device and a balloon.
    #[error(
        "vfio and balloon cannot be combined: a passed-through device keeps guest RAM pinned for its DMA, so a page the balloon gives back would leave the device using a page the guest no longer has (drop one of them)"
    )]
    WithBalloon,
    /// A passed-through device and hotpluggable memory.
    #[error(
        "vfio and memory-hotplug cannot be combined: a passed-through device keeps all guest memory pinned for its DMA, which virtio-mem's plugging and unplugging cannot follow (drop one of them)"
    )]
    WithMemoryHotplug,
}

/// Refuses a passed-through device (`vfio`) next to a `balloon` or
/// `memory_hotplug`: both give guest memory back to the host, which pinned
/// DMA memory cannot follow.
pub fn check_vfio_with(
    vfio: bool,
    balloon: bool,
    memory_hotplug: bool,
) -> Result<(), VfioConfigError> {
    match (vfio, balloon, memory_hotplug) {
        (true, true, _) => Err(VfioConfigError::WithBalloon),
        (true, _, true) => Err(VfioConfigError::WithMemoryHotplug),
        _ => Ok(()),
    }
}

impl VfioDevice {
    /// Checks the id and that the path is absolute.
    pub fn validate(&self) -> Result<(), VfioConfigError> {
        validate_id("vfio: id", &self.id)?;
        if !self.path.is_absolute() || self.path.file_name().is_none() {
            return Err(VfioConfigError::Path(self.path.clone()));
        }
        Ok(())
    }
}

/// Checks every entry, that ids are unique and that no device is given twice.
pub fn validate_vfio(devices: &[VfioDevice]) -> Result<(), crate::ConfigError> {
    let mut ids = std::collections::BTreeSet::new();
    let mut paths = std::collections::BTreeSet::new();
    for device in devices {
        device.validate()?;
        if !ids.insert(device.id.as_str()) {
            return Err(crate::ConfigError::DuplicateId {
                resource: "vfio",
                id: device.id.clone(),
            });
        }
        if !paths.insert(device.path.as_path()) {
            return Err(VfioConfigError::SamePath(device.path.clone()).into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str, path: &str) -> VfioDevice {
        VfioDevice {
            id: id.into(),
            path: path.into(),
        }
    }

    #[test]
    fn a_sysfs_path_with_a_good_id_is_valid() {
        device("edu", "/sys/bus/pci/devices/0000:00:03.0")
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_ids_and_relative_paths_are_refused() {
        assert!(matches!(
            device("a b", "/sys/x").validate(),
            Err(VfioConfigError::Id(_))
        ));
        let err = device("edu", "0000:00:03.0").validate().unwrap_err();
        assert!(err.to_string().contains("absolute sysfs path"), "{err}");
    }

    #[test]
    fn a_balloon_or_hotplug_memory_with_vfio_is_refused_naming_both() {
        assert_eq!(check_vfio_with(true, false, false), Ok(()));
        assert_eq!(check_vfio_with(false, true, true), Ok(()));
        let balloon = check_vfio_with(true, true, false).unwrap_err().to_string();
        assert!(
            balloon.starts_with("vfio and balloon cannot be combined"),
            "{balloon}"
        );
        let hotplug = check_vfio_with(true, false, true).unwrap_err().to_string();
        assert!(
            hotplug.starts_with("vfio and memory-hotplug cannot"),
            "{hotplug}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let a = device("a", "/sys/bus/pci/devices/0000:00:03.0");
        let b = device("a", "/sys/bus/pci/devices/0000:00:04.0");
        let c = device("c", "/sys/bus/pci/devices/0000:00:03.0");
        assert!(
            validate_vfio(&[a.clone(), b])
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        assert!(
            validate_vfio(&[a, c])
                .unwrap_err()
                .to_string()
                .contains("passed through twice")
        );
    }

    #[test]
    fn the_config_file_shape_is_a_list_of_id_and_path() {
        let config = crate::VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "vfio": [{"id": "edu", "path": "/sys/bus/pci/devices/0000:00:03.0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            config.vfio,
            vec![device("edu", "/sys/bus/pci/devices/0000:00:03.0")]
        );
        config.validate().unwrap();
        assert!(
            crate::VmConfig::from_json(
                r#"{"boot-source": {"kernel_image_path": "k"}, "vfio": [{"id": "e"}]}"#
            )
            .is_err()
        );
    }
}
