//! Builds and runs a VM.
//!
//! `build` turns one validated [`sie_config::VmConfig`] into a [`BuiltVm`];
//! [`BuiltVm::run`] starts a thread per vCPU, serves the console and signals
//! on the calling thread, and returns how the VM ended together with its
//! exit statistics. Every VM exit passes through one dispatch function
//! ([`dispatch::ExitContext::dispatch`]), where it is routed and counted.
//!
//! ```no_run
//! use std::time::Instant;
//! use sie_hv::kvm::Kvm;
//! use sie_vmm::{BuildOptions, ConsoleOutput, RunOptions, build};
//!
//! let config = sie_config::VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "vmlinux"}}"#)?;
//! let kvm = Kvm::open()?;
//! let options = BuildOptions { start: Instant::now(), console: ConsoleOutput::stdout(), extra_pio: Vec::new(), host_decompress: None };
//! let vm = build(&config, &kvm, options)?;
//! let finished = vm.run(RunOptions { console_input: true })?;
//! std::process::exit(finished.outcome.exit_code());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod bare;
mod builder;
pub mod console;
mod control;
pub mod controller;
pub mod dispatch;
mod error;
mod event_loop;
mod outcome;
pub mod platform;
pub mod teardown;
mod vcpu;
pub mod virtio;

use std::sync::Arc;

pub use builder::{BuildOptions, BuiltVm, MAX_VCPUS, build, build_with_control};
pub use console::{ConsoleOutput, TerminalGuard, terminal::restore_terminal};
pub use control::{PauseError, VmControl};
pub use error::{Result, VmmError};
pub use event_loop::block_stop_signals;
pub use outcome::{CrashReport, EXIT_GUEST_PANIC, EXIT_VCPU_CRASH, VmOutcome};
pub use platform::{ExtraDevice, PlatformDevices};
use sie_obs::Observatory;

/// Choices for running a built VM.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    /// Forward stdin to the guest's COM1 (and put a terminal in raw mode).
    pub console_input: bool,
}

/// A VM that has ended. Dropping it destroys the VM in the kernel; see
/// [`FinishedVm::exit_fast`] to have that done off the exit path.
pub struct FinishedVm {
    /// How it ended.
    pub outcome: VmOutcome,
    /// Its exit statistics.
    pub observatory: Arc<Observatory>,
    /// Its paravirtual devices' counters.
    pub virtio: Vec<virtio::VirtioStats>,
    vm: Arc<dyn sie_hv::Vm>,
    memory: vm_memory::GuestMemoryMmap,
}

impl FinishedVm {
    /// The `--stats` text: the observatory's report, then each virtio
    /// device's counters.
    pub fn stats_text(&self) -> String {
        let mut text = self.observatory.report().to_string();
        if !self.virtio.is_empty() {
            text.push_str("\nvirtio devices\n");
            for device in &self.virtio {
                text.push_str(&format!("  {}\n   ", device.name));
                for (name, value) in (device.read)().fields() {
                    text.push_str(&format!(" {name}={value}"));
                }
                text.push('\n');
            }
        }
        text
    }
}

impl FinishedVm {
    /// Hands the kernel-side teardown of the VM to a reaper process (see
    /// [`teardown`]) so that this process can exit at once. Only for a
    /// process that is about to exit and runs no other threads.
    pub fn exit_fast(self) {
        teardown::hand_teardown_to_reaper();
        drop(self.vm);
        drop(self.memory);
    }
}

impl BuiltVm {
    /// Runs the VM until the guest resets, crashes or panics, or sie gets a
    /// stop signal.
    pub fn run(self, options: RunOptions) -> Result<FinishedVm> {
        let signals = event_loop::block_stop_signals().map_err(|source| VmmError::Host {
            what: "blocking stop signals",
            source,
        })?;
        let input = options
            .console_input
            .then(|| self.devices.console_input())
            .flatten();
        let _terminal = input.as_ref().and_then(|_| TerminalGuard::raw_stdin());
        let mut started = self.start()?;
        let workers = std::mem::take(&mut started.virtio.workers);
        let served = event_loop::run_until_stopped(
            &started.control,
            Some(signals),
            input,
            workers,
            &started.devices.console,
        );
        let finished = started.join();
        served.map_err(|source| VmmError::Host {
            what: "serving VM events",
            source,
        })?;
        Ok(finished)
    }

    /// Starts a thread per vCPU. The caller serves the VM's events until
    /// [`VmControl::is_stopping`], then calls [`StartedVm::join`]. Stop
    /// signals must already be blocked (the vCPU threads inherit the mask).
    pub fn start(self) -> Result<StartedVm> {
        let handles = vcpu::spawn_vcpus(self.vcpus, self.exits.clone(), self.control.clone())
            .map_err(|source| VmmError::Host {
                what: "starting vCPU threads",
                source,
            })?;
        Ok(StartedVm {
            handles,
            control: self.control,
            observatory: self.exits.obs.clone(),
            devices: self.devices,
            virtio: self.virtio,
            vm: self.vm,
            memory: self.memory,
        })
    }
}

/// A VM whose vCPU threads run.
pub struct StartedVm {
    handles: Vec<std::thread::JoinHandle<()>>,
    /// Stop, pause and outcome.
    pub control: Arc<VmControl>,
    /// Exit statistics, live.
    pub observatory: Arc<Observatory>,
    /// Devices the event loop and the API reach.
    pub devices: PlatformDevices,
    /// Paravirtual devices (their workers are taken by the event loop).
    pub virtio: virtio::VirtioDevices,
    vm: Arc<dyn sie_hv::Vm>,
    memory: vm_memory::GuestMemoryMmap,
}

impl StartedVm {
    /// Waits for the vCPU threads (stop the VM through its control first)
    /// and returns how it ended.
    pub fn join(self) -> FinishedVm {
        for handle in self.handles {
            // A vCPU thread that panicked has nothing to return; the VM is
            // over either way.
            let _ = handle.join();
        }
        self.devices.console.flush_pending();
        let outcome = self.control.outcome().unwrap_or(VmOutcome::Shutdown);
        FinishedVm {
            outcome,
            observatory: self.observatory,
            virtio: self.virtio.stats,
            vm: self.vm,
            memory: self.memory,
        }
    }
}
