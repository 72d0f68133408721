//! Which device carries the guest's console: sie's `console` section
//! (`--console serial|virtio` on `sie run`). With `serial` (the default)
//! COM1 is the console, as in Firecracker. With `virtio` a virtio-console
//! device (`hvc0`) carries it: stdin, stdout, `serial_out_path` and the
//! console socket all go to it instead of COM1, `console=hvc0` joins the
//! kernel command line unless it names a `console=` itself, and COM1 stays
//! present (Linux and tools probe it) but gets no input. A guest output
//! byte on COM1 costs two VM exits; on hvc0 a whole buffer costs one
//! notification. Firecracker has no such choice, so the section is a sie
//! extension that a config file may carry (also in API mode) and that
//! `GET /vm/config` shows when set.
//!
//! ```
//! use sie_config::{ConsoleDevice, VmConfig};
//!
//! let config = VmConfig::from_json(
//!     r#"{"boot-source": {"kernel_image_path": "k"}, "console": {"device": "virtio"}}"#,
//! ).unwrap();
//! assert_eq!(config.console_device(), ConsoleDevice::Virtio);
//! assert_eq!("serial".parse(), Ok(ConsoleDevice::Serial));
//! ```

use serde::{Deserialize, Serialize};

/// The device that carries the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleDevice {
    /// COM1, the 16550 UART (`ttyS0`).
    #[default]
    Serial,
    /// A virtio-console device (`hvc0`).
    Virtio,
}

/// The `console` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// The device that carries the console.
    #[serde(default)]
    pub device: ConsoleDevice,
}

/// A console device name that is neither `serial` nor `virtio`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("console device {0:?} is not serial or virtio")]
pub struct ConsoleDeviceError(pub String);

impl std::str::FromStr for ConsoleDevice {
    type Err = ConsoleDeviceError;

    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word {
            "serial" => Ok(Self::Serial),
            "virtio" => Ok(Self::Virtio),
            other => Err(ConsoleDeviceError(other.to_string())),
        }
    }
}

impl ConsoleDevice {
    /// The kernel console device name (`ttyS0`, `hvc0`).
    pub fn kernel_name(self) -> &'static str {
        match self {
            Self::Serial => "ttyS0",
            Self::Virtio => "hvc0",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_and_refuses_unknown_devices_and_fields() {
        let parse = |text: &str| serde_json::from_str::<ConsoleConfig>(text);
        assert_eq!(
            parse(r#"{"device": "virtio"}"#).unwrap().device,
            ConsoleDevice::Virtio
        );
        assert_eq!(parse("{}").unwrap().device, ConsoleDevice::Serial);
        assert!(parse(r#"{"device": "hvc"}"#).is_err());
        assert!(parse(r#"{"device": "serial", "cols": 80}"#).is_err());
    }

    #[test]
    fn names_parse_and_a_bad_one_says_what_is_expected() {
        assert_eq!("virtio".parse(), Ok(ConsoleDevice::Virtio));
        let error = "VIRTIO".parse::<ConsoleDevice>().unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"console device "VIRTIO" is not serial or virtio"#
        );
        assert_eq!(ConsoleDevice::Virtio.kernel_name(), "hvc0");
    }
}
