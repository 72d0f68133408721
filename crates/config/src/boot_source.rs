//! `boot-source`: the kernel, its command line and initrd.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest kernel command line sie accepts, in bytes (x86 Linux reads at
/// most this much through the boot protocol's `cmdline_size`).
pub const MAX_BOOT_ARGS_LEN: usize = 4095;

/// The command line used when none is given.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=-1";

/// The command line used when none is given and the console is
/// virtio-console (`--console virtio`).
pub const DEFAULT_BOOT_ARGS_VIRTIO_CONSOLE: &str = "console=hvc0 reboot=k panic=-1";

/// Firecracker's `boot-source` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel_image_path: PathBuf,
    /// Kernel command line; [`DEFAULT_BOOT_ARGS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// Why a boot source is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootSourceError {
    /// The kernel path is empty.
    #[error("boot-source: kernel_image_path is empty")]
    EmptyKernelPath,
    /// The initrd path is empty.
    #[error("boot-source: initrd_path is empty")]
    EmptyInitrdPath,
    /// The command line is too long.
    #[error("boot-source: boot_args is {0} bytes, longer than the limit of {MAX_BOOT_ARGS_LEN}")]
    BootArgsTooLong(usize),
    /// The command line holds a NUL byte.
    #[error("boot-source: boot_args contains a NUL byte")]
    BootArgsNul,
}

impl BootSource {
    /// A boot source for `kernel` with the default command line and no initrd.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Self {
            kernel_image_path: kernel.into(),
            boot_args: None,
            initrd_path: None,
        }
    }

    /// The command line the guest gets (before sie adds its devices'
    /// arguments) with COM1 as the console.
    pub fn effective_boot_args(&self) -> &str {
        self.boot_args_for(crate::ConsoleDevice::Serial)
    }

    /// The command line the guest gets (before sie adds its devices'
    /// arguments) when `console` carries the console: the user's, or the
    /// default naming that device.
    pub fn boot_args_for(&self, console: crate::ConsoleDevice) -> &str {
        match (&self.boot_args, console) {
            (Some(args), _) => args,
            (None, crate::ConsoleDevice::Serial) => DEFAULT_BOOT_ARGS,
            (None, crate::ConsoleDevice::Virtio) => DEFAULT_BOOT_ARGS_VIRTIO_CONSOLE,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), BootSourceError> {
        if self.kernel_image_path.as_os_str().is_empty() {
            return Err(BootSourceError::EmptyKernelPath);
        }
        if self
            .initrd_path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(BootSourceError::EmptyInitrdPath);
        }
        if let Some(args) = &self.boot_args {
            if args.len() > MAX_BOOT_ARGS_LEN {
                return Err(BootSourceError::BootArgsTooLong(args.len()));
            }
            if args.contains('\0') {
                return Err(BootSourceError::BootArgsNul);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_command_line_names_the_console_device_and_a_users_is_kept() {
        let mut boot = BootSource::new("k");
        assert_eq!(boot.effective_boot_args(), DEFAULT_BOOT_ARGS);
        assert_eq!(
            boot.boot_args_for(crate::ConsoleDevice::Virtio),
            "console=hvc0 reboot=k panic=-1"
        );
        boot.boot_args = Some("quiet".to_string());
        assert_eq!(boot.boot_args_for(crate::ConsoleDevice::Virtio), "quiet");
    }

    #[test]
    fn validation_names_the_field() {
        let mut boot = BootSource::new("");
        assert_eq!(boot.validate(), Err(BootSourceError::EmptyKernelPath));
        boot.kernel_image_path = "vmlinux".into();
        assert_eq!(boot.validate(), Ok(()));
        assert_eq!(boot.effective_boot_args(), DEFAULT_BOOT_ARGS);
        boot.boot_args = Some("x".repeat(MAX_BOOT_ARGS_LEN + 1));
        assert_eq!(
            boot.validate(),
            Err(BootSourceError::BootArgsTooLong(MAX_BOOT_ARGS_LEN + 1))
        );
        boot.boot_args = Some("a\0b".into());
        assert_eq!(boot.validate(), Err(BootSourceError::BootArgsNul));
        boot.boot_args = None;
        boot.initrd_path = Some("".into());
        assert_eq!(boot.validate(), Err(BootSourceError::EmptyInitrdPath));
    }
}
