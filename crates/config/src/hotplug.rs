//! Firecracker's hotpluggable memory (`PUT /hotplug/memory`, the
//! `memory-hotplug` config section): a virtio-mem region past RAM of
//! `total_size_mib`, added to KVM in slots of `slot_size_mib`, that the
//! guest plugs in blocks of `block_size_mib` to follow
//! `PATCH /hotplug/memory {requested_size_mib}`.

use serde::{Deserialize, Serialize};

/// Firecracker's `MemoryHotplugConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplug {
    /// Size of the hotpluggable region in MiB.
    pub total_size_mib: u64,
    /// KVM memory slot size in MiB (default 128, at least 128).
    #[serde(default = "default_slot", deserialize_with = "null_as_slot")]
    pub slot_size_mib: u64,
    /// The guest's plug granularity in MiB (default 2, a power of two).
    #[serde(default = "default_block", deserialize_with = "null_as_block")]
    pub block_size_mib: u64,
}

/// Firecracker's `MemoryHotplugSizeUpdate`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryHotplugPatch {
    /// The size the guest should have plugged, in MiB.
    pub requested_size_mib: u64,
}

/// The largest hotpluggable region sie places (the device-memory window
/// it shares with pmem is 32 GiB).
pub const MAX_HOTPLUG_MIB: u64 = 16 << 10;

const fn default_slot() -> u64 {
    128
}

const fn default_block() -> u64 {
    2
}

fn null_as_slot<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(default_slot()))
}

fn null_as_block<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(default_block()))
}

/// Why a hotplug setting is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HotplugConfigError {
    /// A block size that is not a power of two of at least 2 MiB.
    #[error("memory-hotplug: block_size_mib {0} must be a power of two, at least 2")]
    BlockSize(u64),
    /// A slot size below 128 MiB or not a whole number of blocks.
    #[error(
        "memory-hotplug: slot_size_mib {0} must be at least 128 and a multiple of block_size_mib"
    )]
    SlotSize(u64),
    /// A total size that is empty, too large or not a whole number of slots.
    #[error(
        "memory-hotplug: total_size_mib {0} must be a non-zero multiple of slot_size_mib, at most {MAX_HOTPLUG_MIB}"
    )]
    TotalSize(u64),
    /// A requested size outside the region or not a whole number of blocks.
    #[error(
        "hotplug/memory: requested_size_mib {requested} must be a multiple of block_size_mib {block} and at most total_size_mib {total}"
    )]
    Requested {
        /// Asked for.
        requested: u64,
        /// The block size.
        block: u64,
        /// The region.
        total: u64,
    },
}

impl MemoryHotplug {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), HotplugConfigError> {
        if self.block_size_mib < 2 || !self.block_size_mib.is_power_of_two() {
            return Err(HotplugConfigError::BlockSize(self.block_size_mib));
        }
        if self.slot_size_mib < 128 || !self.slot_size_mib.is_multiple_of(self.block_size_mib) {
            return Err(HotplugConfigError::SlotSize(self.slot_size_mib));
        }
        if self.total_size_mib == 0
            || self.total_size_mib > MAX_HOTPLUG_MIB
            || !self.total_size_mib.is_multiple_of(self.slot_size_mib)
        {
            return Err(HotplugConfigError::TotalSize(self.total_size_mib));
        }
        Ok(())
    }

    /// Checks a requested size against this region.
    pub fn check_request(&self, patch: &MemoryHotplugPatch) -> Result<(), HotplugConfigError> {
        let requested = patch.requested_size_mib;
        if requested > self.total_size_mib || !requested.is_multiple_of(self.block_size_mib) {
            return Err(HotplugConfigError::Requested {
                requested,
                block: self.block_size_mib,
                total: self.total_size_mib,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> MemoryHotplug {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn firecracker_defaults_and_checks() {
        let config = parse(r#"{"total_size_mib": 1024}"#);
        assert_eq!((config.slot_size_mib, config.block_size_mib), (128, 2));
        config.validate().unwrap();
        let nulls =
            parse(r#"{"total_size_mib": 256, "slot_size_mib": null, "block_size_mib": null}"#);
        assert_eq!(
            nulls,
            MemoryHotplug {
                total_size_mib: 256,
                slot_size_mib: 128,
                block_size_mib: 2
            }
        );
        for (bad, word) in [
            (r#"{"total_size_mib": 1000}"#, "total_size_mib"),
            (r#"{"total_size_mib": 0}"#, "total_size_mib"),
            (
                r#"{"total_size_mib": 1024, "block_size_mib": 3}"#,
                "block_size_mib",
            ),
            (
                r#"{"total_size_mib": 1024, "slot_size_mib": 64}"#,
                "slot_size_mib",
            ),
            (r#"{"total_size_mib": 1048576}"#, "total_size_mib"),
        ] {
            let message = parse(bad).validate().unwrap_err().to_string();
            assert!(message.contains(word), "{bad}: {message}");
        }
        let patch = |mib| MemoryHotplugPatch {
            requested_size_mib: mib,
        };
        config.check_request(&patch(512)).unwrap();
        assert!(config.check_request(&patch(2048)).is_err());
        assert!(config.check_request(&patch(3)).is_err());
    }
}
