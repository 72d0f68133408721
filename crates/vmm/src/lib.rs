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
pub mod device_manager;
pub mod dispatch;
mod error;
mod event_loop;
mod outcome;
pub mod platform;
pub mod teardown;
#[cfg(test)]
mod test_doubles;
pub mod vcpu;
pub mod virtio;

use std::sync::Arc;

pub use builder::{BuildOptions, BuiltVm, MAX_VCPUS, build};
pub use console::{ConsoleOutput, TerminalGuard, terminal::restore_terminal};
pub use control::VmControl;
pub use error::{Result, VmmError, error_chain};
pub use event_loop::block_stop_signals;
pub use outcome::{CrashReport, EXIT_GUEST_PANIC, EXIT_VCPU_CRASH, VmOutcome};
pub use platform::{ExtraDevice, PlatformDevices};
use sie_obs::Observatory;
pub use vcpu::{PauseError, VcpuSet};

/// Runs the VM `config` describes from boot to its end, with no API: what
/// `sie run`, `sie doctor` and the benchmarks do. The same controller as
/// the API serves it ([`controller::serve`] with no requests), so the
/// config file's `logger` section needs a [`controller::LoggerControl`]:
/// use `serve` directly for that.
pub fn run(
    hv: &dyn sie_hv::Hypervisor,
    config: sie_config::VmConfig,
    build: BuildOptions,
    console_input: bool,
) -> Result<FinishedVm> {
    let options = controller::ServeOptions::without_api(config, build, console_input);
    match controller::serve(hv, &mut controller::NoRequests::new()?, options)? {
        controller::Served::Finished(finished) => Ok(finished),
        // The VM is started before the first event is served; only a
        // failed build (an error above) leaves it unstarted.
        controller::Served::NeverStarted(_) => Err(VmmError::Platform(
            "the VM was stopped before it started".into(),
        )),
    }
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

/// What metrics and `/stats` read of a VM, running or ended.
#[derive(Clone, Copy)]
pub struct VmFigures<'a> {
    /// Exit and device statistics.
    pub observatory: &'a Observatory,
    /// Paravirtual devices' counters.
    pub virtio: &'a [virtio::VirtioStats],
}

impl FinishedVm {
    /// Its figures, for a last metrics line.
    pub fn figures(&self) -> VmFigures<'_> {
        VmFigures {
            observatory: &self.observatory,
            virtio: &self.virtio,
        }
    }

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
    /// Starts a thread per vCPU. The caller serves the VM's events until
    /// [`VmControl::is_stopping`], then calls [`StartedVm::join`]. Stop
    /// signals must already be blocked (the vCPU threads inherit the mask).
    /// Each vCPU thread installs `seccomp`'s vCPU filter before it enters
    /// the guest.
    pub fn start(self, seccomp: &sie_seccomp::Seccomp) -> Result<StartedVm> {
        let vcpus = VcpuSet::spawn(self.vcpus, self.exits, self.control.clone(), seccomp).map_err(
            |source| VmmError::Host {
                what: "starting vCPU threads",
                source,
            },
        )?;
        Ok(StartedVm {
            vcpus,
            control: self.control,
            observatory: self.observatory,
            devices: self.devices,
            virtio: self.virtio,
            vm: self.vm,
            memory: self.memory,
        })
    }
}

/// A VM whose vCPU threads run.
pub struct StartedVm {
    /// The vCPUs: pause, resume, register access.
    pub vcpus: VcpuSet,
    /// Stop and outcome.
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
    /// Its live figures.
    pub fn figures(&self) -> VmFigures<'_> {
        VmFigures {
            observatory: &self.observatory,
            virtio: &self.virtio.stats,
        }
    }

    /// Stops every vCPU (the VM's control should say why first) and returns
    /// how the VM ended.
    pub fn join(mut self) -> FinishedVm {
        self.vcpus.exit_all();
        self.vcpus.join();
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
