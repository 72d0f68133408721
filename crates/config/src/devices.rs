//! Device resources: `drives`, `network-interfaces`, `vsock`, `entropy`.
//!
//! Every setting Firecracker accepts here has its effect in sie: rate
//! limiters are enforced (sie-virtio's `rate_limiter`), `cache_type`
//! decides whether the guest may flush, and `io_engine` picks a worker
//! thread or io_uring. Absent or null, `cache_type` and `io_engine` take
//! Firecracker's defaults ("Unsafe", "Sync"), and that is what
//! `GET /vm/config` shows.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

use crate::resource_id::{IdError, validate_id};

/// Firecracker's `RateLimiter`: a bytes bucket and an operations bucket.
/// Clients send `{}` or null buckets when they want no limit. In a `PATCH`,
/// an absent bucket is left as it is and a bucket of size 0 removes that
/// limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    /// Bucket whose tokens are bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    /// Bucket whose tokens are operations (requests or frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// Firecracker's `TokenBucket`: holds up to `size` tokens, starts full,
/// refills `size` tokens every `refill_time` ms; `one_time_burst` extra
/// tokens are spent first and never refill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    /// Tokens the bucket holds when full.
    pub size: u64,
    /// Extra tokens for an initial burst.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Time to refill an empty bucket, in milliseconds.
    pub refill_time: u64,
}

impl TokenBucket {
    /// True when the bucket limits anything. Firecracker disables a bucket
    /// whose `size` or `refill_time` is 0, so such a bucket limits nothing.
    pub fn limits(&self) -> bool {
        self.size != 0 && self.refill_time != 0
    }
}

impl RateLimiter {
    /// `patch` applied to these settings, as `PATCH` does: the buckets it
    /// names replace these (a bucket that limits nothing removes one),
    /// the others stay. What `GET /vm/config` then shows.
    pub fn merged(current: Option<&Self>, patch: &Self) -> Self {
        let pick = |patched: &Option<TokenBucket>, kept: Option<&TokenBucket>| match patched {
            Some(bucket) => Some(bucket.clone()).filter(TokenBucket::limits),
            None => kept.cloned(),
        };
        Self {
            bandwidth: pick(&patch.bandwidth, current.and_then(|c| c.bandwidth.as_ref())),
            ops: pick(&patch.ops, current.and_then(|c| c.ops.as_ref())),
        }
    }

    /// True when either bucket limits anything.
    pub fn limits(&self) -> bool {
        [&self.bandwidth, &self.ops]
            .into_iter()
            .flatten()
            .any(TokenBucket::limits)
    }
}

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
    /// Whether the guest is offered flushes (absent or null: "Unsafe").
    #[serde(default)]
    pub cache_type: CacheType,
    /// What runs the drive's I/O (absent or null: "Sync").
    #[serde(default)]
    pub io_engine: IoEngine,
    /// Limits the drive's requests (1 operation each) and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Box<RateLimiter>>,
}

/// Firecracker's `cache_type`: what a guest's flush means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum CacheType {
    /// The flush feature is not offered, so the guest never waits for the
    /// host's disk (Firecracker's default); data reaches the disk when the
    /// host writes back its page cache.
    #[default]
    Unsafe,
    /// The flush feature is offered and a flush is an fsync of the image.
    Writeback,
}

/// Firecracker's `io_engine`: what runs a drive's reads, writes and
/// flushes, off the event thread either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum IoEngine {
    /// A worker thread per drive making blocking calls (Firecracker's
    /// default).
    #[default]
    Sync,
    /// io_uring: the host kernel runs many requests at once.
    Async,
}

/// A field that takes one of a few names, or null for its default.
fn choice<'de, D: Deserializer<'de>, T: Default + Copy>(
    deserializer: D,
    field: &str,
    names: &[(&str, T)],
) -> Result<T, D::Error> {
    let Some(given) = Option::<String>::deserialize(deserializer)? else {
        return Ok(T::default());
    };
    names
        .iter()
        .find(|(name, _)| *name == given)
        .map(|&(_, value)| value)
        .ok_or_else(|| {
            let allowed: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
            serde::de::Error::custom(format!("{field} {given:?} is not {}", allowed.join(" or ")))
        })
}

impl<'de> Deserialize<'de> for CacheType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        choice(
            deserializer,
            "cache_type",
            &[("Unsafe", Self::Unsafe), ("Writeback", Self::Writeback)],
        )
    }
}

impl<'de> Deserialize<'de> for IoEngine {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        choice(
            deserializer,
            "io_engine",
            &[("Sync", Self::Sync), ("Async", Self::Async)],
        )
    }
}

/// Smallest MTU a network interface accepts (IPv4's minimum), bytes.
pub const MIN_MTU: u16 = 68;

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
    /// MTU offered to the guest (VIRTIO_NET_F_MTU), bytes, [`MIN_MTU`] to
    /// 65535; absent: not offered, the guest picks its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits the frames (1 operation each) and bytes delivered to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<Box<RateLimiter>>,
    /// Limits the frames (1 operation each) and bytes the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<Box<RateLimiter>>,
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
    /// Limits the entropy requests (1 operation each) and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Box<RateLimiter>>,
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
    #[error(
        "network-interfaces: guest_mac {0:?} is not a unicast MAC address like 06:00:ac:10:00:02"
    )]
    Mac(String),
    /// An empty tap name or one longer than the kernel allows.
    #[error("network-interfaces: host_dev_name {0:?} must be 1 to 15 characters")]
    TapName(String),
    /// An MTU below the minimum.
    #[error("network-interfaces: mtu {0} is out of range {MIN_MTU}..=65535")]
    Mtu(u16),
    /// CIDs 0–2 are reserved.
    #[error("vsock: guest_cid {0} is reserved; use 3 or more")]
    Cid(u32),
}

/// True for `xx:xx:xx:xx:xx:xx` with hex digits.
pub fn is_mac(text: &str) -> bool {
    let parts: Vec<&str> = text.split(':').collect();
    let well_formed = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    // A multicast address (low bit of the first byte) can never be a NIC's
    // own: virtio-net refuses it, so the configuration does too.
    well_formed && u8::from_str_radix(parts[0], 16).is_ok_and(|first| first & 1 == 0)
}

impl Drive {
    /// Checks every field. An empty (0-byte) backing file is allowed: clients
    /// attach placeholders and swap the file in later.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        validate_id("drive_id", &self.drive_id)?;
        if self.path_on_host.as_os_str().is_empty() {
            return Err(DeviceConfigError::EmptyPath("drives.path_on_host"));
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
        if let Some(mtu) = self.mtu.filter(|&mtu| mtu < MIN_MTU) {
            return Err(DeviceConfigError::Mtu(mtu));
        }
        Ok(())
    }
}

impl Entropy {
    /// Checks every field: any rate limiter Firecracker parses is valid.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
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
        assert!(!is_mac("01:00:5e:00:00:01"), "multicast");
        assert!(!is_mac("ff:ff:ff:ff:ff:ff"), "broadcast");
        let nic = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: Some("nope".into()),
            mtu: None,
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

#[cfg(test)]
mod refusals {
    use super::*;

    fn drive(extra: &str) -> Result<(), DeviceConfigError> {
        let text = format!(
            r#"{{"drive_id":"root","path_on_host":"root.img","is_root_device":true{extra}}}"#
        );
        serde_json::from_str::<Drive>(&text).unwrap().validate()
    }

    fn limiter(text: &str) -> RateLimiter {
        serde_json::from_str(text).unwrap()
    }

    fn parsed(extra: &str) -> Result<Drive, serde_json::Error> {
        serde_json::from_str(&format!(
            r#"{{"drive_id":"root","path_on_host":"root.img","is_root_device":true{extra}}}"#
        ))
    }

    #[test]
    fn every_firecracker_cache_type_and_io_engine_is_accepted() {
        for (extra, cache, engine) in [
            ("", CacheType::Unsafe, IoEngine::Sync),
            (
                r#","cache_type":null,"io_engine":null"#,
                CacheType::Unsafe,
                IoEngine::Sync,
            ),
            (
                r#","cache_type":"Writeback","io_engine":"Sync""#,
                CacheType::Writeback,
                IoEngine::Sync,
            ),
            (
                r#","cache_type":"Unsafe","io_engine":"Async""#,
                CacheType::Unsafe,
                IoEngine::Async,
            ),
        ] {
            assert_eq!(drive(extra), Ok(()), "{extra}");
            let drive = parsed(extra).unwrap();
            assert_eq!(
                (drive.cache_type, drive.io_engine),
                (cache, engine),
                "{extra}"
            );
        }
    }

    #[test]
    fn the_settings_in_effect_are_what_a_drive_shows() {
        // Firecracker's defaults, spelled out, as GET /vm/config shows them.
        let shown = serde_json::to_value(parsed("").unwrap()).unwrap();
        assert_eq!(shown["cache_type"], "Unsafe");
        assert_eq!(shown["io_engine"], "Sync");
        let shown = serde_json::to_value(
            parsed(r#","cache_type":"Writeback","io_engine":"Async""#).unwrap(),
        )
        .unwrap();
        assert_eq!(shown["cache_type"], "Writeback");
        assert_eq!(shown["io_engine"], "Async");
    }

    #[test]
    fn names_firecracker_does_not_know_are_refused() {
        let unknown = parsed(r#","io_engine":"Fast""#).unwrap_err().to_string();
        assert!(
            unknown.contains(r#"io_engine "Fast" is not Sync or Async"#),
            "{unknown}"
        );
        let unknown = parsed(r#","cache_type":"unsafe""#).unwrap_err().to_string();
        assert!(
            unknown.contains(r#"cache_type "unsafe" is not Unsafe or Writeback"#),
            "{unknown}"
        );
        assert!(parsed(r#","cache_type":1"#).is_err());
    }

    #[test]
    fn every_rate_limiter_is_accepted_and_only_nonzero_buckets_limit() {
        for empty in [
            "{}",
            r#"{"bandwidth": null, "ops": null}"#,
            r#"{"bandwidth": {"size": 0, "refill_time": 100}}"#,
            r#"{"ops": {"size": 1000, "refill_time": 0, "one_time_burst": null}}"#,
        ] {
            assert!(!limiter(empty).limits(), "{empty}");
            assert_eq!(
                drive(&format!(r#","rate_limiter":{empty}"#)),
                Ok(()),
                "{empty}"
            );
        }
        let limiting = r#"{"ops": {"size": 1000, "refill_time": 1000}}"#;
        assert!(limiter(limiting).limits());
        assert_eq!(drive(&format!(r#","rate_limiter":{limiting}"#)), Ok(()));
        let nic = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            mtu: None,
            rx_rate_limiter: Some(Box::new(limiter(limiting))),
            tx_rate_limiter: Some(Box::new(limiter(limiting))),
        };
        assert_eq!(nic.validate(), Ok(()));
        let entropy = Entropy {
            rate_limiter: Some(Box::new(limiter(limiting))),
        };
        assert_eq!(entropy.validate(), Ok(()));
    }

    #[test]
    fn a_patch_replaces_named_buckets_and_keeps_the_rest() {
        let current = limiter(
            r#"{"bandwidth": {"size": 1000, "refill_time": 100}, "ops": {"size": 5, "refill_time": 10}}"#,
        );
        let merged = RateLimiter::merged(
            Some(&current),
            &limiter(r#"{"ops": {"size": 0, "refill_time": 0}}"#),
        );
        assert_eq!(merged.bandwidth, current.bandwidth);
        assert_eq!(merged.ops, None);
        let merged =
            RateLimiter::merged(None, &limiter(r#"{"ops": {"size": 7, "refill_time": 1}}"#));
        assert_eq!(merged.ops.map(|b| b.size), Some(7));
    }

    #[test]
    fn malformed_rate_limiters_do_not_parse() {
        assert!(serde_json::from_str::<RateLimiter>(r#"{"bytes": null}"#).is_err());
        assert!(serde_json::from_str::<RateLimiter>(r#"{"ops": {"size": 1}}"#).is_err());
    }

    #[test]
    fn mtu_range_is_checked() {
        let nic = |mtu| NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            mtu: Some(mtu),
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        assert_eq!(nic(MIN_MTU).validate(), Ok(()));
        assert_eq!(nic(u16::MAX).validate(), Ok(()));
        let message = nic(67).validate().unwrap_err().to_string();
        assert!(
            message.contains("mtu 67 is out of range 68..=65535"),
            "{message}"
        );
        let parsed: NetworkInterface =
            serde_json::from_str(r#"{"iface_id":"eth0","host_dev_name":"tap0","mtu":9000}"#)
                .unwrap();
        assert_eq!(parsed.mtu, Some(9000));
        let too_big = r#"{"iface_id":"eth0","host_dev_name":"tap0","mtu":65536}"#;
        assert!(serde_json::from_str::<NetworkInterface>(too_big).is_err());
    }
}
