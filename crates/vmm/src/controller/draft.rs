//! The configuration being assembled before `InstanceStart`: each pre-boot
//! request replaces or adds one resource, checked on its own, and the whole
//! is checked once more when the VM is built.

use std::path::Path;

use serde_json::Value;
use sie_config::{
    BootSource, CpuConfig, Drive, Entropy, MachineConfig, MachineConfigPatch, MmdsConfig,
    NetworkInterface, Request, Response, VfioDevice, VmConfig, Vsock,
};

/// The configuration so far.
#[derive(Clone, Debug)]
pub struct Draft {
    config: VmConfig,
    has_boot_source: bool,
}

/// A kernel path nothing can open: stands in until `PUT /boot-source`.
const NO_KERNEL: &str = "";

impl Default for Draft {
    fn default() -> Self {
        Self {
            config: VmConfig::new(BootSource::new(NO_KERNEL)),
            has_boot_source: false,
        }
    }
}

impl Draft {
    /// A draft holding a whole configuration (from `--config-file`).
    pub fn from_config(config: VmConfig) -> Self {
        Self {
            config,
            has_boot_source: true,
        }
    }

    /// True once a boot source or any device was configured (a snapshot
    /// may then no longer be loaded: it brings its own).
    pub fn is_configured(&self) -> bool {
        self.has_boot_source
            || !self.config.drives.is_empty()
            || !self.config.network_interfaces.is_empty()
            || self.config.vsock.is_some()
            || self.config.entropy.is_some()
            || !self.config.pmem.is_empty()
            || self.config.memory_hotplug.is_some()
            || self.config.balloon.is_some()
            || self.config.machine_config.is_some()
            || self.has_vfio()
    }

    /// Whether a host device is passed through (the VM can then be
    /// neither snapshotted nor migrated).
    pub fn has_vfio(&self) -> bool {
        !self.config.vfio.is_empty()
    }

    /// The machine configuration, defaults filled in.
    pub fn machine(&self) -> MachineConfig {
        self.config.machine_config.clone().unwrap_or_default()
    }

    /// The configuration as it stands, unchecked.
    pub fn to_config_unchecked(&self) -> VmConfig {
        self.config.clone()
    }

    /// The configuration to build, checked as a whole.
    pub fn to_config(&self) -> Result<VmConfig, String> {
        if !self.has_boot_source {
            return Err("no boot source: PUT /boot-source before InstanceStart".to_string());
        }
        let mut config = self.config.clone();
        config.machine_config = Some(self.machine());
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    /// Sets the PCI switch (`--enable-pci`).
    pub fn set_pci(&mut self, pci: Option<sie_config::PciConfig>) {
        self.config.pci = pci;
    }

    /// `GET /vm/config`: Firecracker's full shape, absent resources as null,
    /// and sie's `pci` switch (off unless `--enable-pci` or the config file
    /// turned it on).
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.config).unwrap_or(Value::Null);
        if let Value::Object(map) = &mut value {
            if !self.has_boot_source {
                map.insert("boot-source".into(), Value::Null);
            }
            let machine = self.machine();
            let mut machine_value = machine_json(&machine);
            // sie's extension, shown here whether on or off.
            machine_value["nested"] = machine.nested().into();
            map.insert("machine-config".into(), machine_value);
            for key in ["drives", "network-interfaces", "pmem"] {
                map.entry(key).or_insert_with(|| Value::Array(Vec::new()));
            }
            map.entry("pci")
                .or_insert_with(|| serde_json::json!({ "enabled": false }));
            for key in [
                "vsock",
                "entropy",
                "logger",
                "metrics",
                "balloon",
                "mmds-config",
                "cpu-config",
                "memory-hotplug",
            ] {
                map.entry(key).or_insert(Value::Null);
            }
        }
        value
    }

    /// Applies one pre-boot configuration request. Requests that are not
    /// about the configuration are not handled here (`None`).
    pub fn apply(&mut self, request: &Request) -> Option<Response> {
        let result = match request {
            Request::PutBootSource(boot) => self.put_boot_source(boot),
            Request::PutMachineConfig(machine) => self.put_machine(machine.clone()),
            Request::PatchMachineConfig(patch) => self.patch_machine(patch),
            Request::PutCpuConfig(cpu) => self.put_cpu_config(cpu),
            Request::PutDrive(drive) => self.put_drive(drive),
            Request::PutNetworkInterface(nic) => self.put_nic(nic),
            Request::PutVsock(vsock) => self.put_vsock(vsock),
            Request::PutEntropy(entropy) => self.put_entropy(entropy),
            Request::PutPmem(pmem) => self.put_pmem(pmem),
            Request::PutMemoryHotplug(hotplug) => self.put_memory_hotplug(hotplug),
            Request::PutVfio(device) => self.put_vfio(device),
            Request::PutBalloon(balloon) => self.put_balloon(balloon),
            Request::PutMmdsConfig(mmds) => self.put_mmds_config(mmds),
            Request::PutSerial(serial) => self.put_serial(serial),
            _ => return None,
        };
        Some(match result {
            Ok(()) => Response::NoContent,
            Err(message) => Response::Fault(message),
        })
    }

    fn put_mmds_config(&mut self, mmds: &MmdsConfig) -> Result<(), String> {
        let ids = self.config.network_interfaces.iter();
        mmds.validate(ids.map(|nic| nic.iface_id.as_str()))
            .map_err(|e| e.to_string())?;
        self.config.mmds_config = Some(mmds.clone());
        Ok(())
    }

    fn put_boot_source(&mut self, boot: &BootSource) -> Result<(), String> {
        boot.validate().map_err(|e| e.to_string())?;
        check_readable("boot-source: kernel_image_path", &boot.kernel_image_path)?;
        if let Some(initrd) = &boot.initrd_path {
            check_readable("boot-source: initrd_path", initrd)?;
        }
        self.config.boot_source = boot.clone();
        self.has_boot_source = true;
        Ok(())
    }

    fn put_machine(&mut self, machine: MachineConfig) -> Result<(), String> {
        machine.validate().map_err(|e| e.to_string())?;
        if machine.huge_pages() == sie_config::HugePages::TwoMiB {
            crate::guest_memory::check_huge_pages_for(machine.mem_size_mib)?;
        }
        if machine.huge_pages() == sie_config::HugePages::Transparent {
            crate::guest_memory::check_transparent_huge_pages()
                .map_err(|e| format!("machine-config: {e}"))?;
        }
        // The CPU template configured last wins, as in Firecracker.
        if machine.cpu_template().is_some() {
            self.config.cpu_config = None;
        }
        self.config.machine_config = Some(machine);
        Ok(())
    }

    fn put_cpu_config(&mut self, cpu: &CpuConfig) -> Result<(), String> {
        cpu.validate().map_err(|e| e.to_string())?;
        let mut machine = self.machine();
        machine.cpu_template = None;
        self.config.machine_config = Some(machine);
        self.config.cpu_config = Some(cpu.clone());
        Ok(())
    }

    /// The machine configuration and custom template `request` would leave
    /// (for the host checks the controller makes before applying it), or
    /// `None` when it asks nothing of the host's CPU or is invalid anyway.
    pub fn cpu_after(&self, request: &Request) -> Option<(MachineConfig, Option<CpuConfig>)> {
        let machine = match request {
            Request::PutMachineConfig(machine) => machine.clone(),
            Request::PatchMachineConfig(patch) => patch.apply(&self.machine()),
            Request::PutCpuConfig(cpu) => {
                cpu.validate().ok()?;
                let mut machine = self.machine();
                machine.cpu_template = None;
                return Some((machine, Some(cpu.clone())));
            }
            _ => return None,
        };
        machine.validate().ok()?;
        let custom = match machine.cpu_template() {
            Some(_) => None,
            None => self.config.cpu_config.clone(),
        };
        // Nothing asked of the host's CPU: nothing to check.
        if machine.cpu_template().is_none() && custom.is_none() && !machine.nested() {
            return None;
        }
        Some((machine, custom))
    }

    fn patch_machine(&mut self, patch: &MachineConfigPatch) -> Result<(), String> {
        self.put_machine(patch.apply(&self.machine()))
    }

    fn put_drive(&mut self, drive: &Drive) -> Result<(), String> {
        drive.validate().map_err(|e| e.to_string())?;
        check_readable("drives: path_on_host", &drive.path_on_host)?;
        if drive.io_engine == sie_config::IoEngine::Async {
            // Refused here, as Firecracker does, not at InstanceStart.
            sie_virtio::block::async_engine_available().map_err(|e| format!("drives: {e}"))?;
        }
        let others = self
            .config
            .drives
            .iter()
            .filter(|d| d.drive_id != drive.drive_id);
        if drive.is_root_device && others.clone().any(|d| d.is_root_device) {
            return Err(format!(
                "drives: {:?} cannot be the root device: another drive already is",
                drive.drive_id
            ));
        }
        let mut drives: Vec<Drive> = others.cloned().collect();
        // The root drive goes first, so the guest sees it as /dev/vda.
        let at = if drive.is_root_device {
            0
        } else {
            self.config
                .drives
                .iter()
                .position(|d| d.drive_id == drive.drive_id)
                .unwrap_or(drives.len())
                .min(drives.len())
        };
        drives.insert(at, drive.clone());
        self.config.drives = drives;
        Ok(())
    }

    fn put_nic(&mut self, nic: &NetworkInterface) -> Result<(), String> {
        nic.validate().map_err(|e| e.to_string())?;
        for other in self
            .config
            .network_interfaces
            .iter()
            .filter(|n| n.iface_id != nic.iface_id)
        {
            if other.host_dev_name == nic.host_dev_name {
                return Err(format!(
                    "network-interfaces: host_dev_name {:?} is already used by {:?}",
                    nic.host_dev_name, other.iface_id
                ));
            }
            if let (Some(a), Some(b)) = (&other.guest_mac, &nic.guest_mac)
                && a.eq_ignore_ascii_case(b)
            {
                return Err(format!(
                    "network-interfaces: guest_mac {b} is already used by {:?}",
                    other.iface_id
                ));
            }
        }
        let slot = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == nic.iface_id);
        match slot {
            Some(slot) => *slot = nic.clone(),
            None => self.config.network_interfaces.push(nic.clone()),
        }
        Ok(())
    }

    fn put_vsock(&mut self, vsock: &Vsock) -> Result<(), String> {
        vsock.validate().map_err(|e| e.to_string())?;
        self.config.vsock = Some(vsock.clone());
        Ok(())
    }

    /// `PUT /serial`: the fields it gives replace the ones set before.
    fn put_serial(&mut self, serial: &sie_config::SerialConfig) -> Result<(), String> {
        serial.validate().map_err(|e| e.to_string())?;
        let merged = self
            .config
            .serial
            .clone()
            .unwrap_or_default()
            .merged(serial);
        self.config.serial = Some(merged);
        Ok(())
    }

    /// `PUT /pmem/{id}`: adds the device or replaces the one with its id;
    /// one root device among drives and pmem.
    fn put_pmem(&mut self, pmem: &sie_config::Pmem) -> Result<(), String> {
        pmem.validate().map_err(|e| e.to_string())?;
        if pmem.root_device {
            if let Some(drive) = self.config.drives.iter().find(|d| d.is_root_device) {
                return Err(format!(
                    "pmem {}: drive {:?} is already the root device",
                    pmem.id, drive.drive_id
                ));
            }
            if let Some(other) = self
                .config
                .pmem
                .iter()
                .find(|p| p.root_device && p.id != pmem.id)
            {
                return Err(format!(
                    "pmem {}: pmem {:?} is already the root device",
                    pmem.id, other.id
                ));
            }
        }
        match self.config.pmem.iter_mut().find(|p| p.id == pmem.id) {
            Some(slot) => *slot = pmem.clone(),
            None => self.config.pmem.push(pmem.clone()),
        }
        Ok(())
    }

    /// Whether a pmem device has this id.
    pub fn has_pmem(&self, id: &str) -> bool {
        self.config.pmem.iter().any(|p| p.id == id)
    }

    fn put_entropy(&mut self, entropy: &Entropy) -> Result<(), String> {
        entropy.validate().map_err(|e| e.to_string())?;
        self.config.entropy = Some(entropy.clone());
        Ok(())
    }

    fn put_vfio(&mut self, device: &VfioDevice) -> Result<(), String> {
        device.validate().map_err(|e| e.to_string())?;
        device.validate().map_err(|e| e.to_string())?;
        // Before the host checks: the configuration's own conflict first.
        sie_config::check_vfio_with(
            true,
            self.config.balloon.is_some(),
            self.config.memory_hotplug.is_some(),
        )
        .map_err(|e| e.to_string())?;
        // Refused now,        // Refused now, in the one line that says how to fix the host, not
        // at InstanceStart.
        sie_vfio::sysfs::check_device(&device.path, std::path::Path::new("/dev/vfio"))
            .map_err(|e| format!("vfio: {e}"))?;
        let mut devices: Vec<VfioDevice> = self
            .config
            .vfio
            .iter()
            .filter(|d| d.id != device.id)
            .cloned()
            .collect();
        devices.push(device.clone());
        sie_config::validate_vfio(&devices).map_err(|e| e.to_string())?;
        self.config.vfio = devices;
        Ok(())
    }

    fn put_memory_hotplug(&mut self, hotplug: &sie_config::MemoryHotplug) -> Result<(), String> {
        hotplug.validate().map_err(|e| e.to_string())?;
        sie_config::check_vfio_with(self.has_vfio(), self.config.balloon.is_some(), true)
            .map_err(|e| e.to_string())?;
        self.config.memory_hotplug = Some(hotplug.clone());
        Ok(())
    }

    fn put_balloon(&mut self, balloon: &sie_config::Balloon) -> Result<(), String> {
        balloon
            .validate(self.machine().mem_size_mib)
            .map_err(|e| e.to_string())?;
        sie_config::check_vfio_with(self.has_vfio(), true, false).map_err(|e| e.to_string())?;
        self.config.balloon = Some(balloon.clone());
        Ok(())
    }

    /// The balloon as configured (and patched since).
    pub fn balloon(&self) -> Option<&sie_config::Balloon> {
        self.config.balloon.as_ref()
    }

    /// The balloon's settings changed (`PATCH /balloon`, `PATCH
    /// /balloon/statistics`), so `GET /balloon` and `GET /vm/config` show them.
    pub fn balloon_mut(&mut self) -> Option<&mut sie_config::Balloon> {
        self.config.balloon.as_mut()
    }

    /// The drive with this id.
    pub fn drive(&self, id: &str) -> Option<&Drive> {
        self.config.drives.iter().find(|d| d.drive_id == id)
    }

    /// A drive unplugged after boot (`DELETE /drives`).
    pub fn remove_drive(&mut self, id: &str) {
        self.config.drives.retain(|d| d.drive_id != id);
    }

    /// Whether a network interface has this id.
    pub fn has_network_interface(&self, id: &str) -> bool {
        self.config
            .network_interfaces
            .iter()
            .any(|n| n.iface_id == id)
    }

    /// A network interface unplugged after boot.
    pub fn remove_network_interface(&mut self, id: &str) {
        self.config.network_interfaces.retain(|n| n.iface_id != id);
    }

    /// A drive's backing file changed after boot (`PATCH /drives`).
    pub fn set_drive_path(&mut self, id: &str, path: &Path) {
        if let Some(drive) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
            drive.path_on_host = path.to_path_buf();
        }
    }

    /// A drive's rate limiter was patched after boot: merged as the
    /// device merged it, so `GET /vm/config` shows what is in force.
    pub fn patch_drive_rate_limiter(&mut self, id: &str, patch: &sie_config::RateLimiter) {
        if let Some(drive) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
            let merged = sie_config::RateLimiter::merged(drive.rate_limiter.as_deref(), patch);
            drive.rate_limiter = Some(Box::new(merged));
        }
    }

    /// [`Self::patch_drive_rate_limiter`] for a network interface.
    pub fn patch_nic_rate_limiters(
        &mut self,
        id: &str,
        rx: Option<&sie_config::RateLimiter>,
        tx: Option<&sie_config::RateLimiter>,
    ) {
        let Some(nic) = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == id)
        else {
            return;
        };
        for (slot, patch) in [
            (&mut nic.rx_rate_limiter, rx),
            (&mut nic.tx_rate_limiter, tx),
        ] {
            if let Some(patch) = patch {
                let merged = sie_config::RateLimiter::merged(slot.as_deref(), patch);
                *slot = Some(Box::new(merged));
            }
        }
    }

    /// Records the logger and metrics settings so `GET /vm/config` shows them.
    pub fn note_logging(
        &mut self,
        logger: Option<sie_config::Logger>,
        metrics: Option<sie_config::Metrics>,
    ) {
        if logger.is_some() {
            self.config.logger = logger;
        }
        if metrics.is_some() {
            self.config.metrics = metrics;
        }
    }
}

/// `GET /machine-config`: Firecracker fills in its defaults.
pub fn machine_json(machine: &MachineConfig) -> Value {
    let mut json = serde_json::json!({
        "vcpu_count": machine.vcpu_count,
        "mem_size_mib": machine.mem_size_mib,
        "smt": machine.smt.unwrap_or(false),
        "track_dirty_pages": machine.track_dirty_pages.unwrap_or(false),
        "huge_pages": machine.huge_pages.clone().unwrap_or_else(|| "None".to_string()),
    });
    let Some(map) = json.as_object_mut() else {
        return json;
    };
    // Firecracker shows it only when set (and only in its gdb build).
    if let Some(path) = &machine.gdb_socket_path {
        map.insert("gdb_socket_path".into(), path.clone().into());
    }
    if let Some(template) = machine.cpu_template() {
        map.insert("cpu_template".into(), template.name().into());
    }
    if machine.nested() {
        map.insert("nested".into(), true.into());
    }
    // sie's extension, shown when on.
    if machine.shared_memory() {
        map.insert("shared_memory".into(), true.into());
    }
    json
}

/// Fails early, naming the field, when a file cannot be opened: the client
/// learns of a typo from the request that made it, not from InstanceStart.
fn check_readable(field: &str, path: &Path) -> Result<(), String> {
    match std::fs::File::open(path) {
        Ok(file) if file.metadata().map(|m| m.is_dir()).unwrap_or(false) => {
            Err(format!("{field}: {} is a directory", path.display()))
        }
        Ok(_) => Ok(()),
        Err(error) => Err(format!("{field}: cannot open {}: {error}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(id: &str, path: &Path, root: bool) -> Drive {
        serde_json::from_value(serde_json::json!({
            "drive_id": id, "path_on_host": path, "is_root_device": root,
        }))
        .unwrap()
    }

    fn fault(response: Option<Response>) -> String {
        match response {
            Some(Response::Fault(message)) => message,
            other => panic!("expected a fault, got {other:?}"),
        }
    }

    fn scratch_file(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("sie-draft-{}-{name}", std::process::id()));
        std::fs::write(&path, b"").unwrap();
        path
    }

    #[test]
    fn get_vm_config_shows_the_pci_switch() {
        let mut draft = Draft::default();
        assert_eq!(
            draft.to_json()["pci"],
            serde_json::json!({"enabled": false})
        );
        draft.set_pci(Some(sie_config::PciConfig { enabled: true }));
        assert_eq!(draft.to_json()["pci"], serde_json::json!({"enabled": true}));
        assert!(draft.to_config_unchecked().pci_enabled());
    }

    #[test]
    fn start_needs_a_boot_source() {
        let mut draft = Draft::default();
        assert!(draft.to_config().unwrap_err().contains("PUT /boot-source"));
        assert_eq!(draft.to_json()["boot-source"], Value::Null);
        let kernel = scratch_file("kernel");
        let put = Request::PutBootSource(BootSource::new(&kernel));
        assert_eq!(draft.apply(&put), Some(Response::NoContent));
        assert_eq!(
            draft.to_config().unwrap().boot_source.kernel_image_path,
            kernel
        );
    }

    #[test]
    fn a_vfio_device_that_cannot_be_passed_is_refused_at_put() {
        let mut draft = Draft::default();
        let device = VfioDevice {
            id: "edu".into(),
            path: "/sys/bus/pci/devices/0000:7f:1f.7".into(),
        };
        let message = fault(draft.apply(&Request::PutVfio(device)));
        assert!(message.starts_with("vfio: "), "{message}");
        assert!(message.contains("no such PCI device"), "{message}");
        assert!(!draft.has_vfio() && !draft.is_configured());
    }

    #[test]
    fn vfio_with_a_balloon_or_hotplug_memory_is_refused_at_either_put() {
        let device = VfioDevice {
            id: "gpu".into(),
            path: "/sys/bus/pci/devices/0000:00:03.0".into(),
        };
        let balloon: sie_config::Balloon =
            serde_json::from_value(serde_json::json!({"amount_mib": 0, "deflate_on_oom": false}))
                .unwrap();
        let hotplug: sie_config::MemoryHotplug =
            serde_json::from_value(serde_json::json!({"total_size_mib": 1024})).unwrap();
        // The device first: the balloon and the hotplug memory are refused.
        let mut config = VmConfig::new(BootSource::new("k"));
        config.vfio.push(device.clone());
        let mut draft = Draft::from_config(config);
        let message = fault(draft.apply(&Request::PutBalloon(balloon.clone())));
        assert!(message.starts_with("vfio and balloon cannot"), "{message}");
        let message = fault(draft.apply(&Request::PutMemoryHotplug(hotplug.clone())));
        assert!(
            message.starts_with("vfio and memory-hotplug cannot"),
            "{message}"
        );
        assert!(draft.balloon().is_none());
        assert!(draft.to_config_unchecked().memory_hotplug.is_none());
        // The balloon or the hotplug memory first: the device is refused.
        for request in [
            Request::PutBalloon(balloon),
            Request::PutMemoryHotplug(hotplug),
        ] {
            let mut draft = Draft::default();
            assert_eq!(draft.apply(&request), Some(Response::NoContent));
            let message = fault(draft.apply(&Request::PutVfio(device.clone())));
            assert!(message.starts_with("vfio and "), "{message}");
            assert!(!draft.has_vfio());
        }
    }

    #[test]
    fn missing_files_are_refused_with_the_field_named() {
        let mut draft = Draft::default();
        let message = fault(draft.apply(&Request::PutBootSource(BootSource::new("/no/such"))));
        assert!(message.contains("kernel_image_path"), "{message}");
        let message = fault(draft.apply(&Request::PutDrive(drive(
            "root",
            Path::new("/no/such"),
            true,
        ))));
        assert!(message.contains("path_on_host"), "{message}");
    }

    #[test]
    fn machine_config_put_patch_and_limits() {
        let mut draft = Draft::default();
        let patch = MachineConfigPatch {
            vcpu_count: Some(2),
            ..Default::default()
        };
        assert_eq!(
            draft.apply(&Request::PatchMachineConfig(patch)),
            Some(Response::NoContent)
        );
        assert_eq!(draft.machine().vcpu_count, 2);
        assert_eq!(draft.machine().mem_size_mib, 128);
        let bad = MachineConfig {
            vcpu_count: 0,
            ..Default::default()
        };
        assert!(fault(draft.apply(&Request::PutMachineConfig(bad))).contains("vcpu_count"));
        assert_eq!(
            draft.machine().vcpu_count,
            2,
            "a refused request changes nothing"
        );
        assert_eq!(machine_json(&draft.machine())["huge_pages"], "None");
    }

    #[test]
    fn drives_are_replaced_by_id_and_the_root_goes_first() {
        let file = scratch_file("disk");
        let mut draft = Draft::default();
        draft.apply(&Request::PutDrive(drive("data", &file, false)));
        draft.apply(&Request::PutDrive(drive("root", &file, true)));
        draft.apply(&Request::PutDrive(drive("data", &file, false)));
        let ids: Vec<_> = draft
            .config
            .drives
            .iter()
            .map(|d| d.drive_id.as_str())
            .collect();
        assert_eq!(ids, ["root", "data"]);
        let message = fault(draft.apply(&Request::PutDrive(drive("other", &file, true))));
        assert!(message.contains("root device"), "{message}");
        // Replacing the root drive with itself is fine.
        assert_eq!(
            draft.apply(&Request::PutDrive(drive("root", &file, true))),
            Some(Response::NoContent)
        );
    }

    #[test]
    fn a_drive_shows_the_cache_type_and_io_engine_in_effect() {
        let file = scratch_file("engines");
        let mut draft = Draft::default();
        // Absent: Firecracker's defaults, spelled out in GET /vm/config.
        draft.apply(&Request::PutDrive(drive("data", &file, false)));
        let mut chosen = drive("fast", &file, false);
        chosen.cache_type = sie_config::CacheType::Writeback;
        chosen.io_engine = sie_config::IoEngine::Async;
        assert_eq!(
            draft.apply(&Request::PutDrive(chosen)),
            Some(Response::NoContent)
        );
        let drives = &draft.to_json()["drives"];
        assert_eq!(drives[0]["cache_type"], "Unsafe");
        assert_eq!(drives[0]["io_engine"], "Sync");
        assert_eq!(drives[1]["cache_type"], "Writeback");
        assert_eq!(drives[1]["io_engine"], "Async");
    }

    #[test]
    fn network_interfaces_must_not_share_a_tap_or_mac() {
        let nic = |id: &str, tap: &str, mac: &str| NetworkInterface {
            iface_id: id.into(),
            host_dev_name: tap.into(),
            guest_mac: Some(mac.into()),
            mtu: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
        };
        let mut draft = Draft::default();
        let first = nic("eth0", "tap0", "06:00:00:00:00:01");
        assert_eq!(
            draft.apply(&Request::PutNetworkInterface(first)),
            Some(Response::NoContent)
        );
        let same_tap = nic("eth1", "tap0", "06:00:00:00:00:02");
        assert!(fault(draft.apply(&Request::PutNetworkInterface(same_tap))).contains("tap0"));
        let same_mac = nic("eth1", "tap1", "06:00:00:00:00:01");
        assert!(fault(draft.apply(&Request::PutNetworkInterface(same_mac))).contains("guest_mac"));
        let replaced = nic("eth0", "tap9", "06:00:00:00:00:01");
        assert_eq!(
            draft.apply(&Request::PutNetworkInterface(replaced)),
            Some(Response::NoContent)
        );
        assert_eq!(draft.config.network_interfaces.len(), 1);
    }

    #[test]
    fn the_cpu_template_configured_last_wins() {
        let mut draft = Draft::default();
        let t2 = MachineConfig {
            cpu_template: Some("T2".into()),
            nested: Some(true),
            ..Default::default()
        };
        assert_eq!(
            draft.apply(&Request::PutMachineConfig(t2.clone())),
            Some(Response::NoContent)
        );
        let json = draft.to_json();
        assert_eq!(json["machine-config"]["cpu_template"], "T2");
        assert_eq!(json["machine-config"]["nested"], true);
        assert_eq!(json["cpu-config"], Value::Null);
        let custom: CpuConfig = serde_json::from_str(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "ecx", "bitmap": "0b0xxxxx"}]}]}"#,
        )
        .unwrap();
        let (machine, after) = draft
            .cpu_after(&Request::PutCpuConfig(custom.clone()))
            .unwrap();
        assert_eq!(
            (machine.cpu_template, after.as_ref()),
            (None, Some(&custom))
        );
        assert_eq!(
            draft.apply(&Request::PutCpuConfig(custom)),
            Some(Response::NoContent)
        );
        let json = draft.to_json();
        assert_eq!(json["machine-config"].get("cpu_template"), None);
        assert_eq!(
            json["cpu-config"]["cpuid_modifiers"][0]["modifiers"][0]["bitmap"],
            "0bxxxxxxxxxxxxxxxxxxxxxxxxxx0xxxxx"
        );
        assert!(draft.to_config().is_err(), "no boot source yet, but...");
        // ...a static template again replaces the custom one.
        draft.apply(&Request::PutMachineConfig(t2));
        assert_eq!(draft.to_json()["cpu-config"], Value::Null);
        let arm: CpuConfig = serde_json::from_str(r#"{"vcpu_features": [{}]}"#).unwrap();
        assert!(fault(draft.apply(&Request::PutCpuConfig(arm))).contains("aarch64"));
    }

    #[test]
    fn non_config_requests_are_left_alone() {
        assert_eq!(Draft::default().apply(&Request::GetInstanceInfo), None);
    }
}
