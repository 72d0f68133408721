//! `logger` and `metrics`: where sie writes its logs and metrics.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Firecracker's `logger` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Log file or FIFO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Error, Warning, Info, Debug, Trace or Off (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with their source location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log this module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Firecracker's `metrics` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Metrics file or FIFO.
    pub metrics_path: PathBuf,
}

/// Why a logger configuration is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoggerError {
    /// Unknown level.
    #[error("logger: level {0:?} is not one of Error, Warning, Info, Debug, Trace, Off")]
    Level(String),
}

const LEVELS: [&str; 7] = ["error", "warning", "warn", "info", "debug", "trace", "off"];

impl Logger {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), LoggerError> {
        match &self.level {
            Some(level) if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) => {
                Err(LoggerError::Level(level.clone()))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_case_insensitive() {
        let mut logger: Logger = serde_json::from_str(r#"{"level":"INFO"}"#).unwrap();
        assert_eq!(logger.validate(), Ok(()));
        logger.level = Some("loud".into());
        assert!(logger.validate().unwrap_err().to_string().contains("loud"));
    }
}
