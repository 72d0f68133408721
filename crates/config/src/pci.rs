//! The PCI switch: sie's `pci` section (`--pci` on `sie run`, Firecracker's
//! `--enable-pci` flag in API mode). With it on, every virtio device sits on
//! a PCI bus behind the virtio-PCI transport with MSI-X; without it they use
//! virtio-MMIO. Firecracker has only the flag, so the section is a sie
//! extension that `GET /vm/config` shows and a config file may carry.
//!
//! ```
//! let config = sie_config::VmConfig::from_json(
//!     r#"{"boot-source": {"kernel_image_path": "k"}, "pci": {"enabled": true}}"#,
//! ).unwrap();
//! assert!(config.pci_enabled());
//! ```

use serde::{Deserialize, Serialize};

/// Whether the VM has a PCI bus for its devices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciConfig {
    /// Put the virtio devices on PCI (virtio-PCI with MSI-X).
    pub enabled: bool,
}
