//! The controller's side of a live migration: the API requests, and the
//! migration thread's requests ([`ToVmm`]) served on the VMM thread between
//! rounds of events, since only this thread may touch the VM.
//!
//! Threads: a receive runs on a thread spawned when asked (sie has no VM
//! yet, and its thread runs the `build` filter only); a send runs on the
//! `sie-migrate` worker, spawned with the VM's other threads before the
//! VMM thread's own filter goes on (that filter allows no new threads),
//! and idle until a send is asked. Both install the `migration` filter
//! (sockets, no KVM) on the `build` filter they inherit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use sie_config::{MigrationReceive, MigrationSend, Response};
use sie_hv::Hypervisor;
use sie_seccomp::{Seccomp, ThreadKind};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Controller, Phase};
use crate::event_loop::Manager;
use crate::migration::converge;
use crate::migration::local::LocalSender;
use crate::migration::pace::Pacer;
use crate::migration::progress::{self, MigrationState, Progress, SharedProgress};
use crate::migration::send::{SendPlan, Sender as MigrationSender};
use crate::migration::{Endpoint, SendEnd, Switchover, ToVmm, VmmLink, postcopy, receive};
use crate::outcome::VmOutcome;
use crate::snapshot::dirty::RegionPages;

/// Why a local send is refused on private guest RAM.
const LOCAL_NEEDS_SHARED: &str = "migration/send: local mode needs guest memory in shared memory: start sie with --memory-shared (machine-config \"shared_memory\": true)";

/// How long the switch-over waits for every vCPU to leave the guest.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

type Job = Box<dyn FnOnce() + Send>;

/// The controller's migration state.
pub(super) struct Migration {
    tx: Sender<ToVmm>,
    rx: Receiver<ToVmm>,
    /// Shared rather than duplicated: the VMM thread's filter refuses
    /// `fcntl(F_DUPFD)`.
    wake: Arc<EventFd>,
    progress: SharedProgress,
    cancel: Option<Arc<AtomicBool>>,
    /// The worker that runs a send (spawned with the VM).
    worker: Option<Sender<Job>>,
    /// Its answer once it runs under its filter, until read.
    worker_started: Option<Receiver<Result<(), String>>>,
    /// The switch-over paused the vCPUs: a failure resumes them.
    paused_here: bool,
    /// A send or receive is under way.
    active: bool,
    /// A send's `Go` left but its `Done` never came (why): the VM may run
    /// on the destination, so it never resumes here.
    handed_over: Option<String>,
    /// The send under way hands guest RAM over (local mode).
    local: bool,
    /// Every page a send took from the dirty log and the VMM's bitmap: a
    /// failed send marks them again, so a later Diff snapshot misses none.
    taken: Vec<RegionPages>,
    /// The send's mode (its figures say how it went).
    mode: sie_config::MigrationMode,
    /// The send's auto-converge throttle, percent (0: none).
    throttle: u8,
    /// When the vCPUs sit out next.
    next_throttle: Instant,
    /// The taps a VM migrating in uses here (`PUT /migration/receive`).
    receive_overrides: Vec<sie_config::NetworkOverride>,
    /// A post-copy receive's userfaultfd, held here as long as the VM: if
    /// the stream dies, a vCPU waiting on a missing page must go on waiting
    /// until the failure is recorded. Closed earlier, the kernel would let
    /// it run on a zero page, and the guest would crash first.
    postcopy_uffd: Option<Arc<crate::snapshot::uffd::Uffd>>,
    /// The VM a receive made ahead of the state ([`ToVmm::Premake`]).
    premade: Option<crate::builder::PremadeVm>,
}

/// Wakes the event loop when a migration thread asked something; the
/// request is served after the round of events.
struct MigrationWake(EventFd);

impl MutEventSubscriber for MigrationWake {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::new(&self.0, EventSet::IN));
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Emptied here: the channel says what was asked.
        let _ = self.0.read();
    }
}

impl Migration {
    /// A migration slot whose wake fd `manager` watches.
    pub(super) fn new(manager: &mut Manager) -> std::io::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        manager.add_subscriber(Box::new(MigrationWake(wake.try_clone()?)));
        let (tx, rx) = mpsc::channel();
        Ok(Self {
            tx,
            rx,
            wake: Arc::new(wake),
            progress: Arc::new(Mutex::new(Progress::default())),
            cancel: None,
            worker: None,
            worker_started: None,
            paused_here: false,
            active: false,
            handed_over: None,
            local: false,
            mode: sie_config::MigrationMode::Precopy,
            taken: Vec::new(),
            throttle: 0,
            next_throttle: Instant::now(),
            receive_overrides: Vec::new(),
            postcopy_uffd: None,
            premade: None,
        })
    }

    fn link(&self) -> VmmLink {
        VmmLink {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }

    /// Spawns the send worker (before the VMM thread's filter goes on)
    /// without waiting for it: it starts on the other CPU while the VM is
    /// built. [`Migration::worker_ready`] waits.
    pub(super) fn start_worker(&mut self, seccomp: &Seccomp) -> std::io::Result<()> {
        if self.worker.is_some() {
            return Ok(());
        }
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::channel();
        let seccomp = seccomp.clone();
        std::thread::Builder::new()
            .name("sie-migrate".into())
            .spawn(move || {
                let installed = seccomp.install(ThreadKind::Migration);
                let ok = installed.is_ok();
                let _ = ready.send(installed.map_err(|e| e.to_string()));
                if !ok {
                    return;
                }
                while let Ok(job) = queue.recv() {
                    job();
                }
            })?;
        self.worker = Some(jobs);
        self.worker_started = Some(started);
        Ok(())
    }

    /// Waits until the worker [`Migration::start_worker`] spawned runs
    /// under its own filter, named, so the VM starts with every thread in
    /// its final shape.
    pub(super) fn worker_ready(&mut self) -> std::io::Result<()> {
        let Some(started) = self.worker_started.take() else {
            return Ok(());
        };
        let result = started
            .recv()
            .unwrap_or_else(|_| Err("the migration worker died starting".into()));
        if result.is_err() {
            self.worker = None;
        }
        result.map_err(std::io::Error::other)
    }

    fn start(&mut self, peer: String, state: MigrationState) -> SharedProgress {
        self.progress = Arc::new(Mutex::new(Progress {
            state,
            peer,
            ..Progress::default()
        }));
        self.active = true;
        self.progress.clone()
    }
}

impl Controller {
    /// `GET /migration`.
    pub(super) fn migration_status(&self) -> Response {
        let progress = progress::read(&self.migration.progress);
        Response::Json(serde_json::to_value(progress).unwrap_or_default())
    }

    /// `PUT /migration/cancel`: the send stops before the switch-over.
    pub(super) fn cancel_migration(&mut self) -> Response {
        match (&self.migration.cancel, self.migration.active) {
            (Some(cancel), true) => {
                cancel.store(true, Ordering::Release);
                Response::NoContent
            }
            _ => Response::fault("no migration is being sent"),
        }
    }

    /// `PUT /migration/receive`: listen, then take in a VM on a thread.
    pub(super) fn receive_migration(&mut self, receive: &MigrationReceive) -> Response {
        if self.is_started_vm() || self.draft.is_configured() {
            return Response::fault(
                "migration/receive: this sie already has a microVM; receive into a fresh sie",
            );
        }
        if self.migration.active {
            return Response::fault("migration/receive: a migration is already under way");
        }
        let endpoint = match Endpoint::parse(&receive.receiver_url) {
            Ok(endpoint) => endpoint,
            Err(message) => return Response::Fault(message),
        };
        let listener = match endpoint.listen() {
            Ok(listener) => listener,
            Err(e) => return Response::Fault(format!("migration/receive: {endpoint}: {e}")),
        };
        self.migration
            .receive_overrides
            .clone_from(&receive.network_overrides);
        let link = self.migration.link();
        let progress = self
            .migration
            .start(endpoint.to_string(), MigrationState::Receiving);
        self.metrics.watch_migration(progress.clone());
        let receiver = receive::Receiver {
            listener,
            link,
            progress,
        };
        let seccomp = self.options.seccomp.clone();
        match std::thread::Builder::new()
            .name("sie-migrate".into())
            .spawn(move || match seccomp.install(ThreadKind::Migration) {
                Ok(()) => receiver.run(),
                Err(error) => receiver.fail(format!("migration thread: {error}")),
            }) {
            Ok(_) => Response::NoContent,
            Err(e) => {
                self.migration.active = false;
                Response::Fault(format!("migration/receive: starting its thread: {e}"))
            }
        }
    }

    /// `PUT /migration/send`: the worker sends while the VM runs on.
    pub(super) fn send_migration(&mut self, send: &MigrationSend) -> Response {
        if let Err(message) = send.check() {
            return Response::Fault(message);
        }
        let Phase::Running(vm) = &self.phase else {
            return Response::fault("migration/send: no microVM is running here");
        };
        if self.draft.has_vfio() {
            return Response::fault(sie_config::VFIO_NOT_SNAPSHOTTABLE);
        }
        if self.draft.to_config_unchecked().pci_enabled() {
            return Response::Fault(format!("migration/send: {}", super::PCI_NOT_SNAPSHOTTABLE));
        }
        if self.migration.active {
            return Response::fault("migration/send: a migration is already under way");
        }
        if let Some(why) = &self.migration.handed_over {
            return Response::Fault(format!("migration/send: {why}"));
        }
        let config = self.draft.to_config_unchecked();
        if !config.pmem.is_empty() || config.memory_hotplug.is_some() {
            return Response::fault(super::handle::PMEM_NO_SNAPSHOT);
        }
        let Some(worker) = self.migration.worker.clone() else {
            return Response::fault("migration/send: this sie was started without migration");
        };
        let destination = match Endpoint::parse(&send.destination_url) {
            Ok(endpoint) => endpoint,
            Err(message) => return Response::Fault(message),
        };
        if send.local {
            return self.send_local(destination, send, worker);
        }
        let link = self.migration.link();
        let cancel = Arc::new(AtomicBool::new(false));
        self.migration.local = false;
        let sender = MigrationSender {
            plan: SendPlan {
                destination: destination.clone(),
                downtime: Duration::from_millis(send.downtime_ms()),
                timeout: Duration::from_secs(send.timeout_s),
                auto_converge: send.auto_converge(),
                mode: send.mode,
            },
            memory: vm.memory().clone(),
            scan_contents: vm.memory_from_file(),
            link,
            progress: Arc::default(),
            cancel: cancel.clone(),
            pace: send.max_bandwidth_mib_s.map(Pacer::new),
            postcopy: std::cell::Cell::new(false),
        };
        let progress = self
            .migration
            .start(destination.to_string(), MigrationState::Sending);
        self.metrics.watch_migration(progress.clone());
        let sender = MigrationSender { progress, ..sender };
        self.migration.cancel = Some(cancel);
        self.migration.paused_here = false;
        self.migration.mode = send.mode;
        if worker.send(Box::new(move || sender.run())).is_err() {
            self.migration.active = false;
            return Response::fault("migration/send: the migration worker is gone");
        }
        Response::NoContent
    }

    /// `PUT /migration/send` with `"local": true`: guest RAM's memfds go
    /// to the receiver, nothing is copied.
    fn send_local(
        &mut self,
        destination: Endpoint,
        send: &MigrationSend,
        worker: Sender<Job>,
    ) -> Response {
        let Phase::Running(vm) = &self.phase else {
            return Response::fault("migration/send: no microVM is running here");
        };
        if crate::shared_memory::memfds(vm.memory()).is_none() {
            return Response::fault(LOCAL_NEEDS_SHARED);
        }
        let memory = vm.memory().clone();
        let cancel = Arc::new(AtomicBool::new(false));
        let progress = self
            .migration
            .start(destination.to_string(), MigrationState::Sending);
        self.metrics.watch_migration(progress.clone());
        let sender = LocalSender {
            destination,
            memory,
            timeout: Duration::from_secs(send.timeout_s),
            link: self.migration.link(),
            progress,
            cancel: cancel.clone(),
        };
        self.migration.cancel = Some(cancel);
        self.migration.paused_here = false;
        self.migration.local = true;
        self.migration.mode = send.mode;
        if worker.send(Box::new(move || sender.run())).is_err() {
            self.migration.active = false;
            return Response::fault("migration/send: the migration worker is gone");
        }
        Response::NoContent
    }

    pub(super) fn migration_active(&self) -> bool {
        self.migration.active
    }

    /// Spawns the `sie-migrate` worker, if this sie runs one and has none
    /// yet, without waiting for it: called as a build begins, so the worker
    /// starts on the other CPU meanwhile (`run_built` waits for it).
    pub(super) fn start_migration_worker(&mut self) -> crate::error::Result<()> {
        if !self.options.migration_worker {
            return Ok(());
        }
        self.migration
            .start_worker(&self.options.seccomp)
            .map_err(super::host_error("spawning the migration worker"))
    }

    fn is_started_vm(&self) -> bool {
        matches!(self.phase, Phase::Running(_))
    }

    /// Serves what the migration threads asked since the last round.
    pub(super) fn serve_migration(&mut self, hv: &dyn Hypervisor, manager: &mut Manager) {
        while let Ok(message) = self.migration.rx.try_recv() {
            match message {
                ToVmm::StartDirtyLog(reply) => {
                    let _ = reply.send(self.start_dirty_log());
                }
                ToVmm::TakeDirty(reply) => {
                    let _ = reply.send(self.take_dirty());
                }
                ToVmm::Switchover { reply, release } => {
                    let result = self.switchover(hv);
                    let paused = result.is_ok();
                    let _ = reply.send(result);
                    if paused {
                        // No device event until the sender read the last
                        // pages (it drops `release`, also when it fails).
                        let _ = release.recv();
                    }
                }
                ToVmm::LocalSwitchover { reply, end } => match self.local_switchover(hv) {
                    Ok(state) => {
                        let _ = reply.send(Ok(state));
                        // Nothing else is served until the send ended: no
                        // device here may write guest RAM the receiver
                        // shares. A thread gone without a word may have
                        // sent the go: the guest stays paused.
                        let end = end.recv().unwrap_or_else(|_| {
                            SendEnd::Unconfirmed("the migration thread ended".into())
                        });
                        self.send_finished(end);
                    }
                    Err(why) => {
                        let _ = reply.send(Err(why));
                    }
                },
                ToVmm::Throttle(percent) => self.set_throttle(percent),
                ToVmm::SendFinished(result) => self.send_finished(result),
                ToVmm::Premake { memory, reply } => {
                    if !self.is_started_vm() {
                        if let Err(error) = self.start_migration_worker() {
                            tracing::warn!("migration: {}", crate::error::error_chain(&error));
                        }
                        // The empty VM made while the API waited, if any.
                        let made = match self.premade_vm.take() {
                            Some(empty) => empty.with_memory(hv, &memory),
                            None => crate::builder::PremadeVm::make(hv, &memory),
                        };
                        match made {
                            Ok(premade) => self.migration.premade = Some(premade),
                            Err(error) => tracing::warn!(
                                "migration: making the VM ahead of its state failed (the switch-over makes it): {}",
                                crate::error::error_chain(&error)
                            ),
                        }
                    }
                    // A copying receiver does not wait for this.
                    let _ = reply.send(Ok(()));
                }
                ToVmm::Arrived {
                    snapshot,
                    memory,
                    reply,
                } => {
                    let result = self.run_arrived(*snapshot, memory, hv, manager);
                    let _ = reply.send(result);
                }
                ToVmm::StartFaults {
                    memory,
                    stream,
                    reply,
                } => {
                    // Before the VMM thread's own filter: a descriptor and
                    // a thread are made.
                    let started = postcopy::start(&memory, stream, &self.options.seccomp)
                        .map_err(|e| format!("post-copy page faults: {e}"));
                    if let Ok(link) = &started {
                        self.migration.postcopy_uffd = Some(link.uffd.clone());
                    }
                    let _ = reply.send(started);
                }
                ToVmm::Go(reply) => {
                    let _ = reply.send(self.go_arrived());
                }
                ToVmm::ReceiveFailed(why) => {
                    self.migration.active = false;
                    self.migration.premade = None;
                    self.control.finish(VmOutcome::MigrationFailed(why));
                    // Only now: the outcome is recorded before a vCPU can
                    // run on in memory that never came.
                    self.migration.postcopy_uffd = None;
                }
            }
        }
        self.throttle_step();
    }

    fn set_throttle(&mut self, percent: u8) {
        if percent > 0 {
            tracing::info!(
                "migration: the vCPUs sit out {percent}% of the time so the rounds converge"
            );
        }
        self.migration.throttle = percent;
        self.migration.next_throttle = Instant::now();
        progress::update(&self.migration.progress, |p| p.throttle_percent = percent);
    }

    /// Once a period while a send throttles: every vCPU sits out its share.
    fn throttle_step(&mut self) {
        let percent = self.migration.throttle;
        let now = Instant::now();
        if percent == 0 || now < self.migration.next_throttle {
            return;
        }
        if let Phase::Running(vm) = &self.phase {
            vm.vcpus.throttle(percent);
        }
        self.migration.next_throttle = now + converge::PERIOD;
    }

    /// How long the event loop may sleep before the next throttle step
    /// (`None`: no throttle, as long as it likes).
    pub(super) fn throttle_wait(&self) -> Option<Duration> {
        (self.migration.throttle > 0).then(|| {
            self.migration
                .next_throttle
                .saturating_duration_since(Instant::now())
        })
    }

    fn start_dirty_log(&mut self) -> Result<(), String> {
        let Phase::Running(vm) = &self.phase else {
            return Err("the microVM is gone".into());
        };
        if !self.tracks_dirty_pages() {
            vm.hv_vm()
                .enable_dirty_log()
                .map_err(|e| format!("dirty page logging: {}", crate::error::error_chain(&e)))?;
        }
        // A new period: what the first pass reads is sent whatever it held.
        self.take_dirty().map(drop)
    }

    fn tracks_dirty_pages(&self) -> bool {
        crate::builder::tracks_dirty_pages(&self.draft.to_config_unchecked())
    }

    fn take_dirty(&mut self) -> Result<Vec<RegionPages>, String> {
        let Phase::Running(vm) = &self.phase else {
            return Err("the microVM is gone".into());
        };
        // Logging is on for the migration whatever the configuration says.
        let pages = crate::snapshot::dirty::take(vm.memory(), vm.hv_vm(), true)
            .map_err(|e| format!("dirty pages: {}", crate::error::error_chain(&e)))?;
        remember(&mut self.migration.taken, &pages);
        Ok(pages)
    }

    fn switchover(&mut self, hv: &dyn Hypervisor) -> Result<Switchover, String> {
        let state = self.local_switchover(hv)?;
        let Phase::Running(vm) = &self.phase else {
            return Err("the microVM is gone".into());
        };
        // After the state: requests completed while saving it are in here.
        let pages = crate::snapshot::dirty::take(vm.memory(), vm.hv_vm(), true)
            .map_err(|e| format!("dirty pages: {}", crate::error::error_chain(&e)))?;
        remember(&mut self.migration.taken, &pages);
        Ok(Switchover { pages, state })
    }

    /// Local mode's pause, and the first half of a copy's: the vCPUs stop
    /// and the state is taken; guest RAM is not read (a local receiver
    /// maps the same memfds).
    fn local_switchover(&mut self, hv: &dyn Hypervisor) -> Result<Vec<u8>, String> {
        let config = self.draft.to_config()?;
        let msrs = hv
            .supported_msrs()
            .map_err(|e| crate::error::error_chain(&e))?;
        let Phase::Running(vm) = &mut self.phase else {
            return Err("the microVM is gone".into());
        };
        if !vm.vcpus.is_paused() {
            if let Err(error) = vm.vcpus.pause(PAUSE_TIMEOUT) {
                let _ = vm.vcpus.resume(PAUSE_TIMEOUT);
                return Err(format!("cannot pause the microVM: {error}"));
            }
            self.migration.paused_here = true;
        }
        let (state, _) = crate::snapshot::encode_state(vm, &config, msrs, None)
            .map_err(|e| crate::error::error_chain(&e))?;
        Ok(state)
    }

    /// Why the VM may not resume here (a send's `Go` left unconfirmed).
    pub(super) fn migration_handed_over(&self) -> Option<&str> {
        self.migration.handed_over.as_deref()
    }

    fn send_finished(&mut self, end: SendEnd) {
        // However the send ended, the guest is not throttled here any
        // more; when it failed, it runs on here at full speed (a completed
        // send keeps its last step in the figures: the VM ended under it).
        self.migration.throttle = 0;
        if !matches!(end, SendEnd::Moved(_)) {
            progress::update(&self.migration.progress, |p| p.throttle_percent = 0);
        }
        self.migration.active = false;
        self.migration.cancel = None;
        let taken = std::mem::take(&mut self.migration.taken);
        let local = std::mem::take(&mut self.migration.local);
        match end {
            SendEnd::Moved(destination) if local => {
                let p = progress::read(&self.migration.progress);
                let shared: u64 = match &self.phase {
                    Phase::Running(vm) => vm.memory().iter().map(|r| r.len()).sum(),
                    _ => 0,
                };
                let figures = format!(
                    "{destination} in local mode: {:.1} MiB of guest RAM handed over, {:.1} KiB sent, {} ms of downtime{}, {} ms in all",
                    shared as f64 / f64::from(1u32 << 20),
                    p.bytes as f64 / 1024.0,
                    p.downtime_ms.unwrap_or_default(),
                    downtime_parts(&p),
                    p.total_ms.unwrap_or_default(),
                );
                tracing::info!("the VM migrated to {figures}");
                self.control.finish(VmOutcome::Migrated(figures));
            }
            SendEnd::Moved(destination) => {
                let p = progress::read(&self.migration.progress);
                let auto = self.migration.mode == sie_config::MigrationMode::Auto;
                let how = match (p.postcopy, auto) {
                    (true, false) => {
                        format!("in post-copy ({} pages asked for)", p.requested_pages)
                    }
                    (true, true) => format!(
                        "after {} pre-copy rounds, then in post-copy ({} pages asked for)",
                        p.round, p.requested_pages
                    ),
                    (false, _) => format!("after {} pre-copy rounds", p.round),
                };
                let mut figures = format!(
                    "{destination} {how}: {:.1} MiB sent, {} ms of downtime{}, {} ms in all",
                    p.bytes as f64 / f64::from(1u32 << 20),
                    p.downtime_ms.unwrap_or_default(),
                    downtime_parts(&p),
                    p.total_ms.unwrap_or_default(),
                );
                if p.throttle_percent > 0 {
                    figures.push_str(&format!(
                        ", the vCPUs throttled {}% at the end",
                        p.throttle_percent
                    ));
                }
                tracing::info!("the VM migrated to {figures}");
                self.control.finish(VmOutcome::Migrated(figures));
            }
            SendEnd::Unconfirmed(why) => {
                // Paused it stays: resuming could run the guest twice.
                tracing::error!("migration failed after the go: {why}");
                self.migration.paused_here = false;
                self.migration.handed_over = Some(why);
            }
            SendEnd::Failed(why) => {
                tracing::warn!("migration failed, the VM runs on here: {why}");
                if let Phase::Running(vm) = &self.phase {
                    crate::snapshot::dirty::mark_again(vm.memory(), &taken);
                }
                if std::mem::take(&mut self.migration.paused_here)
                    && let Phase::Running(vm) = &mut self.phase
                    && let Err(error) = vm.vcpus.resume(PAUSE_TIMEOUT)
                {
                    tracing::error!("resuming after a failed migration: {error}");
                }
            }
        }
    }

    fn run_arrived(
        &mut self,
        mut snapshot: crate::snapshot::Snapshot,
        memory: sie_hv::GuestMemory,
        hv: &dyn Hypervisor,
        manager: &mut Manager,
    ) -> Result<(), String> {
        if self.is_started_vm() {
            return Err("this sie already runs a microVM".into());
        }
        // Pages copied (pre-copy) land in private memory here: the
        // configuration says so rather than claim shared RAM it lacks.
        if let Some(machine) = snapshot.config.machine_config.as_mut()
            && machine.shared_memory()
            && crate::shared_memory::memfds(&memory).is_none()
        {
            tracing::info!(
                "migration: guest RAM was copied into private memory here (shared_memory off; only a local migration keeps it shared)"
            );
            machine.shared_memory = None;
        }
        // Before the build opens them: the source still holds its taps.
        crate::snapshot::overrides::apply_network(
            &mut snapshot.config,
            &self.migration.receive_overrides,
        )?;
        let built = crate::snapshot::restore_with_memory(
            &snapshot,
            memory,
            self.migration.premade.take(),
            hv,
            (self.options.build_options)(),
            self.control.clone(),
        )
        .map_err(|e| crate::error::error_chain(&e))?;
        // Paused until the sender's go: without it the guest never runs
        // here (the sender may still resume it).
        self.run_built(built, snapshot.config, true, manager)
            .map_err(|e| crate::error::error_chain(&e))
    }

    fn go_arrived(&mut self) -> Result<(), String> {
        let Phase::Running(vm) = &mut self.phase else {
            return Err("the arrived microVM is gone".into());
        };
        vm.vcpus
            .resume(PAUSE_TIMEOUT)
            .map_err(|e| format!("running the arrived microVM: {e}"))?;
        self.migration.active = false;
        Ok(())
    }
}

/// Merges `pages` into `taken` (the same regions, in the same order).
fn remember(taken: &mut Vec<RegionPages>, pages: &[RegionPages]) {
    if taken.is_empty() {
        taken.extend_from_slice(pages);
        return;
    }
    for (into, from) in taken.iter_mut().zip(pages) {
        if into.bits.len() < from.bits.len() {
            into.bits.resize(from.bits.len(), 0);
        }
        for (word, more) in into.bits.iter_mut().zip(&from.bits) {
            *word |= more;
        }
    }
}

/// " (pause and state 1.2 ms, ...)": where the downtime went, for whoever
/// tunes a switch-over (also in `GET /migration` as `downtime_parts`).
fn downtime_parts(progress: &Progress) -> String {
    progress
        .downtime_parts
        .map_or_else(String::new, |parts| format!(" ({parts})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(bits: Vec<u64>) -> RegionPages {
        RegionPages {
            guest_addr: 0,
            len: 128 * 4096,
            bits,
        }
    }

    #[test]
    fn every_page_taken_during_a_send_is_remembered() {
        let mut taken = Vec::new();
        remember(&mut taken, &[region(vec![0b0011])]);
        remember(&mut taken, &[region(vec![0b0100, 1])]);
        assert_eq!(taken, [region(vec![0b0111, 1])]);
        assert_eq!(taken[0].count(), 4);
    }
}
