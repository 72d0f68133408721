//! Builds and runs a VM.
//!
//! [`build`] turns one validated [`sie_config::VmConfig`] into a [`BuiltVm`];
//! [`controller::serve`] is the one way a VM is served: it starts a thread
//! per vCPU ([`vcpu::VcpuSet`], each a small state machine), serves the
//! console, signals, metrics and requests (from the API, or none for
//! `sie run`) on the calling thread, and returns how the VM ended together
//! with its exit statistics. Every VM exit passes through one dispatch
//! function ([`dispatch::ExitContext::run_once`]), where it is routed,
//! counted and timed.
//!
//! ```no_run
//! use std::time::Instant;
//! use sie_hv::kvm::Kvm;
//! use sie_vmm::BuildOptions;
//!
//! let config = sie_config::VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#)?;
//! let kvm = Kvm::open()?;
//! let finished = sie_vmm::run(&kvm, config, BuildOptions::new(Instant::now()), true)?;
//! std::process::exit(finished.outcome.exit_code());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bare;
mod builder;
pub mod console;
mod control;
pub mod controller;
pub mod core_dump;
pub mod debug_stop;
pub mod device_manager;
pub mod dispatch;
pub mod drive_hotplug;
mod error;
mod event_loop;
pub mod gdb;
pub(crate) mod guest_cpu;
pub mod guest_memory;
pub mod hotplug;
pub mod migration;
mod outcome;
pub mod platform;
mod pmem;
pub mod process_memory;
pub mod shared_memory;
pub mod snapshot;
pub mod teardown;
#[cfg(test)]
mod test_doubles;
pub mod vcpu;
pub mod vfio;
pub mod virtio;
pub mod virtio_console;
mod vm;
pub mod vmgenid;

pub use builder::{BuildOptions, BuiltVm, MAX_VCPUS, build};
pub use console::{ConsoleOutput, TerminalGuard, terminal::restore_terminal};
pub use control::VmControl;
pub use controller::run;
pub use error::{Result, VmmError, error_chain};
pub use event_loop::block_stop_signals;
pub use outcome::{CrashReport, EXIT_GUEST_PANIC, EXIT_VCPU_CRASH, VmOutcome};
pub use platform::{ExtraDevice, PlatformDevices};
pub use vcpu::{PauseError, VcpuSet};
pub use vm::{FinishedVm, StartedVm, VmFigures};
