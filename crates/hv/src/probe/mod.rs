//! The host-capability probe behind `sie doctor`: what this machine offers
//! for running VMs, gathered without ever failing (each item is either
//! known or unknown with a reason).
//!
//! ```no_run
//! let report = sie_hv::probe::probe_host();
//! println!("{}", report.verdict());
//! ```

mod caps;
pub mod parse;
mod sysfs;

use std::fmt;
use std::path::PathBuf;

pub use caps::CapabilityReport;

use crate::kvm::KVM_PATH;

/// One probed item: its value, or why it could not be found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probed<T> {
    /// The value found.
    Known(T),
    /// Not found out; the reason.
    Unknown(String),
}

impl<T> Probed<T> {
    /// The value, if known.
    pub fn known(&self) -> Option<&T> {
        match self {
            Probed::Known(value) => Some(value),
            Probed::Unknown(_) => None,
        }
    }
}

impl Probed<bool> {
    /// True only when known to be true.
    pub fn is_true(&self) -> bool {
        self.known() == Some(&true)
    }
}

/// The kernel module that implements `/dev/kvm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Intel VT-x.
    KvmIntel,
    /// AMD-V (SVM).
    KvmAmd,
    /// PVM: software virtualization without VT-x/AMD-V; small guests only.
    KvmPvm,
    /// KVM is loaded but with no vendor module sie knows (the name found).
    Other(String),
    /// No KVM module is loaded.
    None,
}

impl Backend {
    /// The module's directory name under `/sys/module`.
    pub fn module(&self) -> Option<&str> {
        match self {
            Backend::KvmIntel => Some("kvm_intel"),
            Backend::KvmAmd => Some("kvm_amd"),
            Backend::KvmPvm => Some("kvm_pvm"),
            Backend::Other(name) => Some(name),
            Backend::None => None,
        }
    }
}

/// One huge page pool (`/sys/kernel/mm/hugepages/hugepages-<size>kB`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HugePagePool {
    /// Page size in KiB.
    pub size_kib: u64,
    /// Pages reserved (`nr_hugepages`).
    pub total: Probed<u64>,
    /// Pages still free (`free_hugepages`).
    pub free: Probed<u64>,
}

/// Where the probe looks; tests point these at a synthetic tree.
#[derive(Clone, Debug)]
pub struct HostPaths {
    /// The KVM device node.
    pub kvm_device: PathBuf,
    /// `/proc/cpuinfo`.
    pub cpuinfo: PathBuf,
    /// `/sys/module`.
    pub sys_module: PathBuf,
    /// `/sys/kernel/mm/hugepages`.
    pub hugepages: PathBuf,
    /// `/sys/kernel/mm/transparent_hugepage/enabled`.
    pub thp_enabled: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            kvm_device: PathBuf::from(KVM_PATH),
            cpuinfo: PathBuf::from("/proc/cpuinfo"),
            sys_module: PathBuf::from("/sys/module"),
            hugepages: PathBuf::from("/sys/kernel/mm/hugepages"),
            thp_enabled: PathBuf::from("/sys/kernel/mm/transparent_hugepage/enabled"),
        }
    }
}

/// Everything `sie doctor` reports about the host.
#[derive(Clone, Debug)]
pub struct HostReport {
    /// The KVM device node probed.
    pub kvm_device: PathBuf,
    /// Whether it opens read-write (the error when not).
    pub device_access: Probed<()>,
    /// `KVM_GET_API_VERSION` (sie needs 12).
    pub api_version: Probed<i32>,
    /// The module serving `/dev/kvm`.
    pub backend: Backend,
    /// Every KVM vendor module loaded.
    pub loaded_backends: Vec<Backend>,
    /// The CPU has (and shows) Intel VT-x.
    pub cpu_vmx: Probed<bool>,
    /// The CPU has (and shows) AMD-V.
    pub cpu_svm: Probed<bool>,
    /// kvm_intel's extended page tables.
    pub ept: Probed<bool>,
    /// kvm_amd's nested page tables.
    pub npt: Probed<bool>,
    /// kvm_intel's VPID (tagged TLB).
    pub vpid: Probed<bool>,
    /// kvm_intel's unrestricted guest (real mode without emulation).
    pub unrestricted_guest: Probed<bool>,
    /// Nested virtualization in kvm_intel or kvm_amd.
    pub nested: Probed<bool>,
    /// KVM capabilities, required ones marked.
    pub capabilities: Vec<CapabilityReport>,
    /// Huge page pools.
    pub hugepages: Probed<Vec<HugePagePool>>,
    /// Transparent huge page mode.
    pub transparent_hugepage: Probed<String>,
}

/// What the host can do, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Hardware virtualization with two-dimensional paging: Linux guests at full speed.
    FullSpeed,
    /// VMs run, but without hardware virtualization (e.g. kvm_pvm): tiny guests only.
    SmallGuestsOnly,
    /// sie cannot run VMs here.
    NoVms,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::FullSpeed => "full-speed VMs (hardware virtualization with EPT/NPT)",
            Verdict::SmallGuestsOnly => {
                "small guests only (no hardware virtualization: software KVM)"
            }
            Verdict::NoVms => "sie cannot run VMs on this host",
        })
    }
}

impl HostReport {
    /// The device opens, speaks API 12 and has every capability sie requires.
    pub fn can_run_vms(&self) -> bool {
        self.device_access.known().is_some()
            && self.api_version.known() == Some(&12)
            && !self.capabilities.is_empty()
            && self
                .capabilities
                .iter()
                .all(|cap| cap.present || !cap.required)
    }

    /// Hardware virtualization with two-dimensional paging backs `/dev/kvm`:
    /// VT-x with kvm_intel and EPT, or AMD-V with kvm_amd and NPT.
    pub fn hardware_virtualization(&self) -> bool {
        let intel =
            self.cpu_vmx.is_true() && self.backend == Backend::KvmIntel && self.ept.is_true();
        let amd = self.cpu_svm.is_true() && self.backend == Backend::KvmAmd && self.npt.is_true();
        intel || amd
    }

    /// The one-word summary.
    pub fn verdict(&self) -> Verdict {
        if !self.can_run_vms() {
            Verdict::NoVms
        } else if self.hardware_virtualization() {
            Verdict::FullSpeed
        } else {
            Verdict::SmallGuestsOnly
        }
    }

    /// Required capabilities the host lacks.
    pub fn missing_required(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.capabilities
            .iter()
            .filter(|cap| cap.required && !cap.present)
            .map(|cap| cap.name)
    }
}

/// Probes this machine.
pub fn probe_host() -> HostReport {
    probe_with(&HostPaths::default())
}

/// Probes the files and device named by `paths`.
pub fn probe_with(paths: &HostPaths) -> HostReport {
    let answers = caps::query(&paths.kvm_device);
    let loaded = sysfs::loaded_backends(paths);
    let flags = sysfs::cpu_flags(paths);
    let has_flag = |name: &str| match &flags {
        Probed::Known(flags) => Probed::Known(flags.iter().any(|flag| flag == name)),
        Probed::Unknown(reason) => Probed::Unknown(reason.clone()),
    };
    HostReport {
        kvm_device: paths.kvm_device.clone(),
        device_access: sysfs::device_access(&paths.kvm_device),
        api_version: answers.api_version,
        backend: sysfs::backend(paths, &loaded),
        cpu_vmx: has_flag("vmx"),
        cpu_svm: has_flag("svm"),
        ept: sysfs::module_param(paths, "kvm_intel", "ept"),
        npt: sysfs::module_param(paths, "kvm_amd", "npt"),
        vpid: sysfs::module_param(paths, "kvm_intel", "vpid"),
        unrestricted_guest: sysfs::module_param(paths, "kvm_intel", "unrestricted_guest"),
        nested: sysfs::nested(paths),
        loaded_backends: loaded,
        capabilities: answers.capabilities,
        hugepages: sysfs::hugepages(paths),
        transparent_hugepage: sysfs::transparent_hugepage(paths),
    }
}

#[cfg(test)]
mod tests;
