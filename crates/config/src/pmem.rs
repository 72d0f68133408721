//! Firecracker's `pmem` resource: a host file mapped into the guest as a
//! virtio-pmem device (`/dev/pmemN` in configuration order).
//!
//! `rate_limiter` is accepted empty (`{}`, null, buckets that limit
//! nothing) as clients send it; one that would limit anything is refused,
//! since sie's pmem has nothing to limit (the guest reaches the file by
//! plain loads and stores).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::devices::RateLimiter;
use crate::resource_id::{IdError, validate_id};

/// Firecracker's `pmem` entry (`PUT /pmem/{id}`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pmem {
    /// Unique id.
    pub id: String,
    /// The backing file.
    pub path_on_host: PathBuf,
    /// Boot from this device (`root=/dev/pmemN`).
    #[serde(default, deserialize_with = "null_as_false")]
    pub root_device: bool,
    /// Map the file read-only: guest writes are dropped.
    #[serde(default, deserialize_with = "null_as_false")]
    pub read_only: bool,
    /// Accepted when it limits nothing (see the module header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Box<RateLimiter>>,
}

/// Firecracker's `PATCH /pmem/{id}` body: only a rate limiter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PmemPatch {
    /// The device.
    pub id: String,
    /// The new limiter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<Box<RateLimiter>>,
}

/// Why a `pmem` entry is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PmemConfigError {
    /// A bad id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An empty path.
    #[error("pmem: path_on_host is empty")]
    EmptyPath,
    /// A rate limiter that would limit something.
    #[error(
        "pmem {0}: rate_limiter is not supported (the guest reaches the file by loads and stores; there are no requests to limit)"
    )]
    RateLimiter(String),
}

impl Pmem {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), PmemConfigError> {
        validate_id("id", &self.id)?;
        if self.path_on_host.as_os_str().is_empty() {
            return Err(PmemConfigError::EmptyPath);
        }
        if self.rate_limiter.as_ref().is_some_and(|l| l.limits()) {
            return Err(PmemConfigError::RateLimiter(self.id.clone()));
        }
        Ok(())
    }
}

impl PmemPatch {
    /// Checks every field: a limiter that limits anything is refused.
    pub fn validate(&self) -> Result<(), PmemConfigError> {
        validate_id("id", &self.id)?;
        if self.rate_limiter.as_ref().is_some_and(|l| l.limits()) {
            return Err(PmemConfigError::RateLimiter(self.id.clone()));
        }
        Ok(())
    }
}

/// A flag that may be sent as `null` (read as false).
fn null_as_false<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// A list that may be sent as `null` (read as empty), as Firecracker's
/// clients send absent sections.
pub(crate) fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Pmem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn firecracker_fields_parse_with_defaults() {
        let pmem = parse(r#"{"id": "pm0", "path_on_host": "/f"}"#);
        assert!(!pmem.root_device && !pmem.read_only);
        pmem.validate().unwrap();
        let full = parse(
            r#"{"id": "pm0", "path_on_host": "/f", "root_device": true, "read_only": true,
                "rate_limiter": {}}"#,
        );
        assert!(full.root_device && full.read_only);
        full.validate().unwrap();
        assert!(
            serde_json::from_str::<Pmem>(r#"{"id": "a", "path_on_host": "f", "x": 1}"#).is_err()
        );
    }

    #[test]
    fn bad_entries_are_refused_in_one_line() {
        let mut pmem = parse(r#"{"id": "pm0", "path_on_host": ""}"#);
        assert_eq!(pmem.validate(), Err(PmemConfigError::EmptyPath));
        pmem.path_on_host = "/f".into();
        pmem.rate_limiter =
            serde_json::from_str(r#"{"ops": {"size": 1, "refill_time": 100}}"#).unwrap();
        let message = pmem.validate().unwrap_err().to_string();
        assert!(
            message.starts_with("pmem pm0: rate_limiter is not supported"),
            "{message}"
        );
        let patch: PmemPatch =
            serde_json::from_str(r#"{"id": "pm0", "rate_limiter": {}}"#).unwrap();
        patch.validate().unwrap();
    }
}
