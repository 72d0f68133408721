//! The control plane inside the VMM process, and the one way a VM is
//! served: `sie run` (a configuration and [`NoRequests`]) and the API (a
//! source of requests that change the configuration before boot, start the
//! VM, and pause, resume, inspect or stop it afterwards) both go through
//! [`serve`]: one event loop, one shutdown path, one place that turns the
//! VM's end into an outcome.
//!
//! Everything runs on the VMM thread, the same thread that serves the VM's
//! events: a request is taken from the [`RequestSource`] after each round of
//! events, handled, and answered before the next one, as Firecracker does.
//! The front end never sees the VM and this module never sees HTTP.

mod balloon;
mod draft;
mod handle;
mod hotplug;
mod load;
pub mod metrics;
mod migrate;
mod phase_faults;
pub mod sink;
mod stats_json;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use sie_config::{Logger, Request, Response, VmConfig};
use sie_hv::Hypervisor;
use vmm_sys_util::eventfd::EventFd;

use crate::builder::BuildOptions;
use crate::console::{ConsoleOutput, ConsoleSocket, TerminalGuard};
use crate::control::VmControl;
use crate::error::{Result, VmmError};
use crate::event_loop::{self, Manager};
use crate::outcome::VmOutcome;
use crate::vm::{FinishedVm, StartedVm};

pub use draft::machine_json;
pub use metrics::ExternalMetrics;
pub use stats_json::report_json;

/// Sends the answer to one request back to whoever asked.
pub type Reply = Box<dyn FnOnce(Response) + Send>;

/// Where requests come from (the API server, in sie).
pub trait RequestSource {
    /// Readable when requests may be waiting.
    fn wake_fd(&self) -> &EventFd;
    /// The next waiting request, if any. Returning `None` must leave the
    /// wake fd unreadable until a new request arrives.
    fn next_request(&mut self) -> Option<(Request, Reply)>;
    /// Called once, when the VMM is ready to answer: an API puts its
    /// socket where clients look for it now.
    fn publish(&mut self) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

/// `--no-api` and `sie run`: nobody will ever ask anything.
pub struct NoRequests(EventFd);

impl NoRequests {
    /// A source that never has a request.
    pub fn new() -> Result<Self> {
        Ok(Self(
            EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK)
                .map_err(host_error("creating an eventfd"))?,
        ))
    }
}

impl RequestSource for NoRequests {
    fn wake_fd(&self) -> &EventFd {
        &self.0
    }

    fn next_request(&mut self) -> Option<(Request, Reply)> {
        None
    }
}

/// Applies `PUT /logger` and the config file's `logger` section (logging is
/// set up by the binary, not the VMM).
pub trait LoggerControl {
    /// Points the logs at `logger`'s path and level. Errors are shown to
    /// the client as they are.
    fn configure(&mut self, logger: &Logger) -> std::result::Result<(), String>;
}

/// Why a VM with PCI devices is not snapshotted or migrated: the virtio-PCI
/// transports' state (configuration space, BARs, MSI-X tables) is not saved
/// yet, and a restored guest would find its devices reset.
pub const PCI_NOT_SNAPSHOTTABLE: &str = "snapshots of a VM with PCI devices are not supported yet";

/// How to serve.
pub struct ServeOptions {
    /// The instance id (`--id`), shown by `GET /`.
    pub id: String,
    /// The version `GET /` reports.
    pub vmm_version: String,
    /// When sie started.
    pub start: Instant,
    /// Boot this at once (`--config-file` together with `--api-sock`).
    pub initial_config: Option<VmConfig>,
    /// Restore this snapshot at once (`sie run --restore`).
    pub initial_restore: Option<sie_config::SnapshotLoad>,
    /// Host-side build options, made when the VM is built.
    pub build_options: Box<dyn FnMut() -> BuildOptions>,
    /// `PUT /logger` and the config file's `logger` (`None`: refused).
    pub logger: Option<Box<dyn LoggerControl>>,
    /// Metrics sink given on the command line (`--metrics-path`).
    pub metrics_path: Option<PathBuf>,
    /// Figures from the front end (API request counters, logger drops).
    pub external_metrics: ExternalMetrics,
    /// How often metrics are written without being asked.
    pub metrics_period: Duration,
    /// Forward stdin to the guest's console, COM1 or the virtio console
    /// (unless a console socket takes it).
    pub console_input: bool,
    /// The command line's `serial` choices (`--console-socket`, ...): they
    /// win over the config file's and `PUT /serial`'s, and apply to a
    /// restored snapshot too (the console is the host's choice).
    pub serial: Option<sie_config::SerialConfig>,
    /// `--dump-on-panic DIR` (wins over the config's `dump_on_panic`).
    pub dump_on_panic: Option<PathBuf>,
    /// Firecracker's `--enable-pci`: the VM this sie builds puts its virtio
    /// devices on PCI, whatever the config file or the API said (shown by
    /// `GET /vm/config` as `"pci": {"enabled": true}`).
    pub enable_pci: bool,
    /// Seccomp filters: each vCPU thread installs its own as it starts, and
    /// this thread installs the VMM's once the VM runs (see `start`).
    pub seccomp: sie_seccomp::Seccomp,
    /// The metadata store (`PUT|PATCH|GET /mmds`; `--metadata` fills it
    /// first), which the interfaces of `mmds-config` answer the guest from.
    pub mmds: sie_mmds::SharedMmds,
    /// Spawn the `sie-migrate` worker with the VM, so `PUT
    /// /migration/send` can run (the API's sie; not `sie run`).
    pub migration_worker: bool,
}

impl ServeOptions {
    /// Boots `config` at once and serves it with nothing else: no logger
    /// control, no metrics sink, no periodic metrics.
    pub fn without_api(config: VmConfig, build: BuildOptions, console_input: bool) -> Self {
        let mut build = Some(build);
        let start = build.as_ref().map_or_else(Instant::now, |b| b.start);
        Self {
            id: "anonymous-instance".to_string(),
            vmm_version: env!("CARGO_PKG_VERSION").to_string(),
            start,
            initial_config: Some(config),
            initial_restore: None,
            build_options: Box::new(move || {
                build
                    .take()
                    .unwrap_or_else(|| BuildOptions::new(Instant::now()))
            }),
            logger: None,
            metrics_path: None,
            external_metrics: Box::new(serde_json::Map::new),
            metrics_period: Duration::from_secs(60),
            console_input,
            serial: None,
            dump_on_panic: None,
            enable_pci: false,
            seccomp: sie_seccomp::Seccomp::disabled(),
            mmds: Arc::new(std::sync::Mutex::new(sie_mmds::Mmds::new(
                sie_mmds::DEFAULT_SIZE_LIMIT,
            ))),
            migration_worker: false,
        }
    }
}

/// How serving ended.
pub enum Served {
    /// The VM ran and ended.
    Finished(FinishedVm),
    /// sie was stopped (a signal) before the VM was started.
    NeverStarted(Option<VmOutcome>),
}

/// What the VMM is doing.
enum Phase {
    NotStarted,
    Running(Box<StartedVm>),
}

/// Watches the request source's wake fd; requests are taken after each
/// round of events, so there is nothing to do here.
struct RequestWake(EventFd);

impl MutEventSubscriber for RequestWake {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {}
}

/// The controller's state.
struct Controller {
    options: ServeOptions,
    draft: draft::Draft,
    phase: Phase,
    control: Arc<VmControl>,
    metrics: metrics::Metrics,
    terminal: Option<TerminalGuard>,
    /// The console socket, bound with the VM's build and served once its
    /// vCPUs run.
    console_socket: Option<ConsoleSocket>,
    /// The gdb stub (`gdb_socket_path`).
    gdb: Option<crate::gdb::GdbServer>,
    migration: migrate::Migration,
    /// Builds drives added after boot (PCI VMs only).
    hotplug_worker: Option<crate::drive_hotplug::HotplugWorker>,
    /// Drives added after boot: their slot and event-loop worker.
    hotplugged: std::collections::BTreeMap<String, (u8, event_manager::SubscriberId)>,
    /// When the pages only the VM's start made sie touch go back: first
    /// [`RELEASE_FIRST_AFTER`] after it started, then once more
    /// [`RELEASE_AGAIN_AFTER`] later (the second `true` here).
    release_memory_at: Option<(Instant, bool)>,
    /// The snapshot files the last `snapshot/create` replaced, freed once
    /// the VM runs again (or after [`OLD_SNAPSHOT_GRACE`] paused): freeing
    /// them inside the create kept the paused VM waiting on the unlink.
    old_snapshot_files: Option<(crate::snapshot::durable::Replaced, Instant)>,
    /// The VM was built and the VMM thread's seccomp filter is still to
    /// go on, before the next event, request or migration step is served.
    vmm_filter_pending: bool,
    /// An empty VM made while the API waited for its first request
    /// ([`Controller::prepare_ahead`]), for the boot or the load to build
    /// on.
    premade_vm: Option<crate::builder::PremadeVm>,
}

/// How long the files a snapshot replaced outlive it while the VM stays
/// paused.
const OLD_SNAPSHOT_GRACE: Duration = Duration::from_secs(1);

/// How long after the VM starts the pages only the start touched are
/// given back the first time: a VM gone sooner (a tiny guest's whole life,
/// a burst of short-lived sandboxes) never pays for reading its mappings
/// and faulting the pages back in at its end.
const RELEASE_FIRST_AFTER: Duration = Duration::from_millis(200);

/// How long after the VM starts the pages only the start touched are
/// given back a second time: by then a guest's boot (device probing,
/// console output) is over, and what it touched is as idle as the build.
/// One wake-up of the VMM thread, once.
const RELEASE_AGAIN_AFTER: Duration = Duration::from_secs(3);

fn host_error(what: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::Host { what, source }
}

/// Serves requests from `source` until the VM ends or sie is stopped.
pub fn serve(
    hv: &dyn Hypervisor,
    source: &mut dyn RequestSource,
    mut options: ServeOptions,
) -> Result<Served> {
    let signals = event_loop::block_stop_signals().map_err(host_error("blocking stop signals"))?;
    let control = Arc::new(VmControl::new().map_err(host_error("creating the VM's control"))?);
    let mut manager =
        event_loop::new_manager(&control, Some(signals)).map_err(host_error("creating epoll"))?;
    let wake = source
        .wake_fd()
        .try_clone()
        .map_err(host_error("watching the API"))?;
    debug_assert!(wake.as_raw_fd() >= 0);
    manager.add_subscriber(Box::new(RequestWake(wake)));

    let mut metrics = metrics::Metrics::new(
        options.start,
        std::mem::replace(&mut options.external_metrics, Box::new(Default::default)),
    );
    let mut draft = draft::Draft::default();
    // `--metrics-path`; the config file's `metrics` section is applied
    // with its `logger` (`apply_logging`).
    if let Some(config) = options.metrics_path.clone().map(sie_config::Metrics::new) {
        let sink = sink::LineSink::open(&config.metrics_path).map_err(|e| VmmError::Host {
            what: "opening the metrics file",
            source: std::io::Error::other(e.to_string()),
        })?;
        metrics.set_sink(sink);
        metrics.set_line_fields(config.line_fields(&options.id));
        draft.note_logging(None, Some(config));
    }
    let pci_flag = options
        .enable_pci
        .then_some(sie_config::PciConfig { enabled: true });
    if pci_flag.is_some() {
        draft.set_pci(pci_flag);
    }
    let initial = options.initial_config.take().map(|mut config| {
        if pci_flag.is_some() {
            config.pci = pci_flag;
        }
        config
    });
    let migration =
        migrate::Migration::new(&mut manager).map_err(host_error("creating an eventfd"))?;
    let mut controller = Controller {
        options,
        draft,
        phase: Phase::NotStarted,
        control: control.clone(),
        metrics,
        terminal: None,
        console_socket: None,
        gdb: None,
        migration,
        hotplug_worker: None,
        hotplugged: std::collections::BTreeMap::new(),
        release_memory_at: None,
        old_snapshot_files: None,
        vmm_filter_pending: false,
        premade_vm: None,
    };
    if let Some(load) = controller.options.initial_restore.take() {
        let plan = load.plan().map_err(VmmError::Restore)?;
        controller
            .load_snapshot(&plan, hv, &mut manager)
            .map_err(VmmError::Restore)?;
    }
    if let Some(config) = initial {
        let flag_metrics = controller.draft.to_config_unchecked().metrics;
        controller.draft = draft::Draft::from_config(config.clone());
        controller.draft.note_logging(None, flag_metrics);
        controller.apply_logging(&config)?;
        controller.start(hv, &mut manager)?;
    }
    controller.prepare_ahead(hv);
    source.publish().map_err(|error| VmmError::Host {
        what: "serving the API",
        source: std::io::Error::other(error),
    })?;

    let period = controller.options.metrics_period;
    let mut next_metrics = Instant::now() + period;
    loop {
        // The loop sleeps until an event, or until periodic metrics or the
        // next vCPU throttle request are due (whichever is sooner).
        let timeout = earliest(
            round_timeout(controller.metrics.has_sink(), next_metrics, Instant::now()),
            controller.throttle_wait(),
        );
        let release_wait = controller
            .release_memory_at
            .map(|(at, _)| at.saturating_duration_since(Instant::now()));
        let old_files_wait = controller
            .old_snapshot_files
            .as_ref()
            .map(|(_, at)| (*at + OLD_SNAPSHOT_GRACE).saturating_duration_since(Instant::now()));
        let timeout = earliest(earliest(timeout, release_wait), old_files_wait);
        controller.install_vmm_filter()?;
        event_loop::run_once(&mut manager, timeout).map_err(host_error("serving VM events"))?;
        if let Some((at, again)) = controller.release_memory_at
            && Instant::now() >= at
        {
            controller.release_memory_at =
                again.then(|| (Instant::now() + RELEASE_AGAIN_AFTER, false));
            crate::process_memory::release_startup_pages();
        }
        controller.serve_migration(hv, &mut manager);
        controller.install_vmm_filter()?;
        while let Some((request, reply)) = source.next_request() {
            let response = controller.handle(request, hv, &mut manager);
            reply(response);
            controller.install_vmm_filter()?;
            if control.is_stopping() {
                break;
            }
        }
        controller.serve_gdb();
        controller.free_old_snapshot_files();
        if Instant::now() >= next_metrics {
            controller.flush_metrics();
            next_metrics = Instant::now() + period;
        }
        if control.is_stopping() {
            break;
        }
    }
    // gdb hears how the VM ended, if it ended after this round's look.
    controller.serve_gdb();
    // The one shutdown path: every vCPU is stopped and joined, the last
    // metrics written, the terminal restored.
    let served = match controller.phase {
        Phase::Running(vm) => Served::Finished((*vm).join()),
        Phase::NotStarted => Served::NeverStarted(control.outcome()),
    };
    controller.phase = Phase::NotStarted;
    if let Served::Finished(finished) = &served
        && finished.outcome == VmOutcome::GuestPanic
        && let Some(dir) = controller.draft.to_config_unchecked().dump_on_panic
    {
        // The one line that says where the panic's core is (or why not).
        let path = crate::core_dump::panic_path(&dir, &controller.options.id);
        match finished.write_core(&path) {
            Ok(_) => eprintln!("sie: the guest panicked; its core is {}", path.display()),
            Err(error) => eprintln!(
                "sie: the guest panicked; cannot write its core {}: {error}",
                path.display()
            ),
        }
    }
    match &served {
        Served::Finished(finished) => {
            controller.metrics.flush(Some(finished.figures()));
        }
        Served::NeverStarted(_) => {
            controller.metrics.flush(None);
        }
    }
    // After the core (which may read lazily restored RAM): a lazy restore's
    // working set is written before the process can exit.
    crate::snapshot::lazy::finish_recordings(Duration::from_secs(5));
    drop(controller.terminal.take());
    Ok(served)
}

/// How long a round of events may wait: until the next periodic metrics
/// line when there is a metrics file to write it to, else until something
/// happens (everything else wakes the loop through a descriptor, see
/// `event_loop`).
/// The sooner of two optional waits (`None`: no deadline).
fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn round_timeout(metrics_sink: bool, next_metrics: Instant, now: Instant) -> Option<Duration> {
    metrics_sink.then(|| next_metrics.saturating_duration_since(now))
}

impl Controller {
    fn vm(&self) -> Option<&StartedVm> {
        match &self.phase {
            Phase::Running(vm) => Some(vm),
            Phase::NotStarted => None,
        }
    }

    /// Lends the VM to the gdb stub (when a gdb socket was given) for what
    /// gdb sent and the vCPUs reported since the last round, or for a gdb
    /// attaching now.
    fn serve_gdb(&mut self) {
        let Some(gdb) = self.gdb.as_mut() else {
            return;
        };
        if let Phase::Running(vm) = std::mem::replace(&mut self.phase, Phase::NotStarted) {
            self.phase = Phase::Running(gdb.serve(vm));
        }
    }

    fn flush_metrics(&mut self) -> bool {
        let vm = match &self.phase {
            Phase::Running(vm) => Some(vm.figures()),
            Phase::NotStarted => None,
        };
        self.metrics.flush(vm)
    }

    /// The config file's `logger` and `metrics` sections, applied as
    /// `PUT /logger` and `PUT /metrics` would be.
    fn apply_logging(&mut self, config: &VmConfig) -> Result<()> {
        if let Some(logger) = &config.logger {
            logger
                .validate()
                .map_err(|message| VmmError::Platform(format!("logger: {message}").into()))?;
            let Some(control) = self.options.logger.as_mut() else {
                return Err(VmmError::Unsupported(
                    "a logger section here (pass --log-level instead)",
                ));
            };
            control
                .configure(logger)
                .map_err(|message| VmmError::Platform(format!("logger: {message}").into()))?;
            self.draft.note_logging(Some(logger.clone()), None);
        }
        if let Some(metrics) = &config.metrics {
            if self.metrics.has_sink() {
                return Err(VmmError::Platform(
                    "metrics: already configured (--metrics-path); they can be set only once"
                        .into(),
                ));
            }
            let sink = sink::LineSink::open(&metrics.metrics_path)
                .map_err(|e| VmmError::Platform(format!("metrics: {e}").into()))?;
            self.metrics.set_sink(sink);
            self.metrics
                .set_line_fields(metrics.line_fields(&self.options.id));
            self.draft.note_logging(None, Some(metrics.clone()));
        }
        Ok(())
    }

    /// Builds and starts the VM from the draft.
    fn start(&mut self, hv: &dyn Hypervisor, manager: &mut Manager) -> Result<()> {
        let mut config = self
            .draft
            .to_config()
            .map_err(|message| VmmError::Platform(message.into()))?;
        self.host_choices(&mut config);
        let build = self.build_options(&config)?;
        self.start_migration_worker()?;
        let built = crate::builder::build_on(
            &config,
            hv,
            build,
            self.control.clone(),
            self.premade_vm.take(),
        )?;
        self.run_built(built, config, false, manager)
    }

    /// The command line's console and core-dump choices laid over `config`.
    fn host_choices(&self, config: &mut VmConfig) {
        if let Some(flags) = &self.options.serial {
            config.serial = Some(config.serial.clone().unwrap_or_default().merged(flags));
        }
        if let Some(dir) = &self.options.dump_on_panic {
            config.dump_on_panic = Some(dir.clone());
        }
    }

    /// The build options, with COM1's output where `config.serial` puts it
    /// (its console socket is kept for `run_built`).
    fn build_options(&mut self, config: &VmConfig) -> Result<BuildOptions> {
        // Checked now, while a mistake can still stop the start: the core
        // is written when the guest panics, long after.
        if let Some(dir) = &config.dump_on_panic
            && !dir.is_dir()
        {
            return Err(VmmError::Platform(
                format!("dump_on_panic: {} is not a directory", dir.display()).into(),
            ));
        }
        let mut build = (self.options.build_options)();
        // The controller's metadata store, which the API fills.
        build.mmds = Some(self.options.mmds.clone());
        if let Some(serial) = &config.serial {
            let sinks = crate::console::sinks::open(serial)
                .map_err(|error| VmmError::Platform(Box::new(error)))?;
            if let Some(output) = sinks.output {
                build.console = ConsoleOutput::new(output);
            }
            self.console_socket = sinks.socket;
        }
        Ok(build)
    }

    /// Starts a built (or restored) VM's vCPUs and serves its devices.
    fn run_built(
        &mut self,
        built: crate::builder::BuiltVm,
        config: VmConfig,
        paused: bool,
        manager: &mut Manager,
    ) -> Result<()> {
        let flush = crate::console::ConsoleFlush::new(&built.devices.console)
            .map_err(host_error("watching the console"))?;
        manager.add_subscriber(Box::new(flush));
        // The console's input goes to the device that carries it: the
        // virtio console if placed, else COM1.
        let console_input = match &built.virtio.console {
            Some(console) => console.input(),
            None => built.devices.serial_input(),
        };
        if let Some(mut socket) = self.console_socket.take() {
            if let Some((sink, room)) = console_input {
                socket.set_input(sink, room);
            }
            manager.add_subscriber(Box::new(socket));
        } else if self.options.console_input
            && let Some((sink, room)) = console_input
        {
            self.terminal = TerminalGuard::raw_stdin();
            manager.add_subscriber(Box::new(crate::console::ConsoleInput::new(
                libc::STDIN_FILENO,
                sink,
                room,
            )));
        }
        // With a gdb socket, gdb is waited for before the first guest
        // instruction: the vCPUs start paused and gdb lets them run.
        let gdb_socket = config
            .machine_config
            .as_ref()
            .and_then(|m| m.gdb_socket_path.as_deref());
        if let Some(path) = gdb_socket {
            let server = crate::gdb::GdbServer::wait_for_gdb(std::path::Path::new(path))
                .map_err(|e| VmmError::Gdb(Box::new(e)))?;
            manager.add_subscriber(Box::new(server.waker()));
            self.gdb = Some(server);
        }
        let paused = paused || self.gdb.is_some();
        // Each vCPU thread's own filter is waited for with the VMM thread's.
        let mut started = built.start_unchecked(paused, &self.options.seccomp)?;
        for worker in std::mem::take(&mut started.virtio.workers) {
            manager.add_subscriber(worker);
        }
        // The VMM thread's filter allows no new threads: the worker a
        // later migration runs on is spawned now (and waited for just
        // before that filter goes on).
        self.start_migration_worker()?;
        // Devices plugged in later are built on a thread spawned now,
        // under the build filter (see drive_hotplug.rs).
        if started.pci_hotplug.is_some() && self.hotplug_worker.is_none() {
            self.hotplug_worker = Some(
                crate::drive_hotplug::HotplugWorker::spawn()
                    .map_err(host_error("spawning the hotplug thread"))?,
            );
        }
        // The VM runs: what only building it touched (most of the code the
        // process mapped, malloc's freed memory) goes back once it has run
        // [`RELEASE_FIRST_AFTER`] (never inside the request that started it,
        // which would wait for it, nor in a VM that lives less: it would
        // touch those pages again as it ends), and what the guest's boot
        // touched a little later; see process_memory/release.rs.
        // /proc/self/smaps is opened before seccomp forbids it.
        crate::process_memory::open_smaps();
        self.release_memory_at = Some((Instant::now() + RELEASE_FIRST_AFTER, true));
        // Building needs far more of the kernel than serving does: the VMM
        // thread's filter goes on only after the vCPU threads started (a
        // thread inherits its creator's filter), once the request that
        // built the VM has its answer and before anything else is served
        // ([`Controller::install_vmm_filter`]): the 0.25 ms the kernel takes
        // to check and compile it is no longer part of every start.
        self.vmm_filter_pending = true;
        let logging = self.draft.to_config_unchecked();
        self.draft = draft::Draft::from_config(config);
        self.draft.note_logging(logging.logger, logging.metrics);
        self.phase = Phase::Running(Box::new(started));
        Ok(())
    }

    /// With no VM yet (it waits for the API), does now what the boot or
    /// load it waits for would otherwise do first: spawns the migration
    /// worker and makes the VM, empty (`KVM_CREATE_VM`, 0.2-0.4 ms here).
    /// The client is still connecting and sending; a request that comes
    /// sooner waits at most that long, as it would inside the build.
    /// Whatever fails here is left to the build, which says why.
    fn prepare_ahead(&mut self, hv: &dyn Hypervisor) {
        if !matches!(self.phase, Phase::NotStarted) {
            return;
        }
        let _ = self.start_migration_worker();
        self.premade_vm = crate::builder::PremadeVm::empty(hv).ok();
    }

    /// Puts the VMM thread's seccomp filter on once a VM was built (see
    /// `run_built`), after the migration worker spawned for it is ready and
    /// every vCPU thread's own filter is on. A filter the kernel refuses
    /// ends sie: the VM does not run unfiltered.
    fn install_vmm_filter(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.vmm_filter_pending) {
            return Ok(());
        }
        self.migration
            .worker_ready()
            .map_err(host_error("spawning the migration worker"))?;
        if let Phase::Running(vm) = &mut self.phase {
            vm.wait_vcpu_filters()?;
        }
        self.options
            .seccomp
            .install(sie_seccomp::ThreadKind::Vmm)
            .map_err(|error| VmmError::Host {
                what: "seccomp",
                source: std::io::Error::other(error),
            })
    }
}

/// Runs the VM `config` describes from boot to its end, with no API: what
/// `sie run`, `sie doctor` and the benchmarks do. The same controller as
/// the API serves it ([`controller::serve`] with no requests), so the
/// config file's `logger` section needs a [`controller::LoggerControl`]:
/// use `serve` directly for that.
pub fn run(
    hv: &dyn Hypervisor,
    config: VmConfig,
    build: BuildOptions,
    console_input: bool,
) -> Result<FinishedVm> {
    let options = ServeOptions::without_api(config, build, console_input);
    match serve(hv, &mut NoRequests::new()?, options)? {
        Served::Finished(finished) => Ok(finished),
        // The VM is started before the first event is served; only a
        // failed build (an error above) leaves it unstarted.
        Served::NeverStarted(_) => Err(VmmError::Platform(
            "the VM was stopped before it started".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_waits_for_the_next_metrics_line_only_with_a_metrics_file() {
        let now = Instant::now();
        let next = now + Duration::from_secs(60);
        assert_eq!(round_timeout(false, next, now), None);
        assert_eq!(
            round_timeout(true, next, now),
            Some(Duration::from_secs(60))
        );
        // Overdue: the round does not wait at all.
        assert_eq!(round_timeout(true, now, next), Some(Duration::ZERO));
    }

    #[test]
    fn a_round_waits_for_the_sooner_deadline() {
        let ms = Duration::from_millis;
        assert_eq!(earliest(None, None), None);
        assert_eq!(earliest(Some(ms(60)), None), Some(ms(60)));
        assert_eq!(earliest(None, Some(ms(10))), Some(ms(10)));
        assert_eq!(earliest(Some(ms(60)), Some(ms(10))), Some(ms(10)));
    }
}
