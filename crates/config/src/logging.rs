//! `logger` and `metrics`: where sie writes its logs and metrics.

use std::collections::BTreeMap;
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
    /// Put the instance id (`--id`) on every metrics line as a top-level
    /// `"id"` field [default: false].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Operator-defined pairs put on every metrics line as a top-level
    /// `"properties"` object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

impl Metrics {
    /// Metrics written to `path`, with neither `id` nor `properties`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            metrics_path: path.into(),
            emit_id: None,
            properties: None,
        }
    }

    /// The top-level fields every metrics line carries besides the figures:
    /// `"id": instance_id` when `emit_id` is true, and `"properties"` when
    /// set (an empty map included, as given). Empty when neither is asked.
    pub fn line_fields(&self, instance_id: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut fields = serde_json::Map::new();
        if self.emit_id == Some(true) {
            fields.insert("id".into(), instance_id.into());
        }
        if let Some(properties) = &self.properties {
            let object = properties
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().into()))
                .collect();
            fields.insert("properties".into(), serde_json::Value::Object(object));
        }
        fields
    }
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
    fn metrics_line_fields_follow_emit_id_and_properties() {
        let plain: Metrics = serde_json::from_str(r#"{"metrics_path":"m.json"}"#).unwrap();
        assert_eq!(plain, Metrics::new("m.json"));
        assert!(plain.line_fields("vm1").is_empty());
        let full: Metrics = serde_json::from_str(
            r#"{"metrics_path":"m.json","emit_id":true,
                "properties":{"customer_id":"1234","bundle_id":"fn-abc"}}"#,
        )
        .unwrap();
        assert_eq!(
            serde_json::Value::Object(full.line_fields("vm1")),
            serde_json::json!({
                "id": "vm1",
                "properties": {"bundle_id": "fn-abc", "customer_id": "1234"},
            })
        );
        let no_id = Metrics {
            emit_id: Some(false),
            ..full
        };
        assert!(!no_id.line_fields("vm1").contains_key("id"));
        let bad = r#"{"metrics_path":"m","properties":{"n":1}}"#;
        assert!(serde_json::from_str::<Metrics>(bad).is_err());
    }

    #[test]
    fn levels_are_case_insensitive() {
        let mut logger: Logger = serde_json::from_str(r#"{"level":"INFO"}"#).unwrap();
        assert_eq!(logger.validate(), Ok(()));
        logger.level = Some("loud".into());
        assert!(logger.validate().unwrap_err().to_string().contains("loud"));
    }
}
