//! The one configuration model of sie.
//!
//! One serde struct per resource, in Firecracker's JSON shapes, each with
//! its own `validate()` and error enum; [`VmConfig`] holds them all. The CLI
//! flags, `--config-file` and the REST API all fill these structs,
//! so a value means the same thing wherever it came from.
//!
//! ```
//! use sie_config::{VmConfig, parse_mem_size_mib};
//!
//! let config = VmConfig::from_json(r#"{
//!     "boot-source": {"kernel_image_path": "vmlinux"},
//!     "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
//! }"#).unwrap();
//! config.validate().unwrap();
//! assert_eq!(parse_mem_size_mib("2G"), Ok(2048));
//! ```

mod balloon;
mod boot_source;
mod cli_spec;
mod console;
mod cpu_config;
mod devices;
mod hotplug;
mod logging;
mod machine_config;
mod migration;
mod mmds;
mod pci;
mod pmem;
mod request;
mod resource_id;
mod serial;
mod size;
mod snapshot;
mod vfio;
mod vm_config;

pub use balloon::{
    BALLOON_PAGES_PER_MIB, Balloon, BalloonConfigError, BalloonStartCmd, BalloonStatsUpdate,
    BalloonUpdate, check_amount,
};
pub use boot_source::{
    BootSource, BootSourceError, DEFAULT_BOOT_ARGS, DEFAULT_BOOT_ARGS_VIRTIO_CONSOLE,
    MAX_BOOT_ARGS_LEN,
};
pub use cli_spec::{SpecError, parse_disk, parse_net, parse_vsock};
pub use console::{ConsoleConfig, ConsoleDevice, ConsoleDeviceError};
pub use cpu_config::{
    Bitmap, CpuConfig, CpuConfigError, CpuidLeafModifier, CpuidRegister, CpuidRegisterModifier,
    KvmCapability, MsrModifier,
};
pub use devices::{
    CacheType, DeviceConfigError, Drive, Entropy, IoEngine, MIN_MTU, NetworkInterface, RateLimiter,
    TokenBucket, Vsock, is_mac,
};
pub use hotplug::{HotplugConfigError, MAX_HOTPLUG_MIB, MemoryHotplug, MemoryHotplugPatch};
pub use logging::{Logger, LoggerError, Metrics};
pub use machine_config::{
    CpuTemplate, MAX_MEM_SIZE_MIB, MAX_VCPUS_SIE, MachineConfig, MachineConfigError,
};
pub use migration::{MigrationMode, MigrationReceive, MigrationSend, check_migration_url};
pub use mmds::{DEFAULT_MMDS_IPV4, MmdsConfig, MmdsConfigError, MmdsVersion};
pub use pci::PciConfig;
pub use pmem::{Pmem, PmemConfigError, PmemPatch};
pub use request::{
    ActionType, DrivePatch, FIRECRACKER_API_VERSION, MachineConfigPatch, NetworkInterfacePatch,
    Request, Response, VmState,
};
pub use resource_id::{IdError, MAX_ID_LEN, validate_id, validate_instance_id};
pub use serial::{
    DEFAULT_CONSOLE_BUFFER_BYTES, MAX_CONSOLE_BUFFER_BYTES, SerialConfig, SerialConfigError, VmDump,
};
pub use size::{SizeError, parse_mem_size_mib};
pub use snapshot::{
    HugePages, LoadPlan, MemBackend, MemBackendType, NetworkOverride, SnapshotCreate, SnapshotLoad,
    SnapshotType, VsockOverride,
};
pub use vfio::{
    VFIO_NOT_SNAPSHOTTABLE, VfioConfigError, VfioDevice, check_vfio_with, validate_vfio,
};
pub use vm_config::{ConfigError, VmConfig};
