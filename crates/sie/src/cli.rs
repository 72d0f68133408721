//! The command line: `sie run`, `sie doctor`, `sie bench`, `sie ctl`,
//! `sie snapshot`, `sie jailer` (its flags live in `jailer/args.rs`), and, with no
//! subcommand, Firecracker's own flags (see `firecracker.rs`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// sie: a small, fast, observable microVM monitor on KVM.
///
/// With a subcommand, sie's own interface. Without one, sie accepts
/// Firecracker's flags, so tools that start `firecracker` can start sie.
#[derive(Debug, Parser)]
#[command(
    name = "sie",
    about,
    long_about = None,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Firecracker-compatible flags, used when no subcommand is given.
    #[command(flatten)]
    pub firecracker: FirecrackerArgs,
}

/// Firecracker's command-line flags. Flags that only turn something off or
/// pass timing data are accepted; flags asking for a feature sie does not
/// have yet fail with a one-line error that says so.
#[derive(Debug, Args)]
pub struct FirecrackerArgs {
    /// Print the version (as `Firecracker vX.Y.Z` when started as `firecracker`).
    #[arg(long, short = 'V')]
    pub version: bool,
    /// Serve Firecracker's REST API on this Unix socket [default: /run/firecracker.socket].
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// A Firecracker config file: boot it at once (the API, if served, then serves that VM).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Do not serve the API; boot from --config-file.
    #[arg(long)]
    pub no_api: bool,
    /// The microVM's id, shown by `GET /` [default: anonymous-instance].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_name = "LEVEL")]
    pub level: Option<String>,
    /// Write logs to this file or FIFO instead of stderr (never blocks; full sinks drop lines).
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// Only log events whose module path starts with this (e.g. `sie_vmm::controller`).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,
    /// Show each log line's level.
    #[arg(long)]
    pub show_level: bool,
    /// Show each log line's source file and line.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Write metrics as JSON lines to this file or FIFO (every 60 s, on FlushMetrics, at exit).
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,
    /// Record the guest's boot-timer write (sie always does).
    #[arg(long)]
    pub boot_timer: bool,
    /// Largest API request body, bytes [default: 51200].
    #[arg(long, value_name = "BYTES")]
    pub http_api_max_payload_size: Option<u64>,
    /// Install no seccomp filters (by default each thread gets its own).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Seccomp filters from this JSON policy instead of sie's own
    /// (seccompiler's JSON format; see docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
    /// Fill the metadata service's store (MMDS) from this JSON file at start-up.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Largest MMDS data store, bytes of serialized JSON [default: the API payload limit].
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<u64>,
    /// From the jailer: CLOCK_MONOTONIC when it started, µs (sie logs its startup time from it at Info).
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,
    /// From the jailer: its CPU time when it started, µs.
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,
    /// From the jailer with `--new-pid-ns`: the CPU time its parent side
    /// used, µs.
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
    /// Put the virtio devices on a PCI bus (virtio-PCI with MSI-X) instead of
    /// virtio-MMIO, as Firecracker 1.17 does; `GET /vm/config` shows it as
    /// `"pci": {"enabled": true}`. Such a VM cannot be snapshotted yet.
    #[arg(long)]
    pub enable_pci: bool,
    /// Print the snapshot format version this sie writes, and exit.
    #[arg(long)]
    pub snapshot_version: bool,
    /// Print the format version of the snapshot FILE, and exit.
    #[arg(long, value_name = "FILE")]
    pub describe_snapshot: Option<PathBuf>,
    /// sie's console socket and core dumps.
    #[command(flatten)]
    pub console: ConsoleFlags,
}

/// The console and core-dump flags of `sie run` and of the API mode.
#[derive(Debug, Default, Args)]
pub struct ConsoleFlags {
    /// Put COM1 on this Unix socket instead of the terminal: attach with
    /// `sie ctl console PATH` (or any Unix-socket client), detach and
    /// attach again while the guest runs. Output written while nobody is
    /// attached is kept (--console-buffer-bytes) and replayed on attach. A
    /// second client takes the console over from the first.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Console output kept while no client is attached, bytes; the oldest
    /// go first [default: 65536].
    #[arg(long, value_name = "BYTES", requires = "console_socket")]
    pub console_buffer_bytes: Option<usize>,
    /// When the guest kernel panics (pvpanic), write its memory and
    /// registers as an ELF core file into DIR before exiting (status 4).
    #[arg(long, value_name = "DIR")]
    pub dump_on_panic: Option<PathBuf>,
}

impl ConsoleFlags {
    /// The `serial` settings these flags ask for, checked.
    pub fn serial(
        &self,
    ) -> Result<Option<sie_config::SerialConfig>, sie_config::SerialConfigError> {
        if self.console_socket.is_none() {
            return Ok(None);
        }
        let serial = sie_config::SerialConfig {
            console_socket: self.console_socket.clone(),
            console_buffer_bytes: self.console_buffer_bytes,
            ..sie_config::SerialConfig::default()
        };
        serial.validate()?;
        Ok(Some(serial))
    }
}

/// sie's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Boot a guest kernel with its console (COM1, or hvc0 with --console virtio) on this terminal (or on --console-socket).
    ///
    /// sie exits 0 when the guest resets (i8042 reset or `reboot`), 3 when a
    /// vCPU crashes (triple fault, emulation failure), 4 when the guest kernel
    /// panics, 128+N on signal N, 148 when a thread makes a system call its
    /// seccomp filter forbids, and 1 with a one-line reason on bad input.
    Run(Box<RunArgs>),
    /// Report what this host offers for running VMs, with two measurements.
    Doctor,
    /// Micro-benchmarks that print figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Talk to a running sie (or Firecracker) through its API socket.
    Ctl(CtlArgs),
    /// Work on snapshot files without a VM.
    #[command(subcommand)]
    Snapshot(SnapshotFilesCommand),
    /// Run sie jailed, as Firecracker's jailer runs Firecracker: a chroot
    /// under `--chroot-base-dir`, new mount (and PID) namespaces, a network
    /// namespace, a cgroup, resource limits, and no root. Also what sie does
    /// when started through a link named `jailer`.
    Jailer(crate::jailer::JailerArgs),
}

/// `sie snapshot` commands.
#[derive(Debug, Subcommand)]
pub enum SnapshotFilesCommand {
    /// Merge a Diff memory file onto the memory file it was taken after.
    ///
    /// Every page the Diff holds (its data extents; its holes are pages that
    /// did not change) is written into BASE_MEM at the same offset, and
    /// BASE_MEM is synced to disk. BASE_MEM then restores the VM together
    /// with the Diff's snapshot file. For a chain of Diffs, rebase each in
    /// the order they were taken. Both files must exist and have the same
    /// size; nothing is written otherwise.
    Rebase(RebaseArgs),
}

/// `sie snapshot rebase`.
#[derive(Debug, Args)]
pub struct RebaseArgs {
    /// The Diff snapshot's memory file (read).
    #[arg(value_name = "DIFF_MEM")]
    pub diff: PathBuf,
    /// The memory file of the snapshot the Diff follows (written in place).
    #[arg(value_name = "BASE_MEM")]
    pub base: PathBuf,
}

/// `sie ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The API socket (`--api-sock` of the running sie); every command but
    /// `console PATH` needs it.
    #[arg(long, value_name = "PATH")]
    pub sock: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `sie ctl` commands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Instance id, state (Not started, Running, Paused) and version.
    Info,
    /// Boot the configured VM (InstanceStart).
    Start,
    /// Pause every vCPU.
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Press Ctrl-Alt-Del on the guest's keyboard (an orderly shutdown).
    CtrlAltDel,
    /// Write the metrics to their sink now.
    FlushMetrics,
    /// The whole VM configuration as JSON.
    Config,
    /// vCPUs and memory.
    MachineConfig,
    /// The Firecracker API version served.
    Version,
    /// Metrics in Prometheus text format.
    Metrics,
    /// VM-exit statistics: counts and handling latency per exit kind and device.
    Stats {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Snapshots: `create` on a paused VM, `load` into a fresh sie.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Attach this terminal to the guest's console socket (raw mode).
    ///
    /// Everything typed goes to the guest's COM1; what it writes appears
    /// here, starting with what it wrote while nobody was attached. Leave
    /// with Ctrl-] then q (the guest keeps running); Ctrl-] twice sends one
    /// Ctrl-]. Another client attaching takes the console over.
    Console {
        /// The console socket (`--console-socket`); without it, the one
        /// the VM behind --sock was configured with.
        socket: Option<PathBuf>,
    },
    /// Write the guest's memory and every vCPU's registers as an ELF core
    /// file (PUT /vm/dump): a running VM is paused around it.
    Dump {
        /// The core file (replaced crash-safely if it exists).
        path: PathBuf,
    },
    /// Live migration: `receive` on a fresh sie, then `send` on the running
    /// one; `status` and `cancel` while it goes.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Any API request, e.g. `request PUT /machine-config '{"vcpu_count":2,"mem_size_mib":256}'`.
    Request {
        /// GET, PUT or PATCH.
        method: String,
        /// The path, e.g. /machine-config.
        path: String,
        /// A JSON body.
        body: Option<String>,
    },
}

/// `sie ctl migrate` commands.
#[derive(Debug, Subcommand)]
pub enum MigrateCommand {
    /// Listen for a migrating VM (PUT /migration/receive) on this fresh sie.
    Receive {
        /// `unix:PATH` or `tcp:HOST:PORT` (TCP carries guest memory in the
        /// clear: tunnel it between hosts).
        url: String,
        /// Use tap TAP here for the VM's interface IFACE_ID (repeatable; on
        /// one host the source holds its own tap until the move is done).
        #[arg(long = "net-override", value_name = "IFACE_ID=TAP", value_parser = parse_net_override)]
        net_overrides: Vec<sie_config::NetworkOverride>,
    },
    /// Move the running VM to a receiving sie (PUT /migration/send); this
    /// sie exits once the VM runs there.
    Send {
        /// `unix:PATH` or `tcp:HOST:PORT` of the receiving sie.
        url: String,
        /// The pause the guest may see at the switch-over (default 300;
        /// not with --local, which pauses once and copies nothing).
        #[arg(long, value_name = "MS")]
        downtime_ms: Option<u64>,
        /// Give up (the VM runs on here) after this many seconds (`--mode
        /// auto`: turn to post-copy instead, once the first pass is over).
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        /// Never slow the guest down: by default, when the pre-copy rounds
        /// do not shrink, its vCPUs sit out a growing share of every 10 ms
        /// (20%, then 10 more a round, at most 99%) until they do.
        #[arg(long)]
        no_auto_converge: bool,
        /// Send at most this many MiB per second (default: as fast as the
        /// link goes).
        #[arg(long, value_name = "MIB_PER_S")]
        max_bandwidth_mib_s: Option<u64>,
        /// `precopy`: memory copied while the guest runs, then a short
        /// pause. `postcopy`: the VM runs on the receiving sie at once, its
        /// pages fetched there on demand while this sie pushes the rest (a
        /// link lost meanwhile loses the guest). `auto`: pre-copy, turning
        /// to post-copy when the rounds or the timeout run out.
        #[arg(long, default_value = "precopy", value_parser = ["precopy", "postcopy", "auto"])]
        mode: String,
        /// Same host (upgrading sie): hand guest RAM to the receiver over
        /// the Unix socket instead of copying it; the VM pauses once, for
        /// the device and vCPU state only. Needs a VM started with
        /// --memory-shared, a unix:PATH url and the precopy mode; the
        /// receiving sie must speak migration protocol 2.1 or later.
        #[arg(long)]
        local: bool,
    },
    /// How the migration goes (GET /migration).
    Status {
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a send before the switch-over; the VM runs on here.
    Cancel,
}

/// `sie ctl snapshot` commands.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Write a snapshot of the paused VM (PUT /snapshot/create): Full, or
    /// with --diff only the pages written since the last snapshot.
    Create {
        /// The snapshot file (VM and device state).
        snapshot: PathBuf,
        /// The memory file (guest RAM; sparse).
        mem: PathBuf,
        /// A Diff snapshot (needs track_dirty_pages; merge its memory onto
        /// its base with `sie snapshot rebase`).
        #[arg(long)]
        diff: bool,
    },
    /// Restore a snapshot into this sie, which must not be configured yet
    /// (PUT /snapshot/load); the VM stays paused unless --resume.
    Load {
        /// The snapshot file.
        snapshot: PathBuf,
        /// Its memory file (with --mem-backend uffd: the page-fault
        /// handler's socket).
        mem: PathBuf,
        /// Resume the VM once loaded.
        #[arg(long)]
        resume: bool,
        /// How guest memory comes back: file (mapped copy-on-write), lazy
        /// (faults served by sie, working set recorded in MEM.ws and
        /// prefetched next time) or uffd (Firecracker's external handler).
        #[arg(long, value_name = "BACKEND", default_value = "file", value_parser = mem_backend)]
        mem_backend: sie_config::MemBackendType,
        #[command(flatten)]
        overrides: RestoreOverrides,
    },
}

/// What a restored clone changes from its snapshot (the `network_overrides`,
/// `vsock_override`, `clock_realtime` and `huge_pages` fields of
/// `PUT /snapshot/load`).
#[derive(Debug, Default, Args)]
pub struct RestoreOverrides {
    /// Use tap TAP for the interface IFACE_ID of the snapshot (repeatable).
    #[arg(long = "net-override", value_name = "IFACE_ID=TAP", value_parser = parse_net_override)]
    pub net_overrides: Vec<sie_config::NetworkOverride>,
    /// Use this Unix socket for the snapshot's vsock device.
    #[arg(long, value_name = "UDS_PATH")]
    pub vsock_override: Option<PathBuf>,
    /// Advance the guest clock by the time the snapshot spent as files.
    #[arg(long)]
    pub clock_realtime: bool,
    /// Put guest RAM on huge pages (file backend; filled from the memory
    /// file before the vCPUs run): none, transparent, 2m, or snapshot (what
    /// the snapshotted VM had).
    #[arg(long, value_name = "KIND", value_parser = ["none", "transparent", "2m", "snapshot"])]
    pub huge_pages: Option<String>,
}

impl RestoreOverrides {
    /// Sets these overrides on a load request.
    pub fn apply(&self, load: &mut sie_config::SnapshotLoad) {
        if !self.net_overrides.is_empty() {
            load.network_overrides = Some(self.net_overrides.clone());
        }
        load.vsock_override = self
            .vsock_override
            .clone()
            .map(|uds_path| sie_config::VsockOverride { uds_path });
        if self.clock_realtime {
            load.clock_realtime = Some(true);
        }
        load.huge_pages = self.huge_pages.as_deref().map(|kind| {
            match kind {
                "transparent" => "Transparent",
                "2m" => "2M",
                "snapshot" => "Snapshot",
                _ => "None",
            }
            .to_string()
        });
    }

    /// Whether any of these was given.
    pub fn any(&self) -> bool {
        !self.net_overrides.is_empty()
            || self.vsock_override.is_some()
            || self.clock_realtime
            || self.huge_pages.is_some()
    }
}

fn parse_net_override(text: &str) -> Result<sie_config::NetworkOverride, String> {
    match text.split_once('=') {
        Some((id, tap)) if !id.is_empty() && !tap.is_empty() => Ok(sie_config::NetworkOverride {
            iface_id: id.to_string(),
            host_dev_name: tap.to_string(),
        }),
        _ => Err(format!("{text:?} is not IFACE_ID=TAP")),
    }
}

/// `--mem-backend`'s words.
fn mem_backend(word: &str) -> Result<sie_config::MemBackendType, String> {
    sie_config::MemBackendType::from_word(word)
}

/// Flags of `sie run`. Flags override values from `--config-file`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kernel image: an ELF vmlinux (PVH or 64-bit entry) or a bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk loaded for the kernel.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=-1",
    /// or "console=hvc0 ..." with --console virtio]; `pci=off` is appended
    /// unless it has a `pci=` of its own.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Guest memory: MiB as a number, or with a suffix (512M, 2G) [default: 128].
    #[arg(long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u64>,
    /// Print exit statistics and boot markers on stderr when the VM ends.
    #[arg(long)]
    pub stats: bool,
    /// A Firecracker-style JSON config file (boot-source, machine-config).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// Fill the metadata service's store (MMDS) from this JSON file; the
    /// config file's `mmds-config` says which interfaces serve it.
    #[arg(long, value_name = "FILE")]
    pub metadata: Option<PathBuf>,
    /// Largest MMDS data store, bytes of serialized JSON [default: 51200,
    /// Firecracker's API payload limit].
    #[arg(long, value_name = "BYTES")]
    pub mmds_size_limit: Option<u64>,
    /// Boot a bzImage the classic way (the guest decompresses its kernel)
    /// instead of decompressing it once on the host and caching the vmlinux
    /// under $XDG_CACHE_HOME/sie/vmlinux (or ~/.cache/sie/vmlinux).
    #[arg(long)]
    pub no_host_decompress: bool,
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,
    /// A virtio-blk disk:
    /// `PATH[,ro][,id=NAME][,root][,partuuid=UUID][,cache=unsafe|writeback][,io=sync|async]`
    /// (repeatable). A root disk adds `root=/dev/vdX` to the command line.
    /// `cache=unsafe` (default) offers the guest no flush, `writeback` offers
    /// it and fsyncs; `io=sync` (default) runs I/O on a worker thread,
    /// `async` on io_uring.
    #[arg(long, value_name = "SPEC")]
    pub disk: Vec<String>,
    /// A virtio-net interface on a tap device: `TAP[,mac=MAC][,id=NAME][,mtu=BYTES]`
    /// (repeatable).
    #[arg(long, value_name = "SPEC")]
    pub net: Vec<String>,
    /// A virtio-vsock device: `CID,UDS_PATH` (Firecracker's hybrid Unix
    /// socket model).
    #[arg(long, value_name = "CID,UDS_PATH")]
    pub vsock: Option<String>,
    /// A virtio-rng device fed by the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// The device that carries the guest's console: `serial` (COM1,
    /// ttyS0; two VM exits per byte of output) or `virtio` (a
    /// virtio-console, hvc0; one queue notification per buffer, and
    /// `console=hvc0` joins a command line that names no `console=`). The
    /// guest needs the virtio_console driver (a module in distro kernels:
    /// load it from the initramfs). Config file: `"console": {"device":
    /// "virtio"}` [default: serial].
    #[arg(long = "console", value_name = "DEVICE", value_parser = ["serial", "virtio"])]
    pub console_device: Option<String>,
    /// Show the guest hardware virtualization (VMX on Intel, SVM on AMD) so
    /// it can run VMs of its own; refused where the host's KVM does not
    /// allow nesting (kvm_intel/kvm_amd `nested=1`). Hidden by default.
    #[arg(long)]
    pub nested: bool,
    /// Put guest RAM in shared memory (memfds), so `sie ctl migrate send
    /// --local` can hand it to a new sie on this host instead of copying
    /// it (machine-config `shared_memory`). Base pages only.
    #[arg(long)]
    pub memory_shared: bool,
    /// A Firecracker static CPU template: T2, T2S, C3 (Intel hosts) or T2A
    /// (AMD hosts); it hides CPU features newer than its baseline.
    #[arg(long, value_name = "NAME", conflicts_with = "cpu_config")]
    pub cpu_template: Option<String>,
    /// A Firecracker custom CPU template (JSON: cpuid_modifiers,
    /// msr_modifiers, kvm_capabilities), as `PUT /cpu-config` takes.
    #[arg(long, value_name = "FILE")]
    pub cpu_config: Option<PathBuf>,
    /// Put the virtio devices on a PCI bus (virtio-PCI with MSI-X, found
    /// through ACPI) instead of virtio-MMIO; the command line then gets no
    /// `pci=off`. Such a VM cannot be snapshotted or migrated yet.
    #[arg(long)]
    pub pci: bool,
    /// Pass a host PCI device bound to vfio-pci through to the guest: its
    /// sysfs path, e.g. `/sys/bus/pci/devices/0000:00:03.0` (repeatable;
    /// ids vfio0, vfio1...; see docs/vfio.md). The VM then has a PCI bus,
    /// cannot be snapshotted or migrated, and cannot have a balloon or
    /// memory-hotplug (its DMA pins guest memory).
    #[arg(long, value_name = "SYSFS_DEVICE_PATH")]
    pub vfio: Vec<std::path::PathBuf>,
    /// Wait for gdb on this Unix socket before the guest's first
    /// instruction (`target remote PATH` in gdb); gdb then stops, steps and
    /// inspects the guest: every vCPU a thread, hardware breakpoints and
    /// watchpoints, memory by guest-virtual address.
    #[arg(long, value_name = "PATH")]
    pub gdb_socket: Option<PathBuf>,
    /// Restore the snapshot FILE (written by `PUT /snapshot/create`) instead
    /// of booting: the VM goes on where it was paused. Needs --mem.
    #[arg(long, value_name = "FILE", requires = "mem", conflicts_with_all = ["kernel", "initrd", "cmdline", "memory", "vcpus", "config_file", "disk", "net", "vsock", "rng", "console_device", "nested", "memory_shared", "cpu_template", "cpu_config", "pci"])]
    pub restore: Option<PathBuf>,
    /// The snapshot's memory file (with --restore); with --mem-backend
    /// uffd, the page-fault handler's socket.
    #[arg(long, value_name = "FILE", requires = "restore")]
    pub mem: Option<PathBuf>,
    /// How --restore brings guest memory back: file (the memory file mapped
    /// copy-on-write), lazy (sie serves page faults from it, records the
    /// guest's working set in FILE.ws and prefetches it on later restores)
    /// or uffd (Firecracker's protocol: an external page-fault handler).
    #[arg(long, value_name = "BACKEND", default_value = "file", value_parser = mem_backend, requires = "restore")]
    pub mem_backend: sie_config::MemBackendType,
    /// With --restore: what the clone changes from its snapshot.
    #[command(flatten)]
    pub restore_overrides: RestoreOverrides,
    /// The console socket and core dumps.
    #[command(flatten)]
    pub console: ConsoleFlags,
    /// Install no seccomp filters (by default each thread gets its own).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,
    /// Seccomp filters from this JSON policy instead of sie's own
    /// (seccompiler's JSON format; see docs/security.md).
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,
}

/// `sie bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Cost of one VM exit through sie's dispatch vs a bare KVM_RUN loop.
    Exits(BenchExitsArgs),
    /// Time to each boot marker and to exit, per way of booting a kernel.
    Boot(BenchBootArgs),
    /// virtio-blk throughput and IOPS in a guest vs the same I/O on the host file.
    Blk(BenchBlkArgs),
    /// virtio-net TCP throughput and packets/s each way between a guest and the host.
    Net(BenchNetArgs),
    /// Whole VM lifecycles of a tiny guest: bare KVM loop, `sie run`, and a peer VMM.
    Lifecycle(BenchLifecycleArgs),
    /// Snapshot create and restore times per guest size, sie and a peer VMM; then sie's
    /// memory backends, and a lazy restore's first request against File's.
    Snapshot(BenchSnapshotArgs),
    /// Live migration between two sie processes: total time, rounds, bytes, downtime.
    Migrate(BenchMigrateArgs),
    /// Resident memory of an idle VMM process, sie's and a peer VMM's.
    Memory(BenchMemoryArgs),
}

/// Flags of `sie bench memory`.
#[derive(Debug, Args)]
pub struct BenchMemoryArgs {
    /// Readings per VMM (each a new process); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// How long each VMM idles, its guest paused, before it is read, ms.
    #[arg(long, default_value_t = 5000)]
    pub settle_ms: u64,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
    /// Another VMM to compare that takes Firecracker's command line (`PATH
    /// --api-sock SOCK --config-file FILE`), e.g. a `firecracker` binary.
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
}

/// Flags of `sie bench migrate`.
#[derive(Debug, Args)]
pub struct BenchMigrateArgs {
    /// Migrations per case; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Guest memory sizes, MiB, comma-separated (e.g. 128,4096).
    #[arg(long, value_delimiter = ',', default_values_t = [128u32, 1024])]
    pub sizes_mib: Vec<u32>,
    /// Shares of RAM the guest rewrites on each count (0: idle), percent, comma-separated (e.g. 0,1).
    #[arg(long, value_delimiter = ',', default_values_t = [0u32, 1, 10])]
    pub dirty_percent: Vec<u32>,
    /// Cap the link at this many MiB/s (`max_bandwidth_mib_s`).
    #[arg(long, value_name = "MIB_PER_S")]
    pub max_bandwidth_mib_s: Option<u64>,
    /// Send with `auto_converge` false.
    #[arg(long)]
    pub no_auto_converge: bool,
    /// Local mode: guest RAM in shared memory, handed over instead of
    /// copied (`"local": true`).
    #[arg(long)]
    pub local: bool,
}

/// Flags of `sie bench snapshot`.
#[derive(Debug, Args)]
pub struct BenchSnapshotArgs {
    /// Snapshots per size and VMM; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Guest memory sizes, MiB, comma-separated (e.g. 128,4096).
    #[arg(long, value_delimiter = ',', default_values_t = [128u32, 1024, 4096])]
    pub sizes_mib: Vec<u32>,
    /// Another VMM to compare that serves Firecracker's API (`PATH
    /// --api-sock SOCK [--config-file FILE]`), e.g. a `firecracker` binary.
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
}

/// Flags of `sie bench lifecycle`.
#[derive(Debug, Args)]
pub struct BenchLifecycleArgs {
    /// Lifecycles per variant; the median is reported.
    #[arg(long, default_value_t = 20)]
    pub runs: u32,
    /// Also measure throughput with this many lifecycles in flight.
    #[arg(long, value_name = "K")]
    pub parallel: Option<u32>,
    /// Another VMM to compare, started as `PATH --no-api --config-file FILE`
    /// (Firecracker's way) on the same guest.
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
}

/// Flags of `sie bench blk`. The initrd's /init must run the pattern for
/// `case=bench_blk` (the rig's L2 initramfs does, with `sietool blk-bench`).
#[derive(Debug, Args)]
pub struct BenchBlkArgs {
    /// Guest kernel.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk whose /init runs the guest side.
    #[arg(long, value_name = "PATH")]
    pub initrd: PathBuf,
    /// Kernel command line (`case=bench_blk` and the sizes are appended).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Size of the scratch disk, MiB (read and written sequentially).
    #[arg(long, default_value_t = 64)]
    pub size_mib: u64,
    /// Random 4 KiB reads, and writes, per run.
    #[arg(long, default_value_t = 2000)]
    pub ops: u64,
    /// Runs (guest boots, and host passes).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Guest memory.
    #[arg(long, default_value = "256")]
    pub memory: String,
    /// The disk's engine, as `--disk io=`: sync (a worker thread) or async
    /// (io_uring), to compare them.
    #[arg(long, value_name = "ENGINE", default_value = "sync", value_parser = ["sync", "async"])]
    pub io: String,
    /// The virtio transport: mmio, pci (`sie run --pci`) or both, side by
    /// side with each one's interrupts and device exits per operation.
    #[arg(long, value_name = "TRANSPORT", default_value = "both", value_parser = ["mmio", "pci", "both"])]
    pub transport: String,
    /// Another VMM that takes Firecracker's command line (`PATH --no-api
    /// --config-file FILE`, `--enable-pci` for pci), e.g. a `firecracker`
    /// binary: boots the same guest on the same disk after each of sie's
    /// boots, over each transport, and the table adds its columns and sie's
    /// ratios to it. The kernel must be a vmlinux.
    #[arg(long, value_name = "PATH")]
    pub peer: Option<PathBuf>,
}

/// Flags of `sie bench net`. Needs root (a tap device). The initrd's /init
/// must run the guest side for `case=bench_net` (the rig's L2 initramfs does,
/// with `sietool net-bench`).
#[derive(Debug, Args)]
pub struct BenchNetArgs {
    /// Guest kernel.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initial ramdisk whose /init runs the guest side.
    #[arg(long, value_name = "PATH")]
    pub initrd: PathBuf,
    /// The tap device sie creates (or opens) for the guest.
    #[arg(long, value_name = "NAME")]
    pub tap: String,
    /// Kernel command line (`case=bench_net` and the size are appended).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// MiB sent each way per run.
    #[arg(long, default_value_t = 32)]
    pub mib: u64,
    /// Runs (guest boots).
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Guest memory.
    #[arg(long, default_value = "256")]
    pub memory: String,
    /// The virtio transport: mmio, pci (`sie run --pci`) or both, side by
    /// side with each one's interrupts and device exits per MiB.
    #[arg(long, value_name = "TRANSPORT", default_value = "both", value_parser = ["mmio", "pci", "both"])]
    pub transport: String,
}

/// Flags of `sie bench boot`.
#[derive(Debug, Args)]
pub struct BenchBootArgs {
    /// Kernel to boot; a bzImage is timed with host decompression and the classic way.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// The same kernel as a vmlinux, timed as the baseline.
    #[arg(long, value_name = "PATH")]
    pub vmlinux: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Guest memory.
    #[arg(long, default_value = "256")]
    pub memory: String,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Boots per variant.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// Another command to time to its exit in the same run (e.g. another VMM).
    #[arg(long, value_name = "SHELL COMMAND")]
    pub compare: Option<String>,
}

/// Flags of `sie bench exits`.
#[derive(Debug, Args)]
pub struct BenchExitsArgs {
    /// Exits per kind per run.
    #[arg(long, default_value_t = 2000)]
    pub count: u32,
    /// Runs of each loop; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}
