//! A guest bench's guest booted by a peer VMM beside sie's boots: one that
//! takes Firecracker's command line (`PATH --no-api --config-file FILE
//! --log-path /dev/null`, `--enable-pci` for virtio-PCI), e.g. a
//! `firecracker` binary. Its console is its stdout, where the guest prints
//! the same `@@BENCH` lines as under sie.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{BoxError, finish_child};

/// What the peer boots.
pub struct PeerGuest<'a> {
    /// The peer VMM's binary.
    pub program: &'a Path,
    /// Guest kernel (a vmlinux: Firecracker boots ELF kernels).
    pub kernel: &'a Path,
    /// The initrd whose /init runs the guest side.
    pub initrd: &'a Path,
    /// The guest's command line, as sie's guest gets it.
    pub cmdline: String,
    /// Guest memory, MiB.
    pub memory_mib: u64,
    /// Over virtio-PCI (`--enable-pci`) rather than virtio-MMIO.
    pub pci: bool,
}

impl PeerGuest<'_> {
    /// The peer's config file: the boot source, one vCPU and the memory,
    /// and `drives` (Firecracker requires the list, empty or not).
    pub fn config(&self, drives: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "boot-source": {
                "kernel_image_path": self.kernel,
                "initrd_path": self.initrd,
                "boot_args": self.cmdline,
            },
            "drives": drives,
            "machine-config": {"vcpu_count": 1, "mem_size_mib": self.memory_mib},
        })
    }

    /// Boots the guest with `drives`, the config file in `dir`, and waits
    /// for the peer to exit; its console, or an error with its last lines
    /// when it failed.
    pub fn boot(&self, drives: serde_json::Value, dir: &Path) -> Result<String, BoxError> {
        let config = dir.join("peer.json");
        std::fs::write(&config, self.config(drives).to_string())?;
        let mut command = Command::new(self.program);
        command
            .arg("--no-api")
            .arg("--config-file")
            .arg(&config)
            .args(["--log-path", "/dev/null"]);
        if self.pci {
            command.arg("--enable-pci");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program.display()))?;
        finish_child(child, &self.program.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_boots_the_same_guest_with_its_drives() {
        let guest = PeerGuest {
            program: Path::new("/bin/false"),
            kernel: Path::new("/k/vmlinux"),
            initrd: Path::new("/k/l2.cpio"),
            cmdline: "console=ttyS0 case=bench_blk".into(),
            memory_mib: 256,
            pci: false,
        };
        let config = guest.config(serde_json::json!([{"drive_id": "d"}]));
        assert_eq!(config["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(config["boot-source"]["initrd_path"], "/k/l2.cpio");
        assert_eq!(
            config["boot-source"]["boot_args"],
            "console=ttyS0 case=bench_blk"
        );
        assert_eq!(config["machine-config"]["mem_size_mib"], 256);
        assert_eq!(config["drives"][0]["drive_id"], "d");
    }

    #[test]
    fn a_peer_that_fails_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("sie-peer-guest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let guest = PeerGuest {
            program: Path::new("/bin/false"),
            kernel: Path::new("/k/vmlinux"),
            initrd: Path::new("/k/l2.cpio"),
            cmdline: String::new(),
            memory_mib: 1,
            pci: true,
        };
        let error = guest.boot(serde_json::json!([]), &dir).unwrap_err();
        assert!(
            error.to_string().starts_with("/bin/false failed"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
