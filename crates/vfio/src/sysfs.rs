//! Checks a host PCI device before sie opens it for passthrough, reading
//! sysfs only, so a device that cannot be passed is refused in one line
//! that names the cause and the fix (and the checks are testable against a
//! fake sysfs tree in a temporary directory).
//!
//! ```no_run
//! use std::path::Path;
//! let group = sie_vfio::sysfs::check_device(
//!     Path::new("/sys/bus/pci/devices/0000:00:03.0"),
//!     Path::new("/dev/vfio"),
//! ).expect("passable");
//! println!("IOMMU group {group}");
//! ```

use std::path::{Path, PathBuf};

/// The driver a passed-through device (and every other device in its group)
/// must be bound to.
pub const VFIO_DRIVER: &str = "vfio-pci";

/// Why a device cannot be passed through; each message says how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PreflightError {
    /// The sysfs path names no device.
    #[error(
        "{0}: no such PCI device (give its sysfs path, e.g. /sys/bus/pci/devices/0000:00:03.0)"
    )]
    NoDevice(PathBuf),
    /// The device has no IOMMU group: the host runs without an IOMMU.
    #[error(
        "{0}: the device has no IOMMU group: enable the IOMMU (intel_iommu=on or amd_iommu=on on the host's kernel command line)"
    )]
    NoIommuGroup(PathBuf),
    /// The device is bound to a host driver, or to none.
    #[error(
        "{path}: the device is bound to {driver}, not vfio-pci: bind it with `echo vfio-pci > {path}/driver_override`, unbind it from its driver and `echo {bdf} > /sys/bus/pci/drivers_probe` (docs/vfio.md)"
    )]
    NotVfioBound {
        /// The device's sysfs path.
        path: PathBuf,
        /// Its bus/device/function, the last path component.
        bdf: String,
        /// The driver it is bound to ("no driver" when unbound).
        driver: String,
    },
    /// Another device of the group is bound to a host driver.
    #[error(
        "IOMMU group {group} is not viable: {other} shares it and is bound to {driver}; bind every device of the group to vfio-pci too (docs/vfio.md)"
    )]
    GroupNotViable {
        /// The group number.
        group: u32,
        /// The other device's bus/device/function.
        other: String,
        /// Its driver.
        driver: String,
    },
    /// The VFIO modules are not loaded (no /dev/vfio/vfio or group node).
    #[error("{0} is missing: load the VFIO modules (modprobe vfio-pci)")]
    NoVfioNode(PathBuf),
}

fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

fn driver_of(device: &Path) -> String {
    link_name(&device.join("driver")).unwrap_or_else(|| "no driver".to_string())
}

/// Checks that `device` (a sysfs PCI device directory) can be passed
/// through, with the VFIO device nodes under `dev_vfio` (`/dev/vfio` on a
/// host): it has an IOMMU group, it and every other device in that group
/// are bound to vfio-pci, and the group's node exists. Returns the group.
pub fn check_device(device: &Path, dev_vfio: &Path) -> Result<u32, PreflightError> {
    if !device.join("config").exists() {
        return Err(PreflightError::NoDevice(device.to_path_buf()));
    }
    let group = link_name(&device.join("iommu_group"))
        .and_then(|name| name.parse::<u32>().ok())
        .ok_or_else(|| PreflightError::NoIommuGroup(device.to_path_buf()))?;
    let driver = driver_of(device);
    if driver != VFIO_DRIVER {
        let bdf = device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(PreflightError::NotVfioBound {
            path: device.to_path_buf(),
            bdf,
            driver,
        });
    }
    // The kernel calls a group viable when each device in it is bound to a
    // VFIO driver or to none; PCI bridges ("pcieport") are also allowed.
    if let Ok(members) = std::fs::read_dir(device.join("iommu_group/devices")) {
        for member in members.flatten() {
            let path = member.path();
            let driver = driver_of(&path);
            if driver != VFIO_DRIVER && driver != "no driver" && driver != "pcieport" {
                return Err(PreflightError::GroupNotViable {
                    group,
                    other: member.file_name().to_string_lossy().into_owned(),
                    driver,
                });
            }
        }
    }
    for node in [dev_vfio.join("vfio"), dev_vfio.join(group.to_string())] {
        if !node.exists() {
            return Err(PreflightError::NoVfioNode(node));
        }
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: devices under `sys/devices`, drivers under
    /// `sys/drivers`, groups under `sys/groups`, and a `dev/vfio`.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(name: &str) -> Fake {
            let root = std::env::temp_dir().join(format!("sie-vfio-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for dir in ["sys/devices", "sys/drivers", "sys/groups", "dev/vfio"] {
                std::fs::create_dir_all(root.join(dir)).unwrap();
            }
            std::fs::write(root.join("dev/vfio/vfio"), "").unwrap();
            Fake { root }
        }
        fn device(&self, bdf: &str, group: Option<u32>, driver: Option<&str>) -> PathBuf {
            let dev = self.root.join("sys/devices").join(bdf);
            std::fs::create_dir_all(&dev).unwrap();
            std::fs::write(dev.join("config"), [0u8; 64]).unwrap();
            if let Some(driver) = driver {
                let d = self.root.join("sys/drivers").join(driver);
                std::fs::create_dir_all(&d).unwrap();
                symlink(&d, dev.join("driver")).unwrap();
            }
            if let Some(group) = group {
                let g = self.root.join("sys/groups").join(group.to_string());
                std::fs::create_dir_all(g.join("devices")).unwrap();
                symlink(&g, dev.join("iommu_group")).unwrap();
                symlink(&dev, g.join("devices").join(bdf)).unwrap();
                std::fs::write(self.root.join("dev/vfio").join(group.to_string()), "").unwrap();
            }
            dev
        }
        fn dev_vfio(&self) -> PathBuf {
            self.root.join("dev/vfio")
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn a_device_bound_to_vfio_pci_alone_in_its_group_passes() {
        let fake = Fake::new("ok");
        let dev = fake.device("0000:00:03.0", Some(3), Some("vfio-pci"));
        assert_eq!(check_device(&dev, &fake.dev_vfio()), Ok(3));
    }

    #[test]
    fn a_missing_device_is_refused() {
        let fake = Fake::new("missing");
        let dev = fake.root.join("sys/devices/0000:00:09.0");
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        assert_eq!(err, PreflightError::NoDevice(dev));
        assert!(err.to_string().contains("no such PCI device"));
    }

    #[test]
    fn no_iommu_group_says_enable_the_iommu() {
        let fake = Fake::new("nogroup");
        let dev = fake.device("0000:00:03.0", None, Some("vfio-pci"));
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        assert_eq!(err, PreflightError::NoIommuGroup(dev));
        assert!(err.to_string().contains("enable the IOMMU"));
    }

    #[test]
    fn a_host_driver_says_bind_to_vfio_pci() {
        let fake = Fake::new("hostdrv");
        let dev = fake.device("0000:00:03.0", Some(3), Some("edu"));
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("bound to edu, not vfio-pci"), "{text}");
        assert!(text.contains("driver_override"), "{text}");
        assert!(
            text.contains("echo 0000:00:03.0 > /sys/bus/pci/drivers_probe"),
            "{text}"
        );
        let unbound = fake.device("0000:00:04.0", Some(4), None);
        let err = check_device(&unbound, &fake.dev_vfio()).unwrap_err();
        assert!(err.to_string().contains("bound to no driver"));
    }

    #[test]
    fn a_group_member_on_a_host_driver_makes_the_group_not_viable() {
        let fake = Fake::new("viable");
        let dev = fake.device("0000:00:1f.2", Some(4), Some("vfio-pci"));
        let other = fake.device("0000:00:1f.3", None, Some("i801_smbus"));
        symlink(&other, fake.root.join("sys/groups/4/devices/0000:00:1f.3")).unwrap();
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        assert_eq!(
            err,
            PreflightError::GroupNotViable {
                group: 4,
                other: "0000:00:1f.3".into(),
                driver: "i801_smbus".into()
            }
        );
        assert!(
            err.to_string()
                .contains("bind every device of the group to vfio-pci")
        );
    }

    #[test]
    fn missing_vfio_nodes_say_load_vfio_pci() {
        let fake = Fake::new("nodes");
        let dev = fake.device("0000:00:03.0", Some(3), Some("vfio-pci"));
        std::fs::remove_file(fake.dev_vfio().join("3")).unwrap();
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        assert_eq!(err, PreflightError::NoVfioNode(fake.dev_vfio().join("3")));
        assert!(err.to_string().contains("modprobe vfio-pci"));
        std::fs::remove_file(fake.dev_vfio().join("vfio")).unwrap();
        let err = check_device(&dev, &fake.dev_vfio()).unwrap_err();
        assert_eq!(
            err,
            PreflightError::NoVfioNode(fake.dev_vfio().join("vfio"))
        );
    }
}
