//! COM1 on the host: Firecracker's `PUT /serial` (and the config file's
//! `serial` section), with sie's console socket beside it.
//!
//! ```
//! use sie_config::SerialConfig;
//!
//! let serial: SerialConfig = serde_json::from_str(
//!     r#"{"serial_out_path": "/tmp/console.log", "console_socket": "/tmp/console.sock"}"#,
//! ).unwrap();
//! serial.validate().unwrap();
//! assert_eq!(serial.ring_bytes(), sie_config::DEFAULT_CONSOLE_BUFFER_BYTES);
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Output kept for a console client that is not attached (64 KiB).
pub const DEFAULT_CONSOLE_BUFFER_BYTES: usize = 64 << 10;
/// The largest console buffer sie accepts (64 MiB).
pub const MAX_CONSOLE_BUFFER_BYTES: usize = 64 << 20;

/// Where COM1's output goes (and, for the socket, where its input comes
/// from). With neither path COM1 is on sie's stdout and stdin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Firecracker's: a file (or FIFO) that receives everything the guest
    /// writes to COM1, opened non-blocking, created if missing, never
    /// truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<PathBuf>,
    /// Firecracker's output rate limiter; refused (not supported yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<serde_json::Value>,
    /// sie: a Unix socket a client attaches to (`sie ctl console`): it gets
    /// COM1's output, and what it sends is COM1's input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
    /// sie: bytes of output kept while no client is attached, replayed on
    /// attach [default: 64 KiB].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_buffer_bytes: Option<usize>,
}

/// Why a serial configuration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SerialConfigError {
    /// A rate limiter on the console.
    #[error("serial: rate_limiter is not supported yet")]
    RateLimiter,
    /// A console buffer out of range.
    #[error(
        "serial: console_buffer_bytes {0} is out of range: at least 1, at most {MAX_CONSOLE_BUFFER_BYTES}"
    )]
    BufferSize(usize),
    /// An empty path.
    #[error("serial: {0} is empty")]
    EmptyPath(&'static str),
}

impl SerialConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<(), SerialConfigError> {
        if self.rate_limiter.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(SerialConfigError::RateLimiter);
        }
        if let Some(bytes) = self.console_buffer_bytes
            && !(1..=MAX_CONSOLE_BUFFER_BYTES).contains(&bytes)
        {
            return Err(SerialConfigError::BufferSize(bytes));
        }
        for (name, path) in [
            ("serial_out_path", &self.serial_out_path),
            ("console_socket", &self.console_socket),
        ] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(SerialConfigError::EmptyPath(name));
            }
        }
        Ok(())
    }

    /// The console buffer's size in bytes.
    pub fn ring_bytes(&self) -> usize {
        self.console_buffer_bytes
            .unwrap_or(DEFAULT_CONSOLE_BUFFER_BYTES)
    }

    /// `other`'s fields laid over these (a later `PUT /serial` keeps a
    /// console socket given on the command line).
    pub fn merged(&self, other: &SerialConfig) -> SerialConfig {
        SerialConfig {
            serial_out_path: other
                .serial_out_path
                .clone()
                .or_else(|| self.serial_out_path.clone()),
            rate_limiter: other
                .rate_limiter
                .clone()
                .or_else(|| self.rate_limiter.clone()),
            console_socket: other
                .console_socket
                .clone()
                .or_else(|| self.console_socket.clone()),
            console_buffer_bytes: other.console_buffer_bytes.or(self.console_buffer_bytes),
        }
    }
}

/// `PUT /vm/dump` body (a sie extension): where to write the guest's ELF
/// core file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDump {
    /// The core file (replaced crash-safely if it exists).
    pub path: PathBuf,
}

impl VmDump {
    /// Checks the path.
    pub fn check(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() || self.path.file_name().is_none() {
            return Err(format!(
                "vm/dump: path {:?} names no file",
                self.path.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecrackers_body_parses_and_a_rate_limiter_is_refused() {
        let serial: SerialConfig =
            serde_json::from_str(r#"{"serial_out_path": "/tmp/s.log"}"#).unwrap();
        assert_eq!(serial.validate(), Ok(()));
        let limited: SerialConfig = serde_json::from_str(
            r#"{"serial_out_path": "/tmp/s.log", "rate_limiter": {"size": 10, "refill_time": 100}}"#,
        )
        .unwrap();
        assert_eq!(limited.validate(), Err(SerialConfigError::RateLimiter));
        let null_limiter: SerialConfig =
            serde_json::from_str(r#"{"serial_out_path": "/tmp/s.log", "rate_limiter": null}"#)
                .unwrap();
        assert_eq!(null_limiter.validate(), Ok(()));
    }

    #[test]
    fn buffer_size_is_bounded_and_defaults_to_64_kib() {
        let mut serial = SerialConfig::default();
        assert_eq!(serial.ring_bytes(), 64 * 1024);
        serial.console_buffer_bytes = Some(0);
        assert_eq!(serial.validate(), Err(SerialConfigError::BufferSize(0)));
        serial.console_buffer_bytes = Some(MAX_CONSOLE_BUFFER_BYTES + 1);
        assert!(serial.validate().is_err());
        serial.console_buffer_bytes = Some(4096);
        assert_eq!(serial.ring_bytes(), 4096);
    }

    #[test]
    fn a_put_keeps_the_command_lines_socket() {
        let flags = SerialConfig {
            console_socket: Some("/run/c.sock".into()),
            ..SerialConfig::default()
        };
        let put = SerialConfig {
            serial_out_path: Some("/tmp/out".into()),
            ..SerialConfig::default()
        };
        let merged = flags.merged(&put);
        assert_eq!(merged.console_socket, Some("/run/c.sock".into()));
        assert_eq!(merged.serial_out_path, Some("/tmp/out".into()));
    }

    #[test]
    fn a_dump_path_must_name_a_file() {
        assert!(VmDump { path: "".into() }.check().is_err());
        assert!(VmDump { path: "/".into() }.check().is_err());
        assert!(
            VmDump {
                path: "/tmp/core".into()
            }
            .check()
            .is_ok()
        );
    }
}
