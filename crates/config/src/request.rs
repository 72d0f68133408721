//! What a client can ask of the VMM, whichever front end it came through.
//!
//! The API server turns HTTP requests into a [`Request`]; the VMM answers
//! each with a [`Response`], which the server turns back into HTTP. The VMM
//! never sees HTTP and the server never sees the VM, so each side is tested
//! on its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::boot_source::BootSource;
use crate::devices::{DeviceConfigError, Drive, Entropy, NetworkInterface, RateLimiter, Vsock};
use crate::logging::{Logger, Metrics};
use crate::machine_config::MachineConfig;

/// The Firecracker release whose API sie serves: its request and response
/// shapes are the ones sie parses and answers (docs/api/firecracker-surface.md
/// lists which of its endpoints sie serves in full, in part, or refuses).
/// `GET /version`, `vmm_version` in `GET /`, and `--version` under the
/// name `firecracker` report it, because clients parse it as Firecracker's.
pub const FIRECRACKER_API_VERSION: &str = "1.17.0";

/// One request to the VMM.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// `GET /`: instance information.
    GetInstanceInfo,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /vm/config`: the whole configuration.
    GetVmConfig,
    /// `PUT /boot-source` (before boot only).
    PutBootSource(BootSource),
    /// `PUT /machine-config` (before boot only).
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (before boot only).
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /cpu-config` (before boot only): a custom CPU template.
    PutCpuConfig(crate::cpu_config::CpuConfig),
    /// `PUT /drives/{id}` (before boot only).
    PutDrive(Drive),
    /// `PATCH /drives/{id}` (after boot: swap the backing file).
    PatchDrive(DrivePatch),
    /// `DELETE /drives/{id}` (after boot, PCI: unplug a hotplugged drive).
    DeleteDrive(String),
    /// `PUT /network-interfaces/{id}` (before boot only).
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(NetworkInterfacePatch),
    /// `DELETE /network-interfaces/{id}` (after boot, PCI: unplug a
    /// hotplugged interface).
    DeleteNetworkInterface(String),
    /// `PUT /vsock` (before boot only).
    PutVsock(Vsock),
    /// `PUT /pmem/{id}` (before boot only).
    PutPmem(crate::pmem::Pmem),
    /// `PATCH /pmem/{id}` (after boot: a rate limiter that limits nothing).
    PatchPmem(crate::pmem::PmemPatch),
    /// `PUT /hotplug/memory` (before boot only).
    PutMemoryHotplug(crate::hotplug::MemoryHotplug),
    /// `PATCH /hotplug/memory` (after boot: the size the guest should plug).
    PatchMemoryHotplug(crate::hotplug::MemoryHotplugPatch),
    /// `GET /hotplug/memory`.
    GetMemoryHotplug,
    /// `PUT /entropy` (before boot only).
    PutEntropy(Entropy),
    /// Extension: `PUT /vfio/{id}` (before boot only).
    PutVfio(crate::VfioDevice),
    /// `PUT /logger` (before boot only).
    PutLogger(Logger),
    /// `PUT /metrics` (before boot only).
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    SetVmState(VmState),
    /// Extension: `GET /metrics` in Prometheus text format.
    GetPrometheusMetrics,
    /// Extension: `GET /stats`, the exit observatory as JSON.
    GetStats,
    /// `PUT /snapshot/create` (on a paused VM).
    CreateSnapshot(crate::snapshot::SnapshotCreate),
    /// `PUT /snapshot/load` (before anything is started).
    LoadSnapshot(crate::snapshot::SnapshotLoad),
    /// `GET /mmds`: the metadata store.
    GetMmds,
    /// `PUT /mmds`: replace the metadata store (any time).
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`: a JSON merge patch over it (any time).
    PatchMmds(serde_json::Value),
    /// `PUT /mmds/config` (before boot only).
    PutMmdsConfig(crate::mmds::MmdsConfig),
    /// `PUT /serial` (before boot only).
    PutSerial(crate::serial::SerialConfig),
    /// Extension: `PUT /vm/dump`, the guest's memory and registers as an
    /// ELF core file.
    DumpCore(crate::serial::VmDump),
    /// Extension: `PUT /migration/receive` (on a fresh sie).
    ReceiveMigration(crate::migration::MigrationReceive),
    /// Extension: `PUT /migration/send` (on a running or paused VM).
    SendMigration(crate::migration::MigrationSend),
    /// Extension: `GET /migration`.
    GetMigration,
    /// Extension: `PUT /migration/cancel`.
    CancelMigration,
    /// `PUT /balloon` (before boot only).
    PutBalloon(crate::balloon::Balloon),
    /// `PATCH /balloon`: a new target, before or after boot.
    PatchBalloon(crate::balloon::BalloonUpdate),
    /// `GET /balloon`.
    GetBalloon,
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`: a new polling interval.
    PatchBalloonStats(crate::balloon::BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`.
    StartBalloonHinting(crate::balloon::BalloonStartCmd),
    /// `GET /balloon/hinting/status`.
    GetBalloonHinting,
    /// `PATCH /balloon/hinting/stop`.
    StopBalloonHinting,
}

impl Request {
    /// A short stable name for metrics: the method and route, without ids.
    pub fn route(&self) -> &'static str {
        match self {
            Request::GetInstanceInfo => "get_instance_info",
            Request::GetMachineConfig => "get_machine_config",
            Request::GetVmConfig => "get_vm_config",
            Request::PutBootSource(_) => "put_boot_source",
            Request::PutMachineConfig(_) => "put_machine_config",
            Request::PatchMachineConfig(_) => "patch_machine_config",
            Request::PutCpuConfig(_) => "put_cpu_config",
            Request::PutDrive(_) => "put_drive",
            Request::PatchDrive(_) => "patch_drive",
            Request::DeleteDrive(_) => "delete_drive",
            Request::PutNetworkInterface(_) => "put_network_interface",
            Request::PatchNetworkInterface(_) => "patch_network_interface",
            Request::DeleteNetworkInterface(_) => "delete_network_interface",
            Request::PutVsock(_) => "put_vsock",
            Request::PutEntropy(_) => "put_entropy",
            Request::PutPmem(_) => "put_pmem",
            Request::PutMemoryHotplug(_) => "put_hotplug_memory",
            Request::PatchMemoryHotplug(_) => "patch_hotplug_memory",
            Request::GetMemoryHotplug => "get_hotplug_memory",
            Request::PatchPmem(_) => "patch_pmem",
            Request::PutVfio(_) => "put_vfio",
            Request::PutLogger(_) => "put_logger",
            Request::PutMetrics(_) => "put_metrics",
            Request::Action(_) => "put_actions",
            Request::SetVmState(_) => "patch_vm",
            Request::GetPrometheusMetrics => "get_metrics",
            Request::GetStats => "get_stats",
            Request::CreateSnapshot(_) => "put_snapshot_create",
            Request::LoadSnapshot(_) => "put_snapshot_load",
            Request::GetMmds => "get_mmds",
            Request::PutMmds(_) => "put_mmds",
            Request::PatchMmds(_) => "patch_mmds",
            Request::PutMmdsConfig(_) => "put_mmds_config",
            Request::PutSerial(_) => "put_serial",
            Request::DumpCore(_) => "put_vm_dump",
            Request::ReceiveMigration(_) => "put_migration_receive",
            Request::SendMigration(_) => "put_migration_send",
            Request::GetMigration => "get_migration",
            Request::CancelMigration => "put_migration_cancel",
            Request::PutBalloon(_) => "put_balloon",
            Request::PatchBalloon(_) => "patch_balloon",
            Request::GetBalloon => "get_balloon",
            Request::GetBalloonStats => "get_balloon_statistics",
            Request::PatchBalloonStats(_) => "patch_balloon_statistics",
            Request::StartBalloonHinting(_) => "patch_balloon_hinting_start",
            Request::GetBalloonHinting => "get_balloon_hinting_status",
            Request::StopBalloonHinting => "patch_balloon_hinting_stop",
        }
    }
}

/// `PUT /actions` body: `{"action_type": "..."}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Build and start the VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// `PATCH /vm` body: `{"state": "Paused" | "Resumed"}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop every vCPU.
    Paused,
    /// Run them again.
    Resumed,
}

/// `PATCH /machine-config` body: every field optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// New vCPU count.
    #[serde(default)]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default)]
    pub mem_size_mib: Option<u64>,
    /// SMT.
    #[serde(default)]
    pub smt: Option<bool>,
    /// Dirty page tracking.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    #[serde(default)]
    pub huge_pages: Option<String>,
    /// CPU template.
    #[serde(default)]
    pub cpu_template: Option<String>,
    /// sie: VMX/SVM for the guest.
    #[serde(default)]
    pub nested: Option<bool>,
    /// Where to wait for gdb.
    #[serde(default)]
    pub gdb_socket_path: Option<String>,
    /// sie: guest RAM in shared memory.
    #[serde(default)]
    pub shared_memory: Option<bool>,
}

impl MachineConfigPatch {
    /// `base` with this patch's fields laid over it.
    pub fn apply(&self, base: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.or(base.smt),
            track_dirty_pages: self.track_dirty_pages.or(base.track_dirty_pages),
            huge_pages: self.huge_pages.clone().or_else(|| base.huge_pages.clone()),
            cpu_template: self
                .cpu_template
                .clone()
                .or_else(|| base.cpu_template.clone()),
            nested: self.nested.or(base.nested),
            gdb_socket_path: self
                .gdb_socket_path
                .clone()
                .or_else(|| base.gdb_socket_path.clone()),
            shared_memory: self.shared_memory.or(base.shared_memory),
        }
    }
}

/// `PATCH /drives/{id}` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    /// Which drive.
    pub drive_id: String,
    /// A new backing file.
    #[serde(default)]
    pub path_on_host: Option<PathBuf>,
    /// New rate limits: named buckets replace the drive's (a size of 0
    /// removes one, what is left of the budget carries over), absent
    /// buckets stay.
    #[serde(default)]
    pub rate_limiter: Option<Box<RateLimiter>>,
}

impl DrivePatch {
    /// Checks every field, as [`Drive::validate`] checks the same ones:
    /// any rate limiter Firecracker parses is valid.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        Ok(())
    }
}

/// `PATCH /network-interfaces/{id}` body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    /// Which interface.
    pub iface_id: String,
    /// New receive limits, merged as in [`DrivePatch::rate_limiter`].
    #[serde(default)]
    pub rx_rate_limiter: Option<Box<RateLimiter>>,
    /// New transmit limits, merged as in [`DrivePatch::rate_limiter`].
    #[serde(default)]
    pub tx_rate_limiter: Option<Box<RateLimiter>>,
}

impl NetworkInterfacePatch {
    /// Checks every field, as [`NetworkInterface::validate`] checks them:
    /// any rate limiter Firecracker parses is valid.
    pub fn validate(&self) -> Result<(), DeviceConfigError> {
        Ok(())
    }
}

/// The VMM's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// Done; nothing to say (HTTP 204).
    NoContent,
    /// Done; here is the result (HTTP 200, `application/json`).
    Json(serde_json::Value),
    /// Done; here is the result as text (HTTP 200, Prometheus text format).
    Text(String),
    /// Refused (HTTP 400 with `{"fault_message": ...}`).
    Fault(String),
    /// Refused because the data would not fit its store (HTTP 413 with
    /// `{"fault_message": ...}`: Firecracker's answer to an MMDS update over
    /// the size limit).
    TooLarge(String),
}

impl Response {
    /// The fault message of a refusal (400 or 413).
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            Response::Fault(message) | Response::TooLarge(message) => Some(message),
            _ => None,
        }
    }

    /// A fault from anything displayable.
    pub fn fault(message: impl std::fmt::Display) -> Self {
        Response::Fault(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_and_state_bodies_use_firecracker_names() {
        let action: ActionType = serde_json::from_str("\"SendCtrlAltDel\"").unwrap();
        assert_eq!(action, ActionType::SendCtrlAltDel);
        let state: VmState = serde_json::from_str("\"Paused\"").unwrap();
        assert_eq!(state, VmState::Paused);
        assert!(serde_json::from_str::<VmState>("\"Stopped\"").is_err());
    }

    #[test]
    fn patches_take_rate_limiters_and_keep_absent_buckets_absent() {
        let drive: DrivePatch = serde_json::from_str(
            r#"{"drive_id": "root", "rate_limiter": {"ops": {"size": 5, "refill_time": 5}}}"#,
        )
        .unwrap();
        assert_eq!(drive.validate(), Ok(()));
        let limiter = drive.rate_limiter.unwrap();
        assert!(limiter.limits());
        // Absent: that bucket is left as it is by the VMM.
        assert_eq!(limiter.bandwidth, None);
        let nic: NetworkInterfacePatch = serde_json::from_str(
            r#"{"iface_id": "eth0", "rx_rate_limiter": {"bandwidth": {"size": 9, "refill_time": 9}}}"#,
        )
        .unwrap();
        assert_eq!(nic.validate(), Ok(()));
        assert!(nic.rx_rate_limiter.unwrap().limits());
        assert_eq!(nic.tx_rate_limiter, None);
    }

    #[test]
    fn machine_config_patch_keeps_unset_fields() {
        let base = MachineConfig {
            vcpu_count: 2,
            mem_size_mib: 256,
            ..MachineConfig::default()
        };
        let patch: MachineConfigPatch = serde_json::from_str(r#"{"mem_size_mib": 512}"#).unwrap();
        let patched = patch.apply(&base);
        assert_eq!((patched.vcpu_count, patched.mem_size_mib), (2, 512));
    }
}
