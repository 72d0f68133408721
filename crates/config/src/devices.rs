//! Device resources: `drives`, `network-interfaces`, `vsock`, `entropy`.
//! Parsed and validated now; the VMM refuses them until it has the devices.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::resource_id::{IdError, validate_id};

/// A rate limiter as clients send it (`{}` or null included); sie keeps it
/// as given until it implements rate limiting.
pub type RateLimiter = serde_json::Map<String, serde_json::Value>;

/// Firecracker's `drives` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// Unique id.
    pub drive_id: String,
    /// Backing file on the host.
    pub path_on_host: PathBuf,
    /// Whether this is the root device.
    pub is_root_device: bool,
    /// Read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// Root partition UUID (used on the command line instead of /dev/vda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// "Unsafe" or "Writeback".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<String>,
    /// "Sync" or "Async".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<String>,
    /// Accepted and ignored for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// Firecracker's `network-interfaces` entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// Unique id.
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address `xx:xx:xx:xx:xx:xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Accepted and ignored for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Accepted and ignored for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// Firecracker's `vsock` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host Unix socket for host-initiated connections.
    pub uds_path: PathBuf,
    /// Deprecated; accepted because older clients send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}

/// Firecracker's `entropy` resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entropy {
    /// Accepted and ignored for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// Why a device resource is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// A bad id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An empty host path.
    #[error("{0}: path is empty")]
    EmptyPath(&'static str),
    /// A MAC address that is not six hex pairs.
    #[error("network-interfaces: guest_mac {0:?} is not a MAC address like 06:00:ac:10:00:02")]
    Mac(String),
    /// An empty tap name or one longer than the kernel allows.
    #[error("network-interfaces: host_dev_name {0:?} must be 1 to 15 characters")]
    TapName(String),
    /// CIDs 0–2 are reserved.
    /// A field that takes one of a few names (`cache_type`, `io_engine`).
    #[error("drives: {field} {value:?} is not {allowed}")]
    Choice {
        /// The field.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is allowed.
        allowed: String,
    },
    #[error("vsock: guest_cid {0} is reserved; use 3 or more")]
    Cid(u32),
}

/// True for `xx:xx:xx:xx:xx:xx` with hex digits.
pub fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Drive {
    /// Checks every field. An empty (0-byte) backing file is allowed: clients
    /// attach placeholders and swap the file in later.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        if self.path_on_host.as_os_str().is_empty() {
            return Err(DeviceConfigError::EmptyPath("drives.path_on_host"));
        }
        for (field, value, allowed) in [
            ("cache_type", &self.cache_type, &["Unsafe", "Writeback"][..]),
            ("io_engine", &self.io_engine, &["Sync", "Async"][..]),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !allowed.contains(v)) {
                return Err(DeviceConfigError::Choice {
                    field,
                    value: value.to_string(),
                    allowed: allowed.join(" or "),
                });
            }
        }
        Ok(())
    }
}

impl NetworkInterface {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        validate_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty() || self.host_dev_name.len() > 15 {
            return Err(DeviceConfigError::TapName(self.host_dev_name.clone()));
        }
        if let Some(mac) = self.guest_mac.as_ref().filter(|m| !is_mac(m)) {
            return Err(DeviceConfigError::Mac(mac.clone()));
        }
        Ok(())
    }
}

impl Vsock {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        if self.guest_cid < 3 {
            return Err(DeviceConfigError::Cid(self.guest_cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(DeviceConfigError::EmptyPath("vsock.uds_path"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_are_checked() {
        assert!(is_mac("06:00:AC:10:00:02"));
        assert!(!is_mac("06:00:ac:10:00"));
        assert!(!is_mac("06:00:ac:10:00:zz"));
        let nic = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("nope".into()),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert!(
            nic.validate()
                .unwrap_err()
                .to_string()
                .contains("guest_mac")
        );
    }

    #[test]
    fn drives_and_vsock_are_checked() {
        let drive: Drive = serde_json::from_str(
            r#"{"drive_id":"root","path_on_host":"","is_root_device":true,"rate_limiter":{}}"#,
        )
        .unwrap();
        assert_eq!(
            drive.validate(),
            Err(DeviceConfigError::EmptyPath("drives.path_on_host"))
        );
        let vsock = Vsock {
            guest_cid: 2,
            uds_path: "/tmp/v.sock".into(),
            vsock_id: None,
        };
        assert_eq!(vsock.validate(), Err(DeviceConfigError::Cid(2)));
    }
}
