//! Routing: an HTTP method, target and body to a [`Request`], or a fault.
//!
//! A pure function so every endpoint and every way to get one wrong is
//! tested without a socket. The rules follow Firecracker's, because its
//! clients (firecracker-go-sdk, Kata, flintlock) are what talk to sie:
//! unknown paths are 400 (never 404), ids in the path must match the body,
//! and JSON errors carry serde's message, which names the field.

use serde::de::DeserializeOwned;
use sie_config::{
    ActionType, BalloonStartCmd, BootSource, CpuConfig, Drive, DrivePatch, Entropy, Logger,
    MachineConfig, MachineConfigPatch, Metrics, MigrationReceive, MigrationSend, MmdsConfig,
    NetworkInterface, NetworkInterfacePatch, Request, SerialConfig, SnapshotCreate, SnapshotLoad,
    VfioDevice, VmDump, VmState, Vsock,
};

/// Stats name of `GET /version`, which the server answers itself.
pub const ROUTE_VERSION: &str = "get_version";
/// Stats name of Firecracker endpoints sie does not offer yet.
pub const ROUTE_UNSUPPORTED: &str = "unsupported";
/// Stats name of anything that is not an endpoint, or not valid HTTP.
pub const ROUTE_INVALID: &str = "invalid";

/// Where a request goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Routed {
    /// To the VMM.
    Vmm(Request),
    /// `GET /version`: the server answers with its configured version.
    Version,
}

/// A request the router refuses: HTTP 400 with `message` as the fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The stats name the refusal is counted under.
    pub route: &'static str,
    /// What was wrong, for `fault_message`.
    pub message: String,
}

impl Fault {
    fn new(route: &'static str, message: impl Into<String>) -> Self {
        Self {
            route,
            message: message.into(),
        }
    }
}

/// `PUT /actions` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

/// `PATCH /vm` body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VmStateBody {
    state: VmState,
}

/// Firecracker path families sie does not implement yet, with the feature
/// name used in the fault. Any method on them gets "not available in sie
/// yet" rather than "invalid path", so a client learns what is missing.
const UNSUPPORTED: [(&str, &str); 0] = [];

/// The path of a request target: the query dropped, and one trailing `/`
/// (other than the root's) stripped.
pub fn normalize_path(target: &str) -> &str {
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match path.strip_suffix('/') {
        Some(stripped) if !stripped.is_empty() => stripped,
        _ => path,
    }
}

/// Routes one request. `target` is the request target as sent (a query
/// string is ignored); `body` is the raw body, empty when there is none.
pub fn route(method: &str, target: &str, body: &[u8]) -> Result<Routed, Fault> {
    let path = normalize_path(target);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if method == "GET" && !body.is_empty() {
        // Firecracker refuses these too; a body on a GET is a client bug.
        let route = match route(method, target, b"") {
            Ok(Routed::Vmm(request)) => request.route(),
            Ok(Routed::Version) => ROUTE_VERSION,
            Err(fault) => fault.route,
        };
        return Err(Fault::new(route, "GET request cannot have a body."));
    }
    let input = Input { method, path, body };
    let vmm = |request: Request| Ok(Routed::Vmm(request));
    match (method, segments.as_slice()) {
        ("GET", [""]) => vmm(Request::GetInstanceInfo),
        ("GET", ["version"]) => Ok(Routed::Version),
        ("PUT", ["actions"]) => {
            let body: ActionBody = input.parse("put_actions")?;
            vmm(Request::Action(body.action_type))
        }
        ("PUT", ["boot-source"]) => vmm(Request::PutBootSource(
            input.parse::<BootSource>("put_boot_source")?,
        )),
        ("GET", ["machine-config"]) => vmm(Request::GetMachineConfig),
        ("PUT", ["machine-config"]) => vmm(Request::PutMachineConfig(
            input.parse::<MachineConfig>("put_machine_config")?,
        )),
        ("PATCH", ["machine-config"]) => {
            let patch: MachineConfigPatch = input.parse("patch_machine_config")?;
            if patch == MachineConfigPatch::default() {
                return Err(Fault::new("patch_machine_config", "Empty PATCH request."));
            }
            vmm(Request::PatchMachineConfig(patch))
        }
        ("PUT", ["cpu-config"]) => {
            let cpu: CpuConfig = input.parse("put_cpu_config")?;
            checked_message("put_cpu_config", cpu.validate().map_err(|e| e.to_string()))?;
            vmm(Request::PutCpuConfig(cpu))
        }
        ("PUT", ["drives", id]) => {
            checked_id("put_drive", id)?;
            let drive: Drive = input.parse("put_drive")?;
            same_id("put_drive", "drive_id", id, &drive.drive_id)?;
            vmm(Request::PutDrive(drive))
        }
        ("PATCH", ["drives", id]) => {
            checked_id("patch_drive", id)?;
            let patch: DrivePatch = input.parse("patch_drive")?;
            same_id("patch_drive", "drive_id", id, &patch.drive_id)?;
            checked("patch_drive", patch.validate())?;
            vmm(Request::PatchDrive(patch))
        }
        ("DELETE", ["drives", id]) => {
            checked_id("delete_drive", id)?;
            vmm(Request::DeleteDrive((*id).to_string()))
        }
        ("PUT", ["network-interfaces", id]) => {
            checked_id("put_network_interface", id)?;
            let nic: NetworkInterface = input.parse("put_network_interface")?;
            same_id("put_network_interface", "iface_id", id, &nic.iface_id)?;
            vmm(Request::PutNetworkInterface(nic))
        }
        ("DELETE", ["network-interfaces", id]) => {
            checked_id("delete_network_interface", id)?;
            vmm(Request::DeleteNetworkInterface((*id).to_string()))
        }
        ("PATCH", ["network-interfaces", id]) => {
            checked_id("patch_network_interface", id)?;
            let patch: NetworkInterfacePatch = input.parse("patch_network_interface")?;
            same_id("patch_network_interface", "iface_id", id, &patch.iface_id)?;
            checked("patch_network_interface", patch.validate())?;
            vmm(Request::PatchNetworkInterface(patch))
        }
        ("PUT", ["drives"]) => Err(Fault::new("put_drive", EMPTY_ID)),
        ("PATCH", ["drives"]) => Err(Fault::new("patch_drive", EMPTY_ID)),
        ("PUT", ["network-interfaces"]) => Err(Fault::new("put_network_interface", EMPTY_ID)),
        ("PATCH", ["network-interfaces"]) => Err(Fault::new("patch_network_interface", EMPTY_ID)),
        ("PUT", ["pmem", id]) => {
            checked_id("put_pmem", id)?;
            let pmem: sie_config::Pmem = input.parse("put_pmem")?;
            same_id("put_pmem", "id", id, &pmem.id)?;
            checked_message("put_pmem", pmem.validate().map_err(|e| e.to_string()))?;
            vmm(Request::PutPmem(pmem))
        }
        ("PATCH", ["pmem", id]) => {
            checked_id("patch_pmem", id)?;
            let patch: sie_config::PmemPatch = input.parse("patch_pmem")?;
            same_id("patch_pmem", "id", id, &patch.id)?;
            checked_message("patch_pmem", patch.validate().map_err(|e| e.to_string()))?;
            vmm(Request::PatchPmem(patch))
        }
        ("PUT", ["hotplug", "memory"]) => {
            let hotplug: sie_config::MemoryHotplug = input.parse("put_hotplug_memory")?;
            checked_message(
                "put_hotplug_memory",
                hotplug.validate().map_err(|e| e.to_string()),
            )?;
            vmm(Request::PutMemoryHotplug(hotplug))
        }
        ("PATCH", ["hotplug", "memory"]) => vmm(Request::PatchMemoryHotplug(
            input.parse::<sie_config::MemoryHotplugPatch>("patch_hotplug_memory")?,
        )),
        ("GET", ["hotplug", "memory"]) => vmm(Request::GetMemoryHotplug),
        ("PUT", ["pmem"]) => Err(Fault::new("put_pmem", EMPTY_ID)),
        ("PATCH", ["pmem"]) => Err(Fault::new("patch_pmem", EMPTY_ID)),
        ("PUT", ["vsock"]) => vmm(Request::PutVsock(input.parse::<Vsock>("put_vsock")?)),
        ("PUT", ["entropy"]) => {
            let entropy: Entropy = input.parse("put_entropy")?;
            checked("put_entropy", entropy.validate())?;
            vmm(Request::PutEntropy(entropy))
        }
        ("PUT", ["vfio", id]) => {
            checked_id("put_vfio", id)?;
            let device: VfioDevice = input.parse("put_vfio")?;
            same_id("put_vfio", "id", id, &device.id)?;
            checked_message("put_vfio", device.validate().map_err(|e| e.to_string()))?;
            vmm(Request::PutVfio(device))
        }
        ("PUT", ["vfio"]) => Err(Fault::new("put_vfio", EMPTY_ID)),
        ("PUT", ["logger"]) => vmm(Request::PutLogger(input.parse::<Logger>("put_logger")?)),
        ("PUT", ["metrics"]) => vmm(Request::PutMetrics(input.parse::<Metrics>("put_metrics")?)),
        ("GET", ["metrics"]) => vmm(Request::GetPrometheusMetrics),
        ("GET", ["stats"]) => vmm(Request::GetStats),
        ("PATCH", ["vm"]) => {
            let body: VmStateBody = input.parse("patch_vm")?;
            vmm(Request::SetVmState(body.state))
        }
        ("GET", ["vm", "config"]) => vmm(Request::GetVmConfig),
        ("PUT", ["vm", "dump"]) => {
            let dump: VmDump = input.parse("put_vm_dump")?;
            checked_message("put_vm_dump", dump.check())?;
            vmm(Request::DumpCore(dump))
        }
        ("PUT", ["serial"]) => {
            let serial: SerialConfig = input.parse("put_serial")?;
            checked_message("put_serial", serial.validate().map_err(|e| e.to_string()))?;
            vmm(Request::PutSerial(serial))
        }
        ("PUT", ["snapshot", "create"]) => {
            let create: SnapshotCreate = input.parse("put_snapshot_create")?;
            checked_message("put_snapshot_create", create.check())?;
            vmm(Request::CreateSnapshot(create))
        }
        ("PUT", ["migration", "receive"]) => {
            let receive: MigrationReceive = input.parse("put_migration_receive")?;
            checked_message("put_migration_receive", receive.check())?;
            vmm(Request::ReceiveMigration(receive))
        }
        ("PUT", ["migration", "send"]) => {
            let send: MigrationSend = input.parse("put_migration_send")?;
            checked_message("put_migration_send", send.check())?;
            vmm(Request::SendMigration(send))
        }
        ("GET", ["migration"]) => vmm(Request::GetMigration),
        ("PUT", ["migration", "cancel"]) => vmm(Request::CancelMigration),
        ("PUT", ["snapshot", "load"]) => {
            let load: SnapshotLoad = input.parse("put_snapshot_load")?;
            checked_message("put_snapshot_load", load.plan().map(|_| ()))?;
            vmm(Request::LoadSnapshot(load))
        }
        ("GET", ["mmds"]) => vmm(Request::GetMmds),
        ("PUT", ["mmds"]) => vmm(Request::PutMmds(input.parse_value("put_mmds")?)),
        ("PATCH", ["mmds"]) => vmm(Request::PatchMmds(input.parse_value("patch_mmds")?)),
        ("PUT", ["mmds", "config"]) => vmm(Request::PutMmdsConfig(
            input.parse::<MmdsConfig>("put_mmds_config")?,
        )),
        ("PUT", ["balloon"]) => vmm(Request::PutBalloon(input.parse("put_balloon")?)),
        ("PATCH", ["balloon"]) => vmm(Request::PatchBalloon(input.parse("patch_balloon")?)),
        ("GET", ["balloon"]) => vmm(Request::GetBalloon),
        ("GET", ["balloon", "statistics"]) => vmm(Request::GetBalloonStats),
        ("PATCH", ["balloon", "statistics"]) => vmm(Request::PatchBalloonStats(
            input.parse("patch_balloon_statistics")?,
        )),
        ("PATCH", ["balloon", "hinting", "start"]) => {
            // The body is optional, as in Firecracker.
            let start = if body.iter().all(u8::is_ascii_whitespace) {
                BalloonStartCmd::default()
            } else {
                input.parse("patch_balloon_hinting_start")?
            };
            vmm(Request::StartBalloonHinting(start))
        }
        ("GET", ["balloon", "hinting", "status"]) => vmm(Request::GetBalloonHinting),
        ("PATCH", ["balloon", "hinting", "stop"]) => vmm(Request::StopBalloonHinting),
        ("GET", ["entropy"]) => Err(unsupported(method, path, "reading the entropy device")),
        (_, [first, ..]) => match UNSUPPORTED.iter().find(|(family, _)| family == first) {
            Some((_, feature)) => Err(unsupported(method, path, feature)),
            None => Err(invalid(method, path)),
        },
        _ => Err(invalid(method, path)),
    }
}

fn unsupported(method: &str, path: &str, feature: &str) -> Fault {
    Fault::new(
        ROUTE_UNSUPPORTED,
        format!("{method} {path}: {feature} is not available in sie yet."),
    )
}

/// Firecracker's wording, which names only the first path segment (`PUT
/// vm.` for `PUT /vm`), so scripts that match on it keep working.
fn invalid(method: &str, path: &str) -> Fault {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    Fault::new(
        ROUTE_INVALID,
        format!("Invalid request method and/or path: {method} {first}."),
    )
}

/// A request the VMM would refuse anyway (a field sie cannot honour yet),
/// refused here with its one-line reason.
fn checked_message(route: &'static str, result: Result<(), String>) -> Result<(), Fault> {
    result.map_err(|message| Fault::new(route, message))
}

/// Firecracker's fault for `PUT /drives` and the like, with no id.
const EMPTY_ID: &str = "The ID cannot be empty.";

/// A path id as Firecracker checks it, with its wording.
fn checked_id(route: &'static str, id: &str) -> Result<(), Fault> {
    if id.is_empty() {
        return Err(Fault::new(route, EMPTY_ID));
    }
    if !id.chars().all(|c| c == '_' || c.is_ascii_alphanumeric()) {
        return Err(Fault::new(
            route,
            format!(
                "API Resource IDs can only contain alphanumeric characters and underscores: {id:?}."
            ),
        ));
    }
    Ok(())
}

/// What a body is parsed from, kept together so each route names only
/// its stats name and type.
struct Input<'a> {
    method: &'a str,
    path: &'a str,
    body: &'a [u8],
}

impl Input<'_> {
    /// Parses any JSON value (the MMDS store takes whatever the host puts).
    fn parse_value(&self, route: &'static str) -> Result<serde_json::Value, Fault> {
        let (method, path) = (self.method, self.path);
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Err(Fault::new(
                route,
                format!("Empty {method} request: {path} needs a JSON body."),
            ));
        }
        serde_json::from_slice(self.body).map_err(|error| {
            Fault::new(
                route,
                format!(
                    "An error occurred when deserializing the json body of a request: {error}."
                ),
            )
        })
    }

    /// Parses a JSON object body. serde's own message is kept: it names
    /// the unknown, missing or mistyped field and where it is.
    fn parse<T: DeserializeOwned>(&self, route: &'static str) -> Result<T, Fault> {
        let (method, path) = (self.method, self.path);
        if self.body.iter().all(u8::is_ascii_whitespace) {
            // Firecracker's wording ("Empty PUT request."), and what was needed.
            return Err(Fault::new(
                route,
                format!("Empty {method} request: {path} needs a JSON object body."),
            ));
        }
        // serde would also take a struct as an array of its fields; Firecracker
        // bodies are objects, and a client sending anything else has a bug.
        if self.body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(Fault::new(
                route,
                format!("Invalid body: {method} {path} needs a JSON object body."),
            ));
        }
        // The path to the failing field prefixes serde's message, because
        // some of serde's messages (a number where an enum belongs) do not
        // name it.
        let fault = |what: String| {
            Fault::new(
                route,
                format!("An error occurred when deserializing the json body of a request: {what}."),
            )
        };
        let mut deserializer = serde_json::Deserializer::from_slice(self.body);
        let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            fault(if path.is_empty() || path == "." {
                inner.to_string()
            } else {
                format!("{path}: {inner}")
            })
        })?;
        deserializer.end().map_err(|e| fault(e.to_string()))?;
        Ok(value)
    }
}

/// A body's own validation, for the requests whose checks need nothing
/// from the VMM (patches, entropy): refused here, before they queue for it.
fn checked(
    route: &'static str,
    result: Result<(), sie_config::DeviceConfigError>,
) -> Result<(), Fault> {
    result.map_err(|error| Fault::new(route, error.to_string()))
}

fn same_id(route: &'static str, field: &str, in_path: &str, in_body: &str) -> Result<(), Fault> {
    if in_path == in_body {
        return Ok(());
    }
    // Firecracker's sentence first, for clients that match on it.
    Err(Fault::new(
        route,
        format!(
            "The id from the path does not match the id from the body! \
             (path: {in_path:?}, {field}: {in_body:?})"
        ),
    ))
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
