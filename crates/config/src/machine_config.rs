//! `machine-config`: vCPUs and memory.

use serde::{Deserialize, Serialize};

/// sie's own vCPU limit (8-bit xAPIC ids in the MADT it writes); the VMM
/// also checks KVM's limit on the host.
pub const MAX_VCPUS_SIE: u8 = 254;

/// Largest guest memory sie accepts in a configuration, in MiB: 4 PiB, the
/// x86-64 physical address space (52 bits). Whether the host can map it is
/// checked when the VM is built.
pub const MAX_MEM_SIZE_MIB: u64 = 1 << 32;

/// Firecracker's `machine-config` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading; sie only offers `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Track dirty pages (for diff snapshots); sie only offers `false`
    /// until it has snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages backing guest memory: "None", "2M" (hugetlb) or
    /// "Transparent" (transparent huge pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// CPU template; sie only accepts "None".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// A Unix socket where sie waits for gdb before the guest's first
    /// instruction (Firecracker offers it in a special build; sie always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdb_socket_path: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
            huge_pages: None,
            cpu_template: None,
            gdb_socket_path: None,
        }
    }
}

/// Why a machine configuration is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MachineConfigError {
    /// vcpu_count out of range.
    #[error("machine-config: vcpu_count {0} is out of range 1..={MAX_VCPUS_SIE}")]
    VcpuCount(u8),
    /// mem_size_mib out of range.
    #[error("machine-config: mem_size_mib {0} is out of range 1..={MAX_MEM_SIZE_MIB}")]
    MemSize(u64),
    /// SMT requested.
    #[error("machine-config: smt is not supported")]
    Smt,
    /// Unknown huge page size.
    #[error(
        "machine-config: huge_pages {0:?} is not supported (use \"None\", \"2M\" or \"Transparent\")"
    )]
    HugePages(String),
    /// Huge pages for memory that is not a whole number of them.
    #[error(
        "machine-config: huge_pages {0:?} needs mem_size_mib to be a multiple of 2 (2 MiB pages)"
    )]
    HugePagesSize(String),
    /// A CPU template was requested.
    #[error("machine-config: cpu_template {0:?} is not supported (use \"None\")")]
    CpuTemplate(String),
    /// An empty gdb socket path.
    #[error("machine-config: gdb_socket_path is empty")]
    GdbSocketPath,
}

impl MachineConfig {
    /// What backs guest memory (a validated configuration's `huge_pages`).
    pub fn huge_pages(&self) -> crate::HugePages {
        match self.huge_pages.as_deref() {
            Some("2M") => crate::HugePages::TwoMiB,
            Some("Transparent") => crate::HugePages::Transparent,
            _ => crate::HugePages::None,
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), MachineConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS_SIE {
            return Err(MachineConfigError::VcpuCount(self.vcpu_count));
        }
        if self.mem_size_mib == 0 || self.mem_size_mib > MAX_MEM_SIZE_MIB {
            return Err(MachineConfigError::MemSize(self.mem_size_mib));
        }
        if self.smt == Some(true) {
            return Err(MachineConfigError::Smt);
        }
        match self.huge_pages.as_deref() {
            None | Some("None") => {}
            Some(pages @ ("2M" | "Transparent")) => {
                if !self.mem_size_mib.is_multiple_of(2) {
                    return Err(MachineConfigError::HugePagesSize(pages.to_string()));
                }
            }
            Some(other) => return Err(MachineConfigError::HugePages(other.to_string())),
        }
        if let Some(template) = self.cpu_template.as_ref().filter(|t| *t != "None") {
            return Err(MachineConfigError::CpuTemplate(template.clone()));
        }
        if self.gdb_socket_path.as_deref() == Some("") {
            return Err(MachineConfigError::GdbSocketPath);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_one_vcpu_and_128_mib_and_valid() {
        let config = MachineConfig::default();
        assert_eq!((config.vcpu_count, config.mem_size_mib), (1, 128));
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn huge_pages_name_the_backing() {
        for (word, pages) in [
            (None, crate::HugePages::None),
            (Some("None"), crate::HugePages::None),
            (Some("2M"), crate::HugePages::TwoMiB),
            (Some("Transparent"), crate::HugePages::Transparent),
        ] {
            let config = MachineConfig {
                huge_pages: word.map(str::to_string),
                ..MachineConfig::default()
            };
            assert_eq!(config.validate(), Ok(()));
            assert_eq!(config.huge_pages(), pages);
        }
    }

    #[test]
    fn track_dirty_pages_is_accepted() {
        for track in [None, Some(false), Some(true)] {
            let config = MachineConfig {
                track_dirty_pages: track,
                ..MachineConfig::default()
            };
            assert_eq!(config.validate(), Ok(()));
        }
    }

    #[test]
    fn out_of_range_values_are_named() {
        let bad = |f: fn(&mut MachineConfig)| {
            let mut config = MachineConfig::default();
            f(&mut config);
            config.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.vcpu_count = 0).contains("vcpu_count 0"));
        assert!(bad(|c| c.vcpu_count = 255).contains("vcpu_count 255"));
        assert!(bad(|c| c.mem_size_mib = 0).contains("mem_size_mib 0"));
        assert!(bad(|c| c.mem_size_mib = MAX_MEM_SIZE_MIB + 1).contains("mem_size_mib"));
        assert!(bad(|c| c.smt = Some(true)).contains("smt"));
        assert!(bad(|c| c.huge_pages = Some("1G".into())).contains("huge_pages"));
        assert!(
            bad(|c| {
                c.huge_pages = Some("2M".into());
                c.mem_size_mib = 129;
            })
            .contains("multiple of 2")
        );
        assert!(bad(|c| c.cpu_template = Some("T2".into())).contains("cpu_template"));
        assert!(bad(|c| c.gdb_socket_path = Some(String::new())).contains("gdb_socket_path"));
    }

    #[test]
    fn gdb_socket_path_is_read_from_json() {
        let config: MachineConfig = serde_json::from_str(
            r#"{"vcpu_count": 1, "mem_size_mib": 64, "gdb_socket_path": "/tmp/g.sock"}"#,
        )
        .unwrap();
        assert_eq!(config.gdb_socket_path.as_deref(), Some("/tmp/g.sock"));
        assert_eq!(config.validate(), Ok(()));
    }
}
