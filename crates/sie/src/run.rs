//! `sie run`: fill the configuration from the config file and the flags,
//! serve the VM through the same controller as the API (with no socket),
//! report how it ended.

use std::time::Instant;

use sie_config::{BootSource, VmConfig};
use sie_hv::kvm::Kvm;
use sie_vmm::controller::{self, NoRequests, ServeOptions, Served};
use sie_vmm::{BuildOptions, VmOutcome};

use crate::cli::RunArgs;

type BoxError = Box<dyn std::error::Error>;

/// Errors of the command line itself (not of the VM).
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("no kernel given: pass --kernel PATH or a --config-file with boot-source")]
    NoKernel,
    #[error("invalid --memory {value:?}")]
    Memory {
        value: String,
        #[source]
        source: sie_config::SizeError,
    },
    #[error("--log-level")]
    LogLevel(#[source] crate::logging::LogError),
    #[error("--vcpus {0} is out of range: at least 1, at most {max}", max = sie_vmm::MAX_VCPUS)]
    Vcpus(u64),
    #[error("--cpu-config {}: {message}", path.display())]
    CpuConfig {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("--seccomp-filter")]
    SeccompFilter(#[source] sie_seccomp::SeccompError),
    #[error(
        "--net-override, --vsock-override, --clock-realtime and --huge-pages apply to --restore only"
    )]
    OverrideWithoutRestore,
}

/// The seccomp filters the flags ask for: sie's own unless `--no-seccomp`,
/// or the policy in `--seccomp-filter FILE`.
pub fn seccomp_filters(
    no_seccomp: bool,
    file: Option<&std::path::Path>,
) -> Result<sie_seccomp::Seccomp, BoxError> {
    Ok(match file {
        _ if no_seccomp => sie_seccomp::Seccomp::disabled(),
        Some(path) => sie_seccomp::Seccomp::from_file(path).map_err(RunError::SeccompFilter)?,
        None => sie_seccomp::Seccomp::builtin(),
    })
}

/// Merges the config file (if any) and the flags into one configuration.
pub fn config_from_args(args: &RunArgs) -> Result<VmConfig, BoxError> {
    let mut config = match &args.config_file {
        Some(path) => VmConfig::from_file(path)?,
        None => {
            let kernel = args.kernel.clone().ok_or(RunError::NoKernel)?;
            VmConfig::new(BootSource::new(kernel))
        }
    };
    if let Some(kernel) = &args.kernel {
        config.boot_source.kernel_image_path = kernel.clone();
    }
    if let Some(initrd) = &args.initrd {
        config.boot_source.initrd_path = Some(initrd.clone());
    }
    if let Some(cmdline) = &args.cmdline {
        config.boot_source.boot_args = Some(cmdline.clone());
    }
    let mut machine = config.machine_config.clone().unwrap_or_default();
    if let Some(memory) = &args.memory {
        machine.mem_size_mib =
            sie_config::parse_mem_size_mib(memory).map_err(|source| RunError::Memory {
                value: memory.clone(),
                source,
            })?;
    }
    if let Some(vcpus) = args.vcpus {
        machine.vcpu_count = vcpu_count(vcpus)?;
    }
    if let Some(path) = &args.gdb_socket {
        machine.gdb_socket_path = Some(path.to_string_lossy().into_owned());
    }
    if args.nested {
        machine.nested = Some(true);
    }
    if args.memory_shared {
        machine.shared_memory = Some(true);
    }
    if let Some(name) = &args.cpu_template {
        machine.cpu_template = Some(name.clone());
        config.cpu_config = None;
    }
    if let Some(path) = &args.cpu_config {
        let text = std::fs::read_to_string(path).map_err(|source| RunError::CpuConfig {
            path: path.clone(),
            message: source.to_string(),
        })?;
        let cpu = serde_json::from_str(&text).map_err(|e| RunError::CpuConfig {
            path: path.clone(),
            message: e.to_string(),
        })?;
        machine.cpu_template = None;
        config.cpu_config = Some(cpu);
    }
    config.machine_config = Some(machine);
    let first_disk = config.drives.len();
    for (index, spec) in args.disk.iter().enumerate() {
        config
            .drives
            .push(sie_config::parse_disk(spec, first_disk + index)?);
    }
    // The root drive goes first, so the guest sees it as /dev/vda.
    config.drives.sort_by_key(|drive| !drive.is_root_device);
    let first_nic = config.network_interfaces.len();
    for (index, spec) in args.net.iter().enumerate() {
        config
            .network_interfaces
            .push(sie_config::parse_net(spec, first_nic + index)?);
    }
    if let Some(spec) = &args.vsock {
        config.vsock = Some(sie_config::parse_vsock(spec)?);
    }
    if args.rng {
        config.entropy = Some(sie_config::Entropy::default());
    }
    if let Some(device) = &args.console_device {
        config.console = Some(sie_config::ConsoleConfig {
            device: device.parse()?,
        });
    }
    if args.pci {
        config.pci = Some(sie_config::PciConfig { enabled: true });
    }
    let first_vfio = config.vfio.len();
    for (index, path) in args.vfio.iter().enumerate() {
        config.vfio.push(sie_config::VfioDevice {
            id: format!("vfio{}", first_vfio + index),
            path: path.clone(),
        });
    }
    config.validate()?;
    Ok(config)
}

fn vcpu_count(requested: u64) -> Result<u8, RunError> {
    u8::try_from(requested)
        .ok()
        .filter(|&n| n >= 1 && u32::from(n) <= sie_vmm::MAX_VCPUS)
        .ok_or(RunError::Vcpus(requested))
}

/// Opens /dev/kvm, or the device named by `SIE_KVM_DEVICE` (for tests and
/// hosts that put it elsewhere).
pub fn open_hypervisor() -> Result<Kvm, sie_hv::HvError> {
    match std::env::var_os("SIE_KVM_DEVICE") {
        Some(path) => Kvm::open_path(path),
        None => Kvm::open(),
    }
}

/// Runs `sie run`; returns the process exit status.
pub fn run(args: RunArgs, start: Instant) -> Result<u8, BoxError> {
    let logging = crate::logging::Logging::init(&args.log_level).map_err(RunError::LogLevel)?;
    let restore = match (&args.restore, &args.mem) {
        (Some(snapshot), Some(mem)) => {
            let mut load = sie_config::SnapshotLoad::from_files(
                snapshot.clone(),
                args.mem_backend,
                mem.clone(),
                true,
            );
            args.restore_overrides.apply(&mut load);
            Some(load)
        }
        _ => {
            if args.restore_overrides.any() {
                return Err(RunError::OverrideWithoutRestore.into());
            }
            None
        }
    };
    let config = match restore {
        // The snapshot brings its own configuration.
        Some(_) => VmConfig::new(BootSource::new("")),
        None => config_from_args(&args)?,
    };
    let limit = crate::metadata::size_limit(args.mmds_size_limit, sie_mmds::DEFAULT_SIZE_LIMIT)?;
    let mmds = crate::metadata::store(args.metadata.as_deref(), limit)?;
    let seccomp = seccomp_filters(args.no_seccomp, args.seccomp_filter.as_deref())?;
    if args.stats {
        // Read at exit, when seccomp no longer lets the VMM open files.
        sie_vmm::process_memory::open_smaps();
    }
    let kvm = open_hypervisor()?;
    let mut build = BuildOptions::new(start);
    if args.no_host_decompress {
        build.host_decompress = None;
    }
    let mut options = ServeOptions::without_api(config, build, true);
    if restore.is_some() {
        options.initial_config = None;
        options.initial_restore = restore;
    }
    options.mmds = mmds;
    // The config file's logger section goes where `PUT /logger` would.
    options.logger = Some(Box::new(logging));
    options.seccomp = seccomp;
    options.serial = args.console.serial()?;
    options.dump_on_panic = args.console.dump_on_panic.clone();
    let finished = match controller::serve(&kvm, &mut NoRequests::new()?, options)? {
        Served::Finished(finished) => finished,
        Served::NeverStarted(outcome) => {
            let outcome = outcome.unwrap_or(VmOutcome::Shutdown);
            report_outcome(&outcome);
            return Ok(u8::try_from(outcome.exit_code()).unwrap_or(u8::MAX));
        }
    };
    if args.stats {
        eprint!("{}", finished.stats_text());
    }
    report_outcome(&finished.outcome);
    let code = u8::try_from(finished.outcome.exit_code()).unwrap_or(u8::MAX);
    finished.exit_fast();
    Ok(code)
}

/// Says on stderr how the VM ended, unless it ended the ordinary way.
pub fn report_outcome(outcome: &VmOutcome) {
    match outcome {
        VmOutcome::Reset | VmOutcome::Shutdown => {}
        VmOutcome::Crash(report) => {
            eprintln!(
                "sie: guest crashed vCPU {}: {}\n{}",
                report.vcpu, report.reason, report.registers
            );
        }
        VmOutcome::GuestPanic => {
            eprintln!("sie: the guest kernel panicked (reported through pvpanic)")
        }
        VmOutcome::Signal(signal) => eprintln!("sie: stopped by signal {signal}"),
        VmOutcome::Migrated(to) => eprintln!("sie: the VM migrated to {to}; it runs there now"),
        VmOutcome::MigrationFailed(why) => eprintln!("sie: migration failed: {why}"),
    }
}
