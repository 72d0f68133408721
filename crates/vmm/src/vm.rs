//! A VM's life after it is built: started (vCPU threads running, devices
//! served), then finished (how it ended, with its statistics). The
//! controller and snapshots work on these.

use std::sync::Arc;

use sie_hv::GuestMemory;
use sie_obs::Observatory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::builder::BuiltVm;
use crate::control::VmControl;
use crate::core_dump::elf::VcpuRegisters;
use crate::error::{Result, VmmError};
use crate::outcome::VmOutcome;
use crate::platform::PlatformDevices;
use crate::process_memory::MemoryBreakdown;
use crate::teardown;
use crate::vcpu::VcpuSet;
use crate::virtio;

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
    memory: GuestMemory,
    memory_from_file: bool,
    /// Each vCPU's registers when it stopped.
    final_registers: Vec<Option<VcpuRegisters>>,
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
    /// Writes the ended VM's RAM and the registers each vCPU had when it
    /// stopped as an ELF core file at `path` (see [`crate::core_dump`]). A
    /// vCPU whose registers could not be read appears with zeros.
    pub fn write_core(&self, path: &std::path::Path) -> std::io::Result<u64> {
        let vcpus: Vec<VcpuRegisters> = self
            .final_registers
            .iter()
            .map(|registers| registers.unwrap_or_default())
            .collect();
        crate::core_dump::write(path, &self.memory, &vcpus, self.memory_from_file)
    }

    /// Its figures, for a last metrics line.
    pub fn figures(&self) -> VmFigures<'_> {
        VmFigures {
            observatory: &self.observatory,
            virtio: &self.virtio,
        }
    }

    /// The `--stats` text: the observatory's report, each virtio device's
    /// counters, then what sie's resident memory is made of (when
    /// [`crate::process_memory::open_smaps`] was called before seccomp).
    pub fn stats_text(&self) -> String {
        let mut text = self.observatory.report().to_string();
        if !self.virtio.is_empty() {
            text.push_str("\nvirtio devices\n");
            for device in &self.virtio {
                text.push_str(&format!("  {}\n   ", device.name));
                for (name, value) in device.fields() {
                    text.push_str(&format!(" {name}={value}"));
                }
                text.push('\n');
            }
        }
        if let Some(memory) = MemoryBreakdown::of_this_process(&self.guest_ranges()) {
            text.push_str("\nmemory\n");
            text.push_str(&memory.to_string());
        }
        text
    }

    /// The guest RAM's host ranges, (address, length in bytes).
    fn guest_ranges(&self) -> Vec<(u64, u64)> {
        self.memory
            .iter()
            .map(|region| (region.as_ptr() as u64, region.len()))
            .collect()
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
        self.start_as(false, seccomp)
    }

    /// [`BuiltVm::start`], with every vCPU `Paused` until resumed when
    /// `paused`.
    pub fn start_as(self, paused: bool, seccomp: &sie_seccomp::Seccomp) -> Result<StartedVm> {
        let mut started = self.start_unchecked(paused, seccomp)?;
        // A refused filter drops `started`, which stops and joins the vCPUs.
        started.wait_vcpu_filters()?;
        Ok(started)
    }

    /// [`BuiltVm::start_as`] without waiting for the vCPU threads' filters
    /// ([`StartedVm::wait_vcpu_filters`] does): no vCPU enters the guest
    /// before its filter is on, and the caller answers meanwhile.
    pub fn start_unchecked(
        self,
        paused: bool,
        seccomp: &sie_seccomp::Seccomp,
    ) -> Result<StartedVm> {
        self.virtio.start_workers(seccomp)?;
        let debug_stops = self.exits.debug.clone();
        let vcpus = VcpuSet::spawn_unchecked(
            self.vcpus,
            self.exits,
            self.control.clone(),
            paused,
            seccomp,
        )
        .map_err(|source| VmmError::Host {
            what: "starting vCPU threads",
            source,
        })?;
        Ok(StartedVm {
            debug_stops,
            memory_from_file: self.memory_from_file,
            vcpus,
            control: self.control,
            observatory: self.observatory,
            devices: self.devices,
            virtio: self.virtio,
            pci_hotplug: self.pci_hotplug,
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
    /// The vCPUs' debug stops, for the gdb stub.
    pub debug_stops: Arc<crate::debug_stop::DebugStops>,
    /// Paravirtual devices (their workers are taken by the event loop).
    pub virtio: virtio::VirtioDevices,
    /// PCI hotplug, with `pci` on.
    pub pci_hotplug: Option<Arc<crate::device_manager::hotplug::PciHotplug>>,
    vm: Arc<dyn sie_hv::Vm>,
    memory: GuestMemory,
    memory_from_file: bool,
}

impl StartedVm {
    /// Waits until every vCPU thread runs under its own seccomp filter (see
    /// [`BuiltVm::start_unchecked`]).
    pub fn wait_vcpu_filters(&mut self) -> Result<()> {
        self.vcpus.wait_filters().map_err(|source| VmmError::Host {
            what: "starting vCPU threads",
            source,
        })
    }

    /// True when guest RAM is a snapshot's memory file mapped copy-on-write
    /// (its untouched pages hold data without being resident).
    pub fn memory_from_file(&self) -> bool {
        self.memory_from_file
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemory {
        &self.memory
    }

    /// The hypervisor's VM (its in-kernel devices' state).
    pub fn hv_vm(&self) -> &dyn sie_hv::Vm {
        self.vm.as_ref()
    }

    /// The hypervisor's VM, shared (for devices built while the VM runs).
    pub(crate) fn hv_vm_shared(&self) -> Arc<dyn sie_hv::Vm> {
        self.vm.clone()
    }

    /// Writes a core file of this VM (see [`crate::core_dump`]): pauses it
    /// if it runs, reads every vCPU's registers on its own thread, writes
    /// `path`, and resumes it if it was running. Returns the RAM bytes
    /// written.
    pub fn write_core(
        &mut self,
        path: &std::path::Path,
        timeout: std::time::Duration,
    ) -> Result<u64> {
        let was_paused = self.vcpus.is_paused();
        if !was_paused {
            self.vcpus.pause(timeout).map_err(|error| {
                // Leave no vCPU half-paused.
                let _ = self.vcpus.resume(timeout);
                VmmError::Platform(format!("cannot pause the VM: {error}").into())
            })?;
        }
        let written = self.write_paused_core(path);
        if !was_paused {
            self.vcpus.resume(timeout).map_err(|error| {
                VmmError::Platform(format!("cannot resume the VM: {error}").into())
            })?;
        }
        written
    }

    fn write_paused_core(&mut self, path: &std::path::Path) -> Result<u64> {
        let mut vcpus = Vec::with_capacity(self.vcpus.len());
        for index in 0..self.vcpus.len() {
            let registers = self
                .vcpus
                .with_vcpu(index, |vcpu| {
                    Ok::<_, sie_hv::HvError>(VcpuRegisters {
                        regs: vcpu.regs()?,
                        sregs: vcpu.sregs()?,
                    })
                })
                .map_err(|error| VmmError::Platform(error.to_string().into()))?
                .map_err(|error| VmmError::Platform(format!("vCPU {index}: {error}").into()))?;
            vcpus.push(registers);
        }
        crate::core_dump::write(path, &self.memory, &vcpus, self.memory_from_file).map_err(
            |source| VmmError::CoreDump {
                path: path.to_path_buf(),
                source,
            },
        )
    }

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
            memory_from_file: self.memory_from_file,
            final_registers: self.vcpus.final_registers().to_vec(),
        }
    }
}
