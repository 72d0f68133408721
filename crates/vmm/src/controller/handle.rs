//! One request, one answer: the phase rules and what each request does.

use std::time::Duration;

use serde_json::json;
use sie_config::{ActionType, Request, Response, VmState};
use sie_hv::Hypervisor;

use super::{Controller, PCI_NOT_SNAPSHOTTABLE, Phase, draft, sink};
use crate::event_loop::Manager;
use crate::vm::StartedVm;

use super::phase_faults::{AFTER_START, BEFORE_START};

/// How long `PATCH /vm Paused` waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// An MMDS update's answer: 413 over the size limit, as in Firecracker.
fn mmds_response(result: Result<(), sie_mmds::StoreError>) -> Response {
    match result {
        Ok(()) => Response::NoContent,
        Err(error @ sie_mmds::StoreError::TooLarge) => Response::TooLarge(error.to_string()),
        Err(error) => Response::fault(error),
    }
}

/// Why a VM with pmem devices is not snapshotted or migrated: the device
/// memory (the files' mappings) is not part of the saved state.
pub(super) const PMEM_NO_SNAPSHOT: &str = "snapshots and migration of a microVM with pmem devices or hotpluggable memory are not supported (device memory is not saved)";

impl Controller {
    fn state_name(&self) -> &'static str {
        match &self.phase {
            Phase::NotStarted => "Not started",
            Phase::Running(vm) if vm.vcpus.is_paused() => "Paused",
            Phase::Running(_) => "Running",
        }
    }

    fn is_started(&self) -> bool {
        matches!(self.phase, Phase::Running(_))
    }

    /// Answers one request.
    pub(super) fn handle(
        &mut self,
        request: Request,
        hv: &dyn Hypervisor,
        manager: &mut Manager,
    ) -> Response {
        // The API server logs refusals, with the method and path.
        self.answer(request, hv, manager)
    }

    fn answer(&mut self, request: Request, hv: &dyn Hypervisor, manager: &mut Manager) -> Response {
        match request {
            Request::GetInstanceInfo => Response::Json(json!({
                "id": self.options.id,
                "state": self.state_name(),
                "vmm_version": self.options.vmm_version,
                "app_name": "Firecracker",
            })),
            Request::GetMachineConfig => Response::Json(draft::machine_json(&self.draft.machine())),
            Request::GetVmConfig => Response::Json(self.draft.to_json()),
            Request::GetStats => match self.vm() {
                Some(vm) => {
                    let mut stats = super::report_json(&vm.observatory.report());
                    stats["virtio"] = super::stats_json::virtio_json(&vm.virtio.stats);
                    Response::Json(stats)
                }
                // Nothing has run yet: the same shape, all empty.
                None => Response::Json(serde_json::json!({
                    "total_exits": 0, "exits": {}, "vcpus": [], "devices": {}, "virtio": {},
                    "boot_markers": [], "boot_markers_dropped": 0,
                    "unclaimed_accesses": [], "unclaimed_overflow": 0,
                })),
            },
            Request::GetPrometheusMetrics => {
                Response::Text(self.metrics.prometheus(self.vm().map(StartedVm::figures)))
            }
            Request::PutLogger(logger) => self.put_logger(logger),
            Request::PutMetrics(metrics) => self.put_metrics(metrics),
            Request::Action(action) => self.action(action, hv, manager),
            Request::SetVmState(state) => self.set_vm_state(state),
            Request::PatchDrive(patch) => self.patch_drive(&patch),
            Request::PatchPmem(patch) => self.patch_pmem(&patch),
            Request::PatchMemoryHotplug(patch) => self.patch_hotplug(&patch),
            Request::GetMemoryHotplug => self.hotplug_status(),
            Request::PatchNetworkInterface(patch) => self.patch_network_interface(&patch),
            Request::CreateSnapshot(create) => self.create_snapshot(&create, hv),
            Request::LoadSnapshot(load) => self.load_snapshot_request(&load, hv, manager),
            Request::GetMmds => Response::Json(self.mmds().to_json()),
            Request::PutMmds(data) => mmds_response(self.mmds().put(data)),
            Request::PatchMmds(patch) => mmds_response(self.mmds().patch(&patch)),
            Request::DumpCore(dump) => self.dump_core(&dump),
            Request::ReceiveMigration(receive) => self.receive_migration(&receive),
            Request::SendMigration(send) => self.send_migration(&send),
            Request::GetMigration => self.migration_status(),
            Request::CancelMigration => self.cancel_migration(),
            Request::PatchBalloon(update) => self.patch_balloon(update),
            Request::GetBalloon => self.get_balloon(),
            Request::GetBalloonStats => self.balloon_stats(),
            Request::PatchBalloonStats(update) => self.patch_balloon_stats(update),
            Request::StartBalloonHinting(start) => self.balloon_hinting(Some(start)),
            Request::StopBalloonHinting => self.balloon_hinting(None),
            Request::GetBalloonHinting => self.balloon_hinting_status(),
            Request::PutDrive(drive) if self.is_started() => self.hotplug_drive(drive, manager),
            Request::PutNetworkInterface(nic) if self.is_started() => {
                self.hotplug_nic(nic, manager)
            }
            Request::DeleteDrive(id) => self.unplug(super::hotplug::Kind::Drive, &id, manager),
            Request::DeleteNetworkInterface(id) => {
                self.unplug(super::hotplug::Kind::Net, &id, manager)
            }
            config_request => {
                if self.is_started() {
                    return Response::fault(AFTER_START);
                }
                // Refused now, not at InstanceStart, when this host cannot
                // give the guest the CPU it asks for.
                if let Some((machine, custom)) = self.draft.cpu_after(&config_request)
                    && let Err(error) =
                        crate::guest_cpu::GuestCpu::plan(&machine, custom.as_ref(), hv)
                {
                    return Response::fault(error);
                }
                self.draft
                    .apply(&config_request)
                    .unwrap_or_else(|| Response::fault("this request is not handled by the VMM"))
            }
        }
    }

    /// The metadata store; a poisoned lock still holds a whole document
    /// (every update replaces it in one assignment).
    fn mmds(&self) -> std::sync::MutexGuard<'_, sie_mmds::Mmds> {
        self.options
            .mmds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn put_logger(&mut self, logger: sie_config::Logger) -> Response {
        if self.is_started() {
            return Response::fault(AFTER_START);
        }
        if let Err(error) = logger.validate() {
            return Response::fault(error);
        }
        let Some(control) = self.options.logger.as_mut() else {
            return Response::fault("logger: not available in this mode");
        };
        match control.configure(&logger) {
            Ok(()) => {
                self.draft.note_logging(Some(logger), None);
                Response::NoContent
            }
            Err(message) => Response::Fault(format!("logger: {message}")),
        }
    }

    fn put_metrics(&mut self, metrics: sie_config::Metrics) -> Response {
        if self.is_started() {
            return Response::fault(AFTER_START);
        }
        if self.metrics.has_sink() {
            return Response::fault("metrics: already configured; they can be set only once");
        }
        match sink::LineSink::open(&metrics.metrics_path) {
            Ok(sink) => {
                self.metrics.set_sink(sink);
                self.metrics
                    .set_line_fields(metrics.line_fields(&self.options.id));
                self.draft.note_logging(None, Some(metrics));
                Response::NoContent
            }
            Err(error) => Response::Fault(format!("metrics: {error}")),
        }
    }

    fn action(
        &mut self,
        action: ActionType,
        hv: &dyn Hypervisor,
        manager: &mut Manager,
    ) -> Response {
        match (action, &self.phase) {
            (ActionType::InstanceStart, Phase::NotStarted) => match self.start(hv, manager) {
                Ok(()) => {
                    tracing::info!("InstanceStart: the VM is running");
                    Response::NoContent
                }
                Err(error) => Response::Fault(format!(
                    "cannot start the microVM: {}",
                    crate::error::error_chain(&error)
                )),
            },
            (ActionType::InstanceStart, Phase::Running(_)) => Response::fault(AFTER_START),
            (ActionType::SendCtrlAltDel, Phase::Running(vm)) => {
                match vm.devices.i8042.send_ctrl_alt_del() {
                    Ok(()) => Response::NoContent,
                    Err(error) => Response::Fault(format!("SendCtrlAltDel: {error}")),
                }
            }
            (ActionType::SendCtrlAltDel, Phase::NotStarted) => Response::fault(BEFORE_START),
            (ActionType::FlushMetrics, _) => {
                // Without a sink there is nothing to write; clients flush
                // unconditionally, so that is not an error.
                self.flush_metrics();
                Response::NoContent
            }
        }
    }

    fn set_vm_state(&mut self, state: VmState) -> Response {
        if !self.is_started() {
            return Response::fault(BEFORE_START);
        }
        if self.control.is_stopping() {
            // A request queued behind a completed migration: the guest runs
            // elsewhere now (in local mode on this very memory), so its
            // vCPUs here must stay as they are.
            return Response::fault("the microVM is ending here (it stopped or migrated away)");
        }
        if self.migration_active() {
            // The switch-over pauses and (on failure) resumes the vCPUs; a
            // resume in between would run the guest on both hosts.
            return Response::fault(
                "a migration is under way: cancel it (PUT /migration/cancel) first",
            );
        }
        if let (VmState::Resumed, Some(why)) = (&state, self.migration_handed_over()) {
            return Response::Fault(format!("cannot resume the microVM: {why}"));
        }
        let Phase::Running(vm) = &mut self.phase else {
            return Response::fault(BEFORE_START);
        };
        match state {
            VmState::Paused => match vm.vcpus.pause(PAUSE_TIMEOUT) {
                Ok(()) => Response::NoContent,
                Err(error) => {
                    // Leave no vCPU half-paused.
                    let _ = vm.vcpus.resume(PAUSE_TIMEOUT);
                    Response::Fault(format!("cannot pause the microVM: {error}"))
                }
            },
            VmState::Resumed if self.gdb.as_ref().is_some_and(|gdb| gdb.holds_stopped()) => {
                Response::Fault(
                    "gdb holds the microVM stopped: let it run from gdb (continue)".to_string(),
                )
            }
            VmState::Resumed => match vm.vcpus.resume(PAUSE_TIMEOUT) {
                Ok(()) => Response::NoContent,
                Err(error) => Response::Fault(format!("cannot resume the microVM: {error}")),
            },
        }
    }

    fn create_snapshot(
        &mut self,
        create: &sie_config::SnapshotCreate,
        hv: &dyn Hypervisor,
    ) -> Response {
        if let Err(message) = create.check() {
            return Response::Fault(message);
        }
        if self.draft.has_vfio() {
            return Response::fault(sie_config::VFIO_NOT_SNAPSHOTTABLE);
        }
        let config = match self.draft.to_config() {
            Ok(config) => config,
            Err(message) => return Response::Fault(format!("snapshot/create: {message}")),
        };
        if !config.pmem.is_empty() || config.memory_hotplug.is_some() {
            return Response::fault(PMEM_NO_SNAPSHOT);
        }
        if config.pci_enabled() && matches!(self.phase, Phase::Running(_)) {
            return Response::Fault(format!("snapshot/create: {PCI_NOT_SNAPSHOTTABLE}"));
        }
        let Phase::Running(vm) = &mut self.phase else {
            return Response::fault(BEFORE_START);
        };
        let msrs = match hv.supported_msrs() {
            Ok(msrs) => msrs,
            Err(error) => {
                return Response::Fault(format!(
                    "snapshot/create: {}",
                    crate::error::error_chain(&error)
                ));
            }
        };
        // Its old files' names are reused by this create.
        self.old_snapshot_files = None;
        let started = std::time::Instant::now();
        let kind = match create.snapshot_type {
            Some(sie_config::SnapshotType::Diff) => crate::snapshot::MemoryKind::Diff,
            Some(sie_config::SnapshotType::Full) | None => crate::snapshot::MemoryKind::Full,
        };
        match crate::snapshot::create_as(
            vm,
            &config,
            msrs,
            (&create.snapshot_path, &create.mem_file_path),
            kind,
        ) {
            Ok(created) => {
                tracing::info!(
                    "{kind:?} snapshot created in {} ms ({} bytes of memory written)",
                    started.elapsed().as_millis(),
                    created.memory_bytes
                );
                self.old_snapshot_files = Some((created.old_files, std::time::Instant::now()));
                Response::NoContent
            }
            Err(error) => Response::Fault(format!(
                "snapshot/create: {}",
                crate::error::error_chain(&error)
            )),
        }
    }

    /// Frees the files the last snapshot replaced once the VM runs again
    /// (a resume answered first) or it stayed paused a while.
    pub(super) fn free_old_snapshot_files(&mut self) {
        let Some((_, at)) = &self.old_snapshot_files else {
            return;
        };
        let paused = match &self.phase {
            Phase::Running(vm) => vm.vcpus.is_paused(),
            _ => false,
        };
        if !paused || at.elapsed() >= super::OLD_SNAPSHOT_GRACE {
            self.old_snapshot_files = None;
        }
    }

    /// `PUT /vm/dump`: the VM paused around the write if it runs.
    fn dump_core(&mut self, dump: &sie_config::VmDump) -> Response {
        if let Err(message) = dump.check() {
            return Response::Fault(message);
        }
        let Phase::Running(vm) = &mut self.phase else {
            return Response::fault(BEFORE_START);
        };
        let started = std::time::Instant::now();
        match vm.write_core(&dump.path, PAUSE_TIMEOUT) {
            Ok(bytes) => {
                tracing::info!(
                    "core file {} written in {} ms ({bytes} bytes of memory)",
                    dump.path.display(),
                    started.elapsed().as_millis()
                );
                Response::NoContent
            }
            Err(error) => {
                Response::Fault(format!("vm/dump: {}", crate::error::error_chain(&error)))
            }
        }
    }

    fn load_snapshot_request(
        &mut self,
        load: &sie_config::SnapshotLoad,
        hv: &dyn Hypervisor,
        manager: &mut Manager,
    ) -> Response {
        if self.is_started() {
            return Response::fault(AFTER_START);
        }
        if self.draft.is_configured() {
            return Response::fault(
                "snapshot/load: the microVM is already configured (boot source or devices); load a snapshot into a fresh sie",
            );
        }
        let plan = match load.plan() {
            Ok(plan) => plan,
            Err(message) => return Response::Fault(message),
        };
        let started = std::time::Instant::now();
        match self.load_snapshot(&plan, hv, manager) {
            Ok(()) => {
                tracing::info!("snapshot loaded in {} µs", started.elapsed().as_micros());
                Response::NoContent
            }
            Err(message) => Response::Fault(format!("snapshot/load: {message}")),
        }
    }

    /// `PATCH /pmem/{id}`: Firecracker's only field is a rate limiter; one
    /// that limits anything was refused by the router, so this checks the
    /// device exists and changes nothing.
    fn patch_pmem(&mut self, patch: &sie_config::PmemPatch) -> Response {
        if !self.is_started() {
            return Response::fault(BEFORE_START);
        }
        if !self.draft.has_pmem(&patch.id) {
            return Response::Fault(format!("pmem: no device with id {:?}", patch.id));
        }
        Response::NoContent
    }

    /// `PATCH /hotplug/memory`: the size the guest should have plugged.
    fn patch_hotplug(&mut self, patch: &sie_config::MemoryHotplugPatch) -> Response {
        let Some(Phase::Running(vm)) = Some(&self.phase) else {
            return Response::fault(BEFORE_START);
        };
        let Some(hotplug) = &vm.virtio.hotplug else {
            return Response::fault("hotplug/memory: no hotpluggable memory is configured");
        };
        if let Err(error) = hotplug.config.check_request(patch) {
            return Response::Fault(error.to_string());
        }
        match hotplug.request(patch.requested_size_mib) {
            Ok(()) => Response::NoContent,
            Err(message) => Response::Fault(format!("hotplug/memory: {message}")),
        }
    }

    /// `GET /hotplug/memory`: the device's sizes once started; before, the
    /// configuration with nothing plugged or requested.
    fn hotplug_status(&self) -> Response {
        if let Some(hotplug) = self.vm().and_then(|vm| vm.virtio.hotplug.as_ref()) {
            return Response::Json(hotplug.status());
        }
        match &self.draft.to_config_unchecked().memory_hotplug {
            Some(config) => Response::Json(serde_json::json!({
                "total_size_mib": config.total_size_mib,
                "slot_size_mib": config.slot_size_mib,
                "block_size_mib": config.block_size_mib,
                "plugged_size_mib": 0,
                "requested_size_mib": 0,
            })),
            None => Response::fault("hotplug/memory: no hotpluggable memory is configured"),
        }
    }

    fn patch_drive(&mut self, patch: &sie_config::DrivePatch) -> Response {
        if !self.is_started() {
            return Response::fault(BEFORE_START);
        }
        if !self.draft.to_json()["drives"]
            .as_array()
            .is_some_and(|drives| {
                drives
                    .iter()
                    .any(|d| d["drive_id"] == patch.drive_id.as_str())
            })
        {
            return Response::Fault(format!("drives: no drive with id {:?}", patch.drive_id));
        }
        if let Some(path) = &patch.path_on_host {
            let Some(Phase::Running(vm)) = Some(&self.phase) else {
                return Response::fault(BEFORE_START);
            };
            let Some((_, block)) = vm
                .virtio
                .blocks
                .iter()
                .find(|(id, _)| *id == patch.drive_id)
            else {
                return Response::Fault(format!("drives: no drive with id {:?}", patch.drive_id));
            };
            let read_only = self
                .draft
                .drive(&patch.drive_id)
                .and_then(|d| d.is_read_only)
                == Some(true);
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(path);
            let swapped = opened.and_then(|file| block.swap_backing_file(file));
            if let Err(error) = swapped {
                return Response::Fault(format!(
                    "drives: cannot use {} for {:?}: {error}",
                    path.display(),
                    patch.drive_id
                ));
            }
            self.draft.set_drive_path(&patch.drive_id, path);
        }
        if let Some(limiter) = &patch.rate_limiter {
            let Phase::Running(vm) = &self.phase else {
                return Response::fault(BEFORE_START);
            };
            let Some((_, block)) = vm
                .virtio
                .blocks
                .iter()
                .find(|(id, _)| *id == patch.drive_id)
            else {
                return Response::Fault(format!("drives: no drive with id {:?}", patch.drive_id));
            };
            let update = crate::virtio::limiter_config(Some(limiter));
            if let Err(error) = block.update_rate_limiter(&update) {
                return Response::Fault(format!(
                    "drives: rate_limiter of {:?}: {error}",
                    patch.drive_id
                ));
            }
            self.draft
                .patch_drive_rate_limiter(&patch.drive_id, limiter);
        }
        Response::NoContent
    }

    fn patch_network_interface(&mut self, patch: &sie_config::NetworkInterfacePatch) -> Response {
        if !self.is_started() {
            return Response::fault(BEFORE_START);
        }
        let known = self.draft.to_json()["network-interfaces"]
            .as_array()
            .is_some_and(|nics| {
                nics.iter()
                    .any(|n| n["iface_id"] == patch.iface_id.as_str())
            });
        if !known {
            return Response::Fault(format!(
                "network-interfaces: no interface with id {:?}",
                patch.iface_id
            ));
        }
        let (rx, tx) = (
            patch.rx_rate_limiter.as_deref(),
            patch.tx_rate_limiter.as_deref(),
        );
        if rx.is_none() && tx.is_none() {
            return Response::NoContent;
        }
        let Phase::Running(vm) = &self.phase else {
            return Response::fault(BEFORE_START);
        };
        let Some((_, net)) = vm.virtio.nets.iter().find(|(id, _)| *id == patch.iface_id) else {
            return Response::Fault(format!(
                "network-interfaces: no interface with id {:?}",
                patch.iface_id
            ));
        };
        let config = |limiter| crate::virtio::limiter_config(Some(limiter));
        if let Err(error) =
            net.update_rate_limiters(rx.map(config).as_ref(), tx.map(config).as_ref())
        {
            return Response::Fault(format!(
                "network-interfaces: rate limiters of {:?}: {error}",
                patch.iface_id
            ));
        }
        self.draft.patch_nic_rate_limiters(&patch.iface_id, rx, tx);
        Response::NoContent
    }
}
