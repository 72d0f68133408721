//! Errors building or running a VM. Each message is one line naming the
//! problem; the source (if any) says why.

use std::path::PathBuf;

/// Why sie could not build or run the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The hypervisor could not be opened or used.
    #[error("hypervisor")]
    Hypervisor(#[source] sie_hv::HvError),
    /// A file given by the user could not be opened.
    #[error("cannot open {what} {path}")]
    OpenFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A core file could not be written.
    #[error("cannot write the core file {path}")]
    CoreDump {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file given by the user is not a regular file.
    #[error("{what} {path} is not a regular file")]
    NotAFile {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The path as given.
        path: PathBuf,
    },
    /// The vCPU count is out of range.
    #[error("--vcpus {requested} is out of range: this host allows 1 to {max}")]
    VcpuCount {
        /// What was asked.
        requested: u64,
        /// The limit here.
        max: u64,
    },
    /// Guest memory could not be laid out or mapped.
    #[error("cannot map {mib} MiB of guest memory")]
    GuestMemory {
        /// Requested size.
        mib: u64,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The guest CPU the configuration asks for cannot be had on this host.
    #[error(transparent)]
    GuestCpu(#[from] crate::guest_cpu::GuestCpuError),
    /// A host device that cannot be passed through (the message says why
    /// and how to fix it).
    #[error("vfio {id}: {source}")]
    Vfio {
        /// The device's id.
        id: String,
        /// Why.
        source: Box<sie_vfio::VfioPciError>,
    },
    /// A feature in the configuration that this version of sie lacks.
    #[error("{0} is not supported yet")]
    Unsupported(&'static str),
    /// The kernel could not be loaded.
    #[error("kernel {path}")]
    Kernel {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: sie_arch::loader::LoaderError,
    },
    /// A bzImage's payload could not be decompressed on the host.
    #[error(
        "kernel {path}: host-side decompression failed (use --no-host-decompress to let the guest try)"
    )]
    HostDecompress {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: sie_vmlinux::Error,
    },
    /// The initrd could not be loaded.
    #[error("initrd {path}")]
    Initrd {
        /// The path as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: sie_arch::loader::LoaderError,
    },
    /// A snapshot could not be restored (the message names the file and why).
    #[error("{0}")]
    Restore(String),
    /// The gdb stub could not start (boxed: the stub sits above this
    /// module, which everything imports).
    #[error("gdb stub")]
    Gdb(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Boot-time platform set-up (ACPI, boot parameters, registers) failed.
    #[error("setting up the guest platform")]
    Platform(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A device could not be created or placed.
    #[error("creating device {name}")]
    Device {
        /// Device name.
        name: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A paravirtual device could not be created (names the drive or interface).
    #[error("{name}")]
    Virtio {
        /// e.g. `drive rootfs (/path/disk.ext4)`.
        name: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A host resource (thread, eventfd, epoll) could not be had.
    #[error("{what}")]
    Host {
        /// What sie was doing.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl From<sie_hv::HvError> for VmmError {
    fn from(error: sie_hv::HvError) -> Self {
        VmmError::Hypervisor(error)
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, VmmError>;

/// An error and its causes on one line, `a: b: c`, each cause once: a
/// message that already ends with its cause's text is not repeated. The
/// one formatter for every error sie shows (the command line's last line,
/// the API's fault messages).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_one_line_without_repeats() {
        let error = VmmError::Host {
            what: "opening the metrics file",
            source: std::io::Error::other("permission denied"),
        };
        assert_eq!(
            error_chain(&error),
            "opening the metrics file: permission denied"
        );
        let transparent = VmmError::Platform("kernel command line: too long".into());
        assert_eq!(
            error_chain(&transparent),
            "setting up the guest platform: kernel command line: too long"
        );
    }
}
