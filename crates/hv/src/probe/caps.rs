//! The KVM side of the probe: API version and the capabilities sie reports.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use kvm_ioctls::Cap;

use super::Probed;
use crate::kvm::REQUIRED_CAPS;

/// One KVM capability as the host reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapabilityReport {
    /// The name without its `KVM_CAP_` prefix.
    pub name: &'static str,
    /// Whether sie refuses to start without it.
    pub required: bool,
    /// Whether `KVM_CHECK_EXTENSION` answered non-zero.
    pub present: bool,
    /// The answer itself, for capabilities whose answer is a number
    /// (a count or a size) rather than a yes/no.
    pub value: Option<i32>,
}

/// Capabilities in report order: name, capability, whether the answer is a number.
const REPORTED: [(&str, Cap, bool); 24] = [
    ("IRQCHIP", Cap::Irqchip, false),
    ("IOEVENTFD", Cap::Ioeventfd, false),
    ("IRQFD", Cap::Irqfd, false),
    ("USER_MEMORY", Cap::UserMemory, false),
    ("SET_TSS_ADDR", Cap::SetTssAddr, false),
    ("SET_IDENTITY_MAP_ADDR", Cap::SetIdentityMapAddr, false),
    ("PIT2", Cap::Pit2, false),
    ("IMMEDIATE_EXIT", Cap::ImmediateExit, false),
    ("EXT_CPUID", Cap::ExtCpuid, false),
    ("MP_STATE", Cap::MpState, false),
    ("TSC_DEADLINE_TIMER", Cap::TscDeadlineTimer, false),
    ("SIGNAL_MSI", Cap::SignalMsi, false),
    ("IRQ_ROUTING", Cap::IrqRouting, true),
    ("SPLIT_IRQCHIP", Cap::SplitIrqchip, false),
    ("VCPU_EVENTS", Cap::VcpuEvents, false),
    ("XSAVE", Cap::Xsave, false),
    ("XCRS", Cap::Xcrs, false),
    ("ADJUST_CLOCK", Cap::AdjustClock, true),
    ("GET_TSC_KHZ", Cap::GetTscKhz, false),
    ("TSC_CONTROL", Cap::TscControl, false),
    ("DIRTY_LOG_RING", Cap::DirtyLogRing, true),
    ("MAX_VCPUS", Cap::MaxVcpus, true),
    ("NR_VCPUS", Cap::NrVcpus, true),
    ("NR_MEMSLOTS", Cap::NrMemslots, true),
];

/// What the KVM device answered.
pub(super) struct KvmAnswers {
    pub api_version: Probed<i32>,
    pub capabilities: Vec<CapabilityReport>,
}

/// Opens the KVM device at `path` and asks for its API version and
/// capabilities; both are `Unknown` with the reason when it cannot be opened.
pub(super) fn query(path: &Path) -> KvmAnswers {
    let opened = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| "path contains a NUL byte".to_owned())
        .and_then(|c_path| {
            kvm_ioctls::Kvm::new_with_path(&c_path)
                .map_err(|e| format!("cannot open: {}", std::io::Error::from(e)))
        });
    let kvm = match opened {
        Ok(kvm) => kvm,
        Err(reason) => {
            return KvmAnswers {
                api_version: Probed::Unknown(reason),
                capabilities: Vec::new(),
            };
        }
    };
    let version = kvm.get_api_version();
    let api_version = if version < 0 {
        Probed::Unknown("KVM_GET_API_VERSION failed: not a KVM device".to_owned())
    } else {
        Probed::Known(version)
    };
    let capabilities = REPORTED
        .iter()
        .map(|&(name, cap, numeric)| {
            let answer = kvm.check_extension_int(cap);
            capability(name, answer, numeric)
        })
        .collect();
    KvmAnswers {
        api_version,
        capabilities,
    }
}

/// Builds one report line from `KVM_CHECK_EXTENSION`'s answer (negative on
/// error, which counts as absent).
fn capability(name: &'static str, answer: i32, numeric: bool) -> CapabilityReport {
    CapabilityReport {
        name,
        required: REQUIRED_CAPS.iter().any(|(_, required)| *required == name),
        present: answer > 0,
        value: (numeric && answer > 0).then_some(answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_required_capability_is_reported() {
        for (_, name) in REQUIRED_CAPS {
            assert!(REPORTED.iter().any(|(n, _, _)| *n == name), "{name}");
        }
    }

    #[test]
    fn capability_lines_mark_required_and_numeric_answers() {
        let irqchip = capability("IRQCHIP", 1, false);
        assert!(irqchip.required && irqchip.present && irqchip.value.is_none());
        let vcpus = capability("MAX_VCPUS", 1024, true);
        assert!(!vcpus.required && vcpus.present);
        assert_eq!(vcpus.value, Some(1024));
        let missing = capability("DIRTY_LOG_RING", 0, true);
        assert!(!missing.present && missing.value.is_none());
        assert!(!capability("XSAVE", -1, false).present);
    }

    #[test]
    fn unopenable_device_gives_unknown_with_reason() {
        let answers = query(Path::new("/nonexistent/kvm"));
        assert!(matches!(answers.api_version, Probed::Unknown(ref r) if r.contains("cannot open")));
        assert!(answers.capabilities.is_empty());
    }
}
