//! The `balloon` resource (Firecracker's `Balloon`) and the bodies of its
//! runtime endpoints: a target size, and which of the balloon's features
//! the guest is offered. Each field takes effect (sie-virtio's balloon).

use serde::{Deserialize, Deserializer, Serialize};

/// `PUT /balloon` body and the config file's `balloon` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target balloon size, in MiB.
    pub amount_mib: u32,
    /// Let the guest deflate the balloon under memory pressure.
    pub deflate_on_oom: bool,
    /// Seconds between statistics refreshes; 0 turns statistics off (and
    /// they cannot be turned on after boot).
    #[serde(default, deserialize_with = "null_default")]
    pub stats_polling_interval_s: u16,
    /// Offer free page hinting (`PATCH /balloon/hinting/start`).
    #[serde(default, deserialize_with = "null_default")]
    pub free_page_hinting: bool,
    /// Offer free page reporting: the guest names the pages it frees, and
    /// the host drops them.
    #[serde(default, deserialize_with = "null_default")]
    pub free_page_reporting: bool,
}

/// 4 KiB pages per MiB: the balloon counts in 4 KiB pages.
pub const BALLOON_PAGES_PER_MIB: u32 = 256;

/// Why a balloon setting is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BalloonConfigError {
    /// A target larger than the guest's memory (Firecracker's wording).
    #[error(
        "balloon: amount_mib {amount_mib} is larger than the guest's memory ({mem_size_mib} MiB): Amount of pages requested is too large."
    )]
    TooLarge {
        /// Asked for.
        amount_mib: u32,
        /// The guest's RAM.
        mem_size_mib: u64,
    },
}

impl Balloon {
    /// Checks the target against the guest's memory.
    pub fn validate(&self, mem_size_mib: u64) -> Result<(), BalloonConfigError> {
        check_amount(self.amount_mib, mem_size_mib)
    }

    /// The target in 4 KiB pages.
    pub fn target_pages(&self) -> u32 {
        self.amount_mib.saturating_mul(BALLOON_PAGES_PER_MIB)
    }
}

/// A target of `amount_mib` for a guest of `mem_size_mib`.
pub fn check_amount(amount_mib: u32, mem_size_mib: u64) -> Result<(), BalloonConfigError> {
    if u64::from(amount_mib) > mem_size_mib {
        return Err(BalloonConfigError::TooLarge {
            amount_mib,
            mem_size_mib,
        });
    }
    Ok(())
}

/// `PATCH /balloon` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// The new target, in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// The new interval, in seconds (not 0: statistics stay on).
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start` body (optional as a whole).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    /// Answer the guest's end of a run with `DONE` at once (default), or
    /// wait for `PATCH /balloon/hinting/stop`.
    #[serde(default = "yes", deserialize_with = "null_yes")]
    pub acknowledge_on_stop: bool,
}

fn yes() -> bool {
    true
}

/// An optional field sent as `null`: its default, as when it is absent.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn null_yes<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(true))
}

impl Default for BalloonStartCmd {
    fn default() -> Self {
        Self {
            acknowledge_on_stop: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecracker_bodies_parse_with_their_defaults() {
        let b: Balloon =
            serde_json::from_str(r#"{"amount_mib": 64, "deflate_on_oom": true}"#).unwrap();
        assert_eq!(b.stats_polling_interval_s, 0);
        assert!(!b.free_page_reporting && !b.free_page_hinting);
        assert_eq!(b.target_pages(), 64 * 256);
        assert!(serde_json::from_str::<Balloon>(r#"{"amount_mib": 1}"#).is_err());
        assert!(
            serde_json::from_str::<Balloon>(r#"{"amount_mib": -1, "deflate_on_oom": true}"#)
                .is_err()
        );
        let start: BalloonStartCmd = serde_json::from_str("{}").unwrap();
        assert!(start.acknowledge_on_stop);
        let start: BalloonStartCmd =
            serde_json::from_str(r#"{"acknowledge_on_stop": null}"#).unwrap();
        assert!(start.acknowledge_on_stop);
        let nulls: Balloon = serde_json::from_str(
            r#"{"amount_mib": 1, "deflate_on_oom": false, "stats_polling_interval_s": null,
                "free_page_hinting": null, "free_page_reporting": null}"#,
        )
        .unwrap();
        assert_eq!(nulls.stats_polling_interval_s, 0);
    }

    #[test]
    fn a_target_larger_than_ram_is_refused() {
        let b = Balloon {
            amount_mib: 129,
            ..Balloon::default()
        };
        assert!(b.validate(128).is_err());
        assert!(b.validate(129).is_ok());
    }
}
