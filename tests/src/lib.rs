//! The end-to-end rig: real Linux guests booted by sie.
//!
//! On a host without hardware virtualization (a software KVM such as
//! kvm_pvm) Linux cannot run under sie directly, so the rig boots a Debian
//! kernel as L1 in QEMU (TCG, `-cpu max`, which emulates AMD-V with nested
//! paging), loads kvm-amd there, and runs sie inside L1 to boot each L2 case.
//! L1 boots once per test run and runs every case in turn; its console is
//! split per case by markers and each case is checked on its own. On a host
//! with VT-x/AMD-V, the same case scripts run directly ([`run_direct`]),
//! finding the same tools on PATH and the same files under `$GUEST`.
//!
//! Images are built by `scripts/rig/build-images` (see tests/README.md).

mod case;
mod deadline;
mod direct;
mod qemu;

pub use case::{Case, CaseRun, l2_boot_args};
pub use direct::{CASE_LIMIT, Layout, hardware_virtualization, run_direct};
pub use qemu::{Rig, RigRun, case_times, run_cases};
