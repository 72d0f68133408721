//! The whole VM configuration: Firecracker's config-file shape.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::boot_source::{BootSource, BootSourceError};
use crate::devices::{DeviceConfigError, Drive, Entropy, NetworkInterface, Vsock};
use crate::logging::{Logger, LoggerError, Metrics};
use crate::machine_config::{MachineConfig, MachineConfigError};
use crate::mmds::{MmdsConfig, MmdsConfigError};
use crate::serial::{SerialConfig, SerialConfigError};

/// Every resource of one VM. The CLI, the config file and the API
/// all fill this one struct.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Kernel, command line, initrd.
    #[serde(rename = "boot-source")]
    pub boot_source: BootSource,
    /// vCPUs and memory; defaults when absent.
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    /// Block devices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<Drive>,
    /// Network devices.
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The vsock device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// The entropy device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<Entropy>,
    /// Logging.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    /// Metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// The balloon device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<crate::balloon::Balloon>,
    /// The metadata service: which interfaces carry it, and how.
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<MmdsConfig>,
    /// A custom CPU template (Firecracker's format).
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<crate::cpu_config::CpuConfig>,
    /// Hotpluggable memory (virtio-mem).
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<crate::hotplug::MemoryHotplug>,
    /// virtio-pmem devices, `/dev/pmem0` first (null reads as none).
    #[serde(
        default,
        deserialize_with = "crate::pmem::null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub pmem: Vec<crate::pmem::Pmem>,
    /// COM1 on the host: an output file (Firecracker's `serial`), and
    /// sie's console socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<SerialConfig>,
    /// sie: a directory where a guest that panics (pvpanic) leaves an ELF
    /// core file before sie exits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump_on_panic: Option<std::path::PathBuf>,
    /// sie: the virtio devices on PCI instead of MMIO (Firecracker's
    /// `--enable-pci`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci: Option<crate::PciConfig>,
    /// sie: host PCI devices passed through (VFIO).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vfio: Vec<crate::VfioDevice>,
    /// sie: which device carries the console (COM1 unless it says virtio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<crate::ConsoleConfig>,
}

/// Why a configuration could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}")]
    Read {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is malformed or has the wrong shape.
    #[error("{origin}: {message}")]
    Parse {
        /// "config file PATH" or "config".
        origin: String,
        /// What is wrong and where.
        message: String,
    },
    /// `boot-source` is invalid.
    #[error(transparent)]
    BootSource(#[from] BootSourceError),
    /// `machine-config` is invalid.
    #[error(transparent)]
    MachineConfig(#[from] MachineConfigError),
    /// A device resource is invalid.
    #[error(transparent)]
    Device(#[from] DeviceConfigError),
    /// `logger` is invalid.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// `serial` is invalid.
    #[error(transparent)]
    Serial(#[from] SerialConfigError),
    /// `vfio` is invalid.
    #[error(transparent)]
    Vfio(#[from] crate::VfioConfigError),
    /// Two resources share an id.
    #[error("{resource}: id {id:?} is used twice")]
    DuplicateId {
        /// "drives" or "network-interfaces".
        resource: &'static str,
        /// The id.
        id: String,
    },
    /// `cpu-config` is invalid.
    #[error(transparent)]
    CpuConfig(#[from] crate::cpu_config::CpuConfigError),
    /// A static and a custom CPU template at once.
    #[error(
        "machine-config: cpu_template {0:?} and a cpu-config section: use one CPU template, not both"
    )]
    TwoCpuTemplates(String),
    /// `balloon` is invalid.
    #[error(transparent)]
    Balloon(#[from] crate::balloon::BalloonConfigError),
    /// `mmds-config` is invalid.
    #[error("mmds-config: {0}")]
    Mmds(#[from] MmdsConfigError),
    /// A Firecracker section sie does not offer yet.
    #[error("{0} is not supported yet")]
    NotSupported(&'static str),
    /// More than one root device.
    #[error("drives, pmem: more than one device is the root device (is_root_device, root_device)")]
    SeveralRoots,
    /// `memory-hotplug` is invalid.
    #[error(transparent)]
    Hotplug(#[from] crate::hotplug::HotplugConfigError),
    /// A `pmem` entry is invalid.
    #[error(transparent)]
    Pmem(#[from] crate::pmem::PmemConfigError),
}

impl VmConfig {
    /// A configuration booting `boot_source` with default everything else.
    pub fn new(boot_source: BootSource) -> Self {
        Self {
            boot_source,
            machine_config: None,
            drives: Vec::new(),
            network_interfaces: Vec::new(),
            vsock: None,
            entropy: None,
            logger: None,
            metrics: None,
            balloon: None,
            mmds_config: None,
            cpu_config: None,
            memory_hotplug: None,
            pmem: Vec::new(),
            serial: None,
            dump_on_panic: None,
            pci: None,
            vfio: Vec::new(),
            console: None,
        }
    }

    /// The device that carries the console (`serial` unless the `console`
    /// section says otherwise).
    pub fn console_device(&self) -> crate::ConsoleDevice {
        self.console.map(|c| c.device).unwrap_or_default()
    }

    /// Whether the VM has a PCI bus (its virtio devices then go on it): the
    /// `pci` switch, or any passed-through (`vfio`) device.
    pub fn pci_enabled(&self) -> bool {
        // A passed-through device needs a PCI bus: it turns PCI on.
        self.pci.is_some_and(|pci| pci.enabled) || !self.vfio.is_empty()
    }

    /// Parses a config file's text; `origin` names it in errors.
    pub fn from_json_named(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            origin: origin.to_string(),
            message,
        };
        if text.trim().is_empty() {
            return Err(parse_error("the file is empty".to_string()));
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let config: VmConfig =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                let message = if path.is_empty() || path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                };
                parse_error(message)
            })?;
        deserializer
            .end()
            .map_err(|e| parse_error(format!("trailing characters after the JSON: {e}")))?;
        Ok(config)
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        Self::from_json_named(text, "config")
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json_named(&text, &format!("config file {}", path.display()))
    }

    /// Checks every resource and the rules between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(hotplug) = &self.memory_hotplug {
            hotplug.validate()?;
        }
        self.boot_source.validate()?;
        if let Some(machine) = &self.machine_config {
            machine.validate()?;
        }
        if let Some(cpu) = &self.cpu_config {
            cpu.validate()?;
            if let Some(template) = self.machine_config.as_ref().and_then(|m| m.cpu_template()) {
                return Err(ConfigError::TwoCpuTemplates(template.name().to_string()));
            }
        }
        let mut drive_ids = std::collections::BTreeSet::new();
        for drive in &self.drives {
            drive.validate()?;
            if !drive_ids.insert(drive.drive_id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    resource: "drives",
                    id: drive.drive_id.clone(),
                });
            }
        }
        let mut pmem_ids = std::collections::BTreeSet::new();
        for pmem in &self.pmem {
            pmem.validate()?;
            if !pmem_ids.insert(pmem.id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    resource: "pmem",
                    id: pmem.id.clone(),
                });
            }
        }
        let roots = self.drives.iter().filter(|d| d.is_root_device).count()
            + self.pmem.iter().filter(|p| p.root_device).count();
        if roots > 1 {
            return Err(ConfigError::SeveralRoots);
        }
        let mut iface_ids = std::collections::BTreeSet::new();
        for nic in &self.network_interfaces {
            nic.validate()?;
            if !iface_ids.insert(nic.iface_id.as_str()) {
                return Err(ConfigError::DuplicateId {
                    resource: "network-interfaces",
                    id: nic.iface_id.clone(),
                });
            }
        }
        if let Some(mmds) = &self.mmds_config {
            mmds.validate(self.network_interfaces.iter().map(|n| n.iface_id.as_str()))?;
        }
        if let Some(vsock) = &self.vsock {
            vsock.validate()?;
        }
        if let Some(entropy) = &self.entropy {
            entropy.validate()?;
        }
        if let Some(logger) = &self.logger {
            logger.validate()?;
        }
        if let Some(serial) = &self.serial {
            serial.validate()?;
        }
        crate::validate_vfio(&self.vfio)?;
        crate::vfio::check_vfio_with(
            !self.vfio.is_empty(),
            self.balloon.is_some(),
            self.memory_hotplug.is_some(),
        )?;
        if let Some(balloon) = &self.balloon {
            let mem = self.machine_config.clone().unwrap_or_default().mem_size_mib;
            balloon.validate(mem)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"{
      "boot-source": {
        "kernel_image_path": "vmlinux.bin",
        "boot_args": "console=ttyS0 reboot=k panic=1 pci=off",
        "initrd_path": null
      },
      "drives": [
        {"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true,
         "is_read_only": false, "partuuid": null, "cache_type": "Writeback",
         "io_engine": "Sync", "rate_limiter": null}
      ],
      "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                         "track_dirty_pages": false},
      "network-interfaces": [
        {"iface_id": "eth0", "guest_mac": "AA:FC:00:00:00:01", "host_dev_name": "tap0"}
      ],
      "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": "vsock0"},
      "logger": {"log_path": "/tmp/log", "level": "Info"},
      "metrics": {"metrics_path": "/tmp/metrics", "emit_id": true, "properties": {"k": "v"}},
      "entropy": {"rate_limiter": {"bandwidth": null, "ops": null}}
    }"#;

    #[test]
    fn a_firecracker_config_file_round_trips() {
        let config = VmConfig::from_json(FULL).unwrap();
        config.validate().unwrap();
        let machine = config.machine_config.as_ref().unwrap();
        assert_eq!((machine.vcpu_count, machine.mem_size_mib), (2, 1024));
        assert_eq!(config.drives[0].drive_id, "rootfs");
        assert!(config.drives[0].is_root_device);
        assert_eq!(config.network_interfaces[0].host_dev_name, "tap0");
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(VmConfig::from_json(&text).unwrap(), config);
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let error = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpus": 2}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("machine-config"), "{error}");
        assert!(error.contains("unknown field `vcpus`"), "{error}");
        let error =
            VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}, "cpus": 1}"#)
                .unwrap_err()
                .to_string();
        assert!(error.contains("unknown field `cpus`"), "{error}");
    }

    #[test]
    fn wrong_types_missing_fields_and_bad_json_are_named() {
        let error = VmConfig::from_json(
            r#"{"boot-source": {"kernel_image_path": "k"},
                "machine-config": {"vcpu_count": "two", "mem_size_mib": 1}}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("machine-config.vcpu_count"), "{error}");
        let error =
            VmConfig::from_json(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 1}}"#)
                .unwrap_err()
                .to_string();
        assert!(error.contains("boot-source"), "{error}");
        let error = VmConfig::from_json("{ not json").unwrap_err().to_string();
        assert!(error.starts_with("config: "), "{error}");
        let error = VmConfig::from_json("  ").unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        assert!(VmConfig::from_json(r#"{"boot-source": {"kernel_image_path": "k"}} x"#).is_err());
    }

    #[test]
    fn files_are_named_in_errors() {
        let error = VmConfig::from_file(Path::new("/nonexistent/sie.json")).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/nonexistent/sie.json"), "{text}");
    }

    #[test]
    fn settings_sie_cannot_honour_are_refused_from_a_config_file() {
        // Every drive setting is honoured now: nothing left to refuse here.
        let config = VmConfig::from_json(FULL).unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn every_cache_type_and_io_engine_is_accepted_from_a_config_file() {
        let text = FULL
            .replace(r#""cache_type": "Writeback""#, r#""cache_type": "Unsafe""#)
            .replace(r#""io_engine": "Sync""#, r#""io_engine": "Async""#);
        let config = VmConfig::from_json(&text).unwrap();
        config.validate().unwrap();
        let drive = &config.drives[0];
        assert_eq!(
            (drive.cache_type, drive.io_engine),
            (crate::CacheType::Unsafe, crate::IoEngine::Async)
        );
        let error = VmConfig::from_json(&FULL.replace(r#""Sync""#, r#""Fast""#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("drives[0].io_engine"), "{error}");
    }

    #[test]
    fn track_dirty_pages_is_taken_from_a_config_file() {
        let text = FULL.replace(
            r#""track_dirty_pages": false"#,
            r#""track_dirty_pages": true"#,
        );
        let config = VmConfig::from_json(&text).unwrap();
        config.validate().unwrap();
        let machine = config.machine_config.unwrap();
        assert_eq!(machine.track_dirty_pages, Some(true));
    }

    #[test]
    fn rate_limiters_that_limit_are_accepted_from_a_config_file() {
        let text = FULL
            .replace(
                r#""rate_limiter": null"#,
                r#""rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}"#,
            )
            .replace(
                r#""bandwidth": null, "ops": null"#,
                r#""ops": {"size": 10, "refill_time": 100}"#,
            );
        let config = VmConfig::from_json(&text).unwrap();
        assert_eq!(config.validate().map_err(|e| e.to_string()), Ok(()));
        assert!(config.drives[0].rate_limiter.as_ref().unwrap().limits());
        assert!(config.entropy.unwrap().rate_limiter.unwrap().limits());
    }

    #[test]
    fn pmem_entries_are_checked_and_share_the_one_root() {
        let with = |section: &str| {
            let text = FULL.replacen('{', &format!("{{{section},"), 1);
            VmConfig::from_json(&text).unwrap().validate()
        };
        with(r#""pmem": [{"id": "pm0", "path_on_host": "p", "read_only": true}]"#).unwrap();
        let twice =
            with(r#""pmem": [{"id": "a", "path_on_host": "p"}, {"id": "a", "path_on_host": "q"}]"#);
        assert!(matches!(
            twice,
            Err(ConfigError::DuplicateId {
                resource: "pmem",
                ..
            })
        ));
        let two_roots = FULL.replacen(
            '{',
            r#"{"pmem": [{"id": "a", "path_on_host": "p", "root_device": true}],"#,
            1,
        );
        let mut config = VmConfig::from_json(&two_roots).unwrap();
        assert!(config.drives[0].is_root_device);
        assert!(matches!(config.validate(), Err(ConfigError::SeveralRoots)));
        config.drives[0].is_root_device = false;
        config.validate().unwrap();
    }

    #[test]
    fn memory_hotplug_is_checked_and_null_sections_are_none() {
        let with = |section: &str| {
            let text = FULL.replacen('{', &format!("{{{section},"), 1);
            VmConfig::from_json(&text)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string()
        };
        let message = with(r#""memory-hotplug": {"total_size_mib": 1000}"#);
        assert!(
            message.contains("memory-hotplug: total_size_mib 1000"),
            "{message}"
        );
        let good = FULL.replacen('{', r#"{"memory-hotplug": {"total_size_mib": 1024},"#, 1);
        VmConfig::from_json(&good).unwrap().validate().unwrap();
        let nulls = FULL.replacen('{', r#"{"pmem": null, "memory-hotplug": null,"#, 1);
        VmConfig::from_json(&nulls).unwrap().validate().unwrap();
    }

    #[test]
    fn vfio_with_a_balloon_or_hotplug_memory_is_refused_in_one_line() {
        let vfio = r#""vfio": [{"id": "gpu", "path": "/sys/bus/pci/devices/0000:00:03.0"}]"#;
        let with = |section: &str| {
            let text = FULL.replacen('{', &format!("{{{vfio}, {section},"), 1);
            let config = VmConfig::from_json(&text).unwrap();
            config.validate().map_err(|e| e.to_string())
        };
        let balloon = with(r#""balloon": {"amount_mib": 0, "deflate_on_oom": false}"#);
        assert!(
            balloon
                .unwrap_err()
                .starts_with("vfio and balloon cannot be combined"),
            "a balloon"
        );
        let hotplug = with(r#""memory-hotplug": {"total_size_mib": 1024}"#);
        assert!(
            hotplug
                .unwrap_err()
                .starts_with("vfio and memory-hotplug cannot be combined"),
            "hotplug memory"
        );
        with(r#""pci": {"enabled": true}"#).unwrap();
    }

    #[test]
    fn cpu_config_section_is_read_and_one_template_at_most() {
        let section = r#""cpu-config": {"cpuid_modifiers": [{"leaf": "0x7", "subleaf": "0x0",
            "flags": 1, "modifiers": [{"register": "ebx", "bitmap": "0b0xxxxx"}]}]}"#;
        let text = FULL.replacen('{', &format!("{{{section},"), 1);
        let config = VmConfig::from_json(&text).unwrap();
        config.validate().unwrap();
        let cpu = config.cpu_config.as_ref().unwrap();
        assert_eq!(cpu.cpuid_modifiers[0].modifiers[0].bitmap.mask, 1 << 5);
        // With a static template too: refused, naming both.
        let both = text.replace(
            r#""track_dirty_pages": false}"#,
            r#""track_dirty_pages": false, "cpu_template": "T2S"}"#,
        );
        let error = VmConfig::from_json(&both).unwrap().validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            "machine-config: cpu_template \"T2S\" and a cpu-config section: use one CPU template, not both"
        );
        // aarch64 settings in the section are refused when the file is checked.
        let arm = FULL.replacen('{', r#"{"cpu-config": {"reg_modifiers": [{}]},"#, 1);
        let error = VmConfig::from_json(&arm).unwrap().validate().unwrap_err();
        assert!(error.to_string().contains("aarch64"), "{error}");
        let null = FULL.replacen('{', r#"{"cpu-config": null,"#, 1);
        VmConfig::from_json(&null).unwrap().validate().unwrap();
    }

    #[test]
    fn cross_resource_rules() {
        let mut config = VmConfig::from_json(FULL).unwrap();
        let mut second = config.drives[0].clone();
        config.drives.push(second.clone());
        assert!(matches!(
            config.validate(),
            Err(ConfigError::DuplicateId {
                resource: "drives",
                ..
            })
        ));
        second.drive_id = "data".into();
        config.drives[1] = second;
        assert!(matches!(config.validate(), Err(ConfigError::SeveralRoots)));
    }

    #[test]
    fn mmds_config_section_names_configured_interfaces() {
        let with = |section: &str| {
            let text = FULL.replacen('{', &format!("{{{section},"), 1);
            VmConfig::from_json(&text).unwrap().validate()
        };
        with(r#""mmds-config": {"version": "V2", "network_interfaces": ["eth0"]}"#).unwrap();
        let config = VmConfig::from_json(&FULL.replacen(
            '{',
            r#"{"mmds-config": {"network_interfaces": ["eth0"], "imds_compat": true},"#,
            1,
        ))
        .unwrap();
        let mmds = config.mmds_config.unwrap();
        assert!(mmds.imds_compat);
        assert_eq!(mmds.ipv4(), crate::DEFAULT_MMDS_IPV4);
        let message = with(r#""mmds-config": {"network_interfaces": ["eth9"]}"#)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("mmds-config: "), "{message}");
        assert!(message.contains("existing network interface"), "{message}");
    }
}
