//! The KVM backend: [`Kvm`] (the `/dev/kvm` system handle), [`KvmVm`] and
//! [`KvmVcpu`]. This is the only place sie speaks KVM.
//!
//! ```no_run
//! use sie_hv::{Hypervisor, kvm::Kvm};
//!
//! let kvm = Kvm::open()?;
//! let vm = kvm.create_vm()?;
//! let vcpu = vm.create_vcpu(0)?;
//! # let _ = vcpu;
//! # Ok::<(), sie_hv::HvError>(())
//! ```

mod convert;
mod device_memory;
pub mod kick;
mod memory;
mod routing;
mod run_area;
pub(crate) mod state;
mod vcpu;
mod vm;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use kvm_bindings::{KVM_API_VERSION, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Cap;

pub use kick::kick_signal;
pub use routing::FIRST_MSI_GSI;
pub use vcpu::KvmVcpu;
pub use vm::KvmVm;

use crate::x86::CpuidEntry;
use crate::{HvError, Hypervisor, Result, Vm};

/// The default KVM device node.
pub const KVM_PATH: &str = "/dev/kvm";

/// Capabilities sie cannot work without, with the names reports use.
/// SET_IDENTITY_MAP_ADDR is here because `create_platform` always sets it.
pub const REQUIRED_CAPS: [(Cap, &str); 8] = [
    (Cap::Irqchip, "IRQCHIP"),
    (Cap::Ioeventfd, "IOEVENTFD"),
    (Cap::Irqfd, "IRQFD"),
    (Cap::UserMemory, "USER_MEMORY"),
    (Cap::SetTssAddr, "SET_TSS_ADDR"),
    (Cap::SetIdentityMapAddr, "SET_IDENTITY_MAP_ADDR"),
    (Cap::Pit2, "PIT2"),
    (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
];

/// Maps a kvm-ioctls error to [`HvError::Call`] naming the operation.
pub(crate) fn call(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HvError {
    move |error| HvError::Call {
        op,
        source: error.into(),
    }
}

/// Maps an I/O error to [`HvError::Call`] naming the operation.
pub(crate) fn io_call(op: &'static str) -> impl FnOnce(io::Error) -> HvError {
    move |source| HvError::Call { op, source }
}

/// An open KVM system device.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    /// Bytes to map of each vCPU file (`KVM_GET_VCPU_MMAP_SIZE`).
    run_size: usize,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks it is a KVM sie can use.
    pub fn open() -> Result<Kvm> {
        Kvm::open_path(KVM_PATH)
    }

    /// Opens the KVM device at `path`, checks the API version is 12 and
    /// every capability in [`REQUIRED_CAPS`] is present.
    pub fn open_path(path: impl AsRef<Path>) -> Result<Kvm> {
        let path = path.as_ref();
        let open_error = |source| HvError::Open {
            path: path.display().to_string(),
            source,
        };
        let c_path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| open_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let kvm = kvm_ioctls::Kvm::new_with_path(&c_path).map_err(|e| open_error(e.into()))?;
        let version = kvm.get_api_version();
        if u32::try_from(version) != Ok(KVM_API_VERSION) {
            return Err(HvError::ApiVersion(version));
        }
        if let Some((_, name)) = REQUIRED_CAPS
            .iter()
            .find(|(cap, _)| !kvm.check_extension(*cap))
        {
            return Err(HvError::MissingCapability(name));
        }
        let run_size = kvm
            .get_vcpu_mmap_size()
            .map_err(call("KVM_GET_VCPU_MMAP_SIZE"))?;
        Ok(Kvm { kvm, run_size })
    }

    /// The KVM API version (12 for every KVM sie accepts).
    pub fn api_version(&self) -> i32 {
        self.kvm.get_api_version()
    }

    /// Creates a VM and returns the concrete type (for KVM-only extras).
    pub fn create_kvm_vm(&self) -> Result<KvmVm> {
        let fd = self.kvm.create_vm().map_err(call("KVM_CREATE_VM"))?;
        Ok(KvmVm::new(fd, self.run_size))
    }
}

impl Hypervisor for Kvm {
    fn create_vm(&self) -> Result<Arc<dyn Vm>> {
        Ok(Arc::new(self.create_kvm_vm()?))
    }

    /// `KVM_CAP_MAX_VCPUS`, or `KVM_CAP_NR_VCPUS` where that is absent.
    fn max_vcpus(&self) -> u32 {
        u32::try_from(self.kvm.get_max_vcpus()).unwrap_or(u32::MAX)
    }

    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(call("KVM_GET_SUPPORTED_CPUID"))?;
        let mut entries: Vec<CpuidEntry> = cpuid
            .as_slice()
            .iter()
            .map(convert::cpuid_entry_from_kvm)
            .collect();
        if self.kvm.check_extension(Cap::TscDeadlineTimer) {
            offer_tsc_deadline(&mut entries);
        }
        Ok(entries)
    }

    fn has_capability(&self, cap: u32) -> bool {
        self.kvm.check_extension_raw(libc::c_ulong::from(cap)) > 0
    }

    fn supported_msrs(&self) -> Result<Vec<u32>> {
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(call("KVM_GET_MSR_INDEX_LIST"))?;
        Ok(list.as_slice().to_vec())
    }
}

/// Leaf 1 ECX bit 24: the LAPIC timer's TSC-deadline mode.
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;

/// Sets the TSC-deadline bit in leaf 1. KVM's supported list never has it
/// (the KVM API says so): the in-kernel LAPIC emulates the mode when
/// `KVM_CAP_TSC_DEADLINE_TIMER` is present, and a VMM must offer it then.
/// With it Linux arms its timer with one `IA32_TSC_DEADLINE` write, which
/// KVM handles in the kernel, instead of calibrating and programming the
/// LAPIC's one-shot counter.
fn offer_tsc_deadline(entries: &mut [CpuidEntry]) {
    for entry in entries.iter_mut().filter(|e| e.function == 1) {
        entry.ecx |= LEAF1_ECX_TSC_DEADLINE;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_is_set_in_leaf_1_only() {
        let leaf = |function| CpuidEntry {
            function,
            ..CpuidEntry::default()
        };
        let mut entries = vec![leaf(0), leaf(1), leaf(7)];
        offer_tsc_deadline(&mut entries);
        assert_eq!(entries[1].ecx, LEAF1_ECX_TSC_DEADLINE);
        assert_eq!(entries[0].ecx, 0);
        assert_eq!(entries[2].ecx, 0);
    }

    #[test]
    fn the_supported_list_offers_tsc_deadline_when_kvm_emulates_it() {
        let Ok(kvm) = Kvm::open() else {
            panic!("/dev/kvm is needed for this test");
        };
        let entries = kvm.supported_cpuid().expect("supported cpuid");
        let leaf_1 = entries.iter().find(|e| e.function == 1).expect("leaf 1");
        assert_eq!(
            leaf_1.ecx & LEAF1_ECX_TSC_DEADLINE != 0,
            kvm.kvm.check_extension(Cap::TscDeadlineTimer)
        );
    }

    #[test]
    fn missing_device_is_an_open_error_naming_the_path() {
        match Kvm::open_path("/nonexistent/kvm") {
            Err(HvError::Open { path, source }) => {
                assert_eq!(path, "/nonexistent/kvm");
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn path_with_nul_is_an_open_error() {
        assert!(matches!(
            Kvm::open_path("/dev/k\0vm"),
            Err(HvError::Open { .. })
        ));
    }

    #[test]
    fn a_non_kvm_device_is_refused() {
        // /dev/null opens but answers no KVM ioctl.
        assert!(matches!(
            Kvm::open_path("/dev/null"),
            Err(HvError::ApiVersion(_))
        ));
    }
}
