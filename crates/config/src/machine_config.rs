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
    /// Turn on KVM's dirty page log, for Diff snapshots (live migration
    /// turns it on by itself for its own duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages backing guest memory: "None", "2M" (hugetlb) or
    /// "Transparent" (transparent huge pages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<String>,
    /// Firecracker's static CPU template: "None", "T2", "T2S", "C3" (Intel
    /// hosts) or "T2A" (AMD hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// sie: show the guest VMX (Intel) or SVM (AMD) so it can run VMs of its
    /// own; needs a host KVM that allows nesting. Hidden when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<bool>,
    /// A Unix socket where sie waits for gdb before the guest's first
    /// instruction (Firecracker offers it in a special build; sie always).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdb_socket_path: Option<String>,
    /// sie: guest RAM in shared memory (a memfd) that a same-host
    /// migration (`"local": true`) hands to the next sie instead of
    /// copying. Base pages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_memory: Option<bool>,
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
            nested: None,
            gdb_socket_path: None,
            shared_memory: None,
        }
    }
}

/// Firecracker's static CPU templates that sie offers (their CPUID masks
/// are in `sie_arch::cpuid::template`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuTemplate {
    /// Intel: close to an AWS T2 instance.
    T2,
    /// Intel: T2, further restricted for Skylake/Cascade Lake snapshots.
    T2S,
    /// Intel: close to an AWS C3 instance.
    C3,
    /// AMD: Milan, with the instruction sets of Intel's T2CL.
    T2A,
}

impl CpuTemplate {
    /// The template named `name` (Firecracker's spelling).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "T2" => CpuTemplate::T2,
            "T2S" => CpuTemplate::T2S,
            "C3" => CpuTemplate::C3,
            "T2A" => CpuTemplate::T2A,
            _ => return None,
        })
    }

    /// Firecracker's name for it.
    pub fn name(self) -> &'static str {
        match self {
            CpuTemplate::T2 => "T2",
            CpuTemplate::T2S => "T2S",
            CpuTemplate::C3 => "C3",
            CpuTemplate::T2A => "T2A",
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
    /// SMT requested: sie's CPU topology is one thread per core, and the
    /// reason names what the host says about its own SMT.
    #[error(
        "machine-config: smt is not supported: sie gives each vCPU a core of its own; {0} (set smt to false)"
    )]
    Smt(String),
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
    /// An unknown CPU template.
    #[error(
        "machine-config: cpu_template {0:?} is not a template sie offers (use \"None\", \"T2\", \"T2S\", \"C3\" or \"T2A\", or a custom template through cpu-config)"
    )]
    CpuTemplate(String),
    /// Firecracker's aarch64 template.
    #[error("machine-config: cpu_template \"V1N1\" is for aarch64 hosts; sie runs x86_64 guests")]
    CpuTemplateAarch64,
    /// T2CL needs a Cascade Lake host check sie does not make.
    #[error(
        "machine-config: cpu_template \"T2CL\" is not offered by sie (it needs Intel Cascade Lake or newer); use \"T2S\" or a custom template through cpu-config"
    )]
    CpuTemplateT2cl,
    /// Shared memory is a memfd of base pages.
    #[error(
        "machine-config: shared_memory is for base pages only (drop huge_pages or shared_memory)"
    )]
    SharedHugePages,
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

    /// The static CPU template a validated configuration names, if any.
    pub fn cpu_template(&self) -> Option<CpuTemplate> {
        self.cpu_template
            .as_deref()
            .and_then(CpuTemplate::from_name)
    }

    /// Whether the guest is to see VMX/SVM.
    pub fn nested(&self) -> bool {
        self.nested == Some(true)
    }

    /// Whether guest RAM is shared memory (a memfd).
    pub fn shared_memory(&self) -> bool {
        self.shared_memory == Some(true)
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
            return Err(MachineConfigError::Smt(host_smt()));
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
        if self.shared_memory() && self.huge_pages() != crate::HugePages::None {
            return Err(MachineConfigError::SharedHugePages);
        }
        match self.cpu_template.as_deref() {
            None | Some("None") => {}
            Some("V1N1") => return Err(MachineConfigError::CpuTemplateAarch64),
            Some("T2CL") => return Err(MachineConfigError::CpuTemplateT2cl),
            Some(name) if CpuTemplate::from_name(name).is_some() => {}
            Some(other) => return Err(MachineConfigError::CpuTemplate(other.to_string())),
        }
        if self.gdb_socket_path.as_deref() == Some("") {
            return Err(MachineConfigError::GdbSocketPath);
        }
        Ok(())
    }
}

/// What the host's kernel says about SMT
/// (`/sys/devices/system/cpu/smt/control`), for the refusal of `smt: true`.
fn host_smt() -> String {
    match std::fs::read_to_string("/sys/devices/system/cpu/smt/control") {
        Ok(state) => match state.trim() {
            "on" => "the host runs SMT, but sie does not present sibling threads to a guest".into(),
            "notsupported" => "this host's CPU has no SMT to mirror".into(),
            "notimplemented" => "this host's kernel has no SMT control".into(),
            other => format!("SMT on this host is {other:?}"),
        },
        Err(_) => "the host does not say whether it has SMT".into(),
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
    fn shared_memory_is_read_and_refused_with_huge_pages() {
        let config: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count": 1, "mem_size_mib": 64, "shared_memory": true}"#)
                .unwrap();
        assert!(config.shared_memory());
        assert_eq!(config.validate(), Ok(()));
        assert!(!MachineConfig::default().shared_memory());
        let huge = MachineConfig {
            huge_pages: Some("2M".into()),
            ..config
        };
        assert_eq!(huge.validate(), Err(MachineConfigError::SharedHugePages));
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
        let smt = bad(|c| c.smt = Some(true));
        assert!(
            smt.contains("smt is not supported: sie gives each vCPU a core of its own;"),
            "{smt}"
        );
        assert!(bad(|c| c.huge_pages = Some("1G".into())).contains("huge_pages"));
        assert!(
            bad(|c| {
                c.huge_pages = Some("2M".into());
                c.mem_size_mib = 129;
            })
            .contains("multiple of 2")
        );
        assert!(bad(|c| c.cpu_template = Some("T3".into())).contains("cpu_template \"T3\""));
        assert!(bad(|c| c.cpu_template = Some("V1N1".into())).contains("aarch64"));
        assert!(bad(|c| c.cpu_template = Some("T2CL".into())).contains("T2CL"));
        assert!(bad(|c| c.gdb_socket_path = Some(String::new())).contains("gdb_socket_path"));
    }

    #[test]
    fn static_templates_and_nested_are_read() {
        for name in ["T2", "T2S", "C3", "T2A"] {
            let config = MachineConfig {
                cpu_template: Some(name.into()),
                ..MachineConfig::default()
            };
            assert_eq!(config.validate(), Ok(()));
            assert_eq!(config.cpu_template().map(CpuTemplate::name), Some(name));
        }
        let none = MachineConfig {
            cpu_template: Some("None".into()),
            ..MachineConfig::default()
        };
        assert_eq!(none.cpu_template(), None);
        let config: MachineConfig =
            serde_json::from_str(r#"{"vcpu_count": 1, "mem_size_mib": 64, "nested": true}"#)
                .unwrap();
        assert!(config.nested());
        assert!(!MachineConfig::default().nested());
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
