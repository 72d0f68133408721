//! `mmds-config` (and `PUT /mmds/config`): which network interfaces carry
//! the metadata service, at which address, and how the guest must ask.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The MMDS address unless `ipv4_address` names another.
pub const DEFAULT_MMDS_IPV4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// How the guest must ask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Plain `GET`s (Firecracker's default, deprecated there).
    #[default]
    V1,
    /// Session tokens from `PUT /latest/api/token`.
    V2,
}

/// Firecracker's `MmdsConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// V1 or V2.
    #[serde(default)]
    pub version: MmdsVersion,
    /// Ids of the network interfaces whose guest traffic to the MMDS
    /// address is answered by the VMM.
    pub network_interfaces: Vec<String>,
    /// The MMDS address (link-local); `None`: [`DEFAULT_MMDS_IPV4`].
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Always answer in IMDS text, whatever the guest accepts.
    #[serde(default)]
    pub imds_compat: bool,
}

/// Why an MMDS configuration was refused; the texts are Firecracker's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MmdsConfigError {
    /// No interface named.
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    EmptyNetworkInterfaces,
    /// The address is outside 169.254.0.0/16.
    #[error("The MMDS IPv4 address is not link local.")]
    NotLinkLocal,
    /// An id names no configured interface.
    #[error(
        "The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface."
    )]
    UnknownNetworkInterface,
}

impl MmdsConfig {
    /// The address the guest reaches the MMDS at.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_MMDS_IPV4)
    }

    /// Checks the fields, and that every named interface is one of
    /// `iface_ids`.
    pub fn validate<'a>(
        &self,
        iface_ids: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<(), MmdsConfigError> {
        if self.network_interfaces.is_empty() {
            return Err(MmdsConfigError::EmptyNetworkInterfaces);
        }
        if !self.ipv4().is_link_local() {
            return Err(MmdsConfigError::NotLinkLocal);
        }
        let known = |id: &String| iface_ids.clone().any(|known| known == id);
        if !self.network_interfaces.iter().all(known) {
            return Err(MmdsConfigError::UnknownNetworkInterface);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> MmdsConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn defaults_are_firecrackers() {
        let mmds = config(r#"{"network_interfaces": ["eth0"]}"#);
        assert_eq!(mmds.version, MmdsVersion::V1);
        assert_eq!(mmds.ipv4(), Ipv4Addr::new(169, 254, 169, 254));
        assert!(!mmds.imds_compat);
        assert_eq!(mmds.validate(["eth0"].into_iter()), Ok(()));
        // Firecracker requires the list.
        assert!(serde_json::from_str::<MmdsConfig>(r#"{"version": "V2"}"#).is_err());
        assert!(
            serde_json::from_str::<MmdsConfig>(r#"{"network_interfaces": [], "x": 1}"#).is_err()
        );
    }

    #[test]
    fn interfaces_must_exist_and_the_address_be_link_local() {
        let mmds = config(
            r#"{"version": "V2", "network_interfaces": ["eth1"], "ipv4_address": "169.254.170.2", "imds_compat": true}"#,
        );
        assert_eq!(
            mmds.validate(["eth0"].into_iter()),
            Err(MmdsConfigError::UnknownNetworkInterface)
        );
        assert_eq!(mmds.validate(["eth0", "eth1"].into_iter()), Ok(()));
        let far = config(r#"{"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"}"#);
        assert_eq!(
            far.validate(["eth0"].into_iter()),
            Err(MmdsConfigError::NotLinkLocal)
        );
        let none = config(r#"{"network_interfaces": []}"#);
        assert_eq!(
            none.validate(["eth0"].into_iter()),
            Err(MmdsConfigError::EmptyNetworkInterfaces)
        );
    }
}
