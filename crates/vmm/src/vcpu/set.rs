//! The VMM's side of the vCPUs: it starts their threads, asks for
//! transitions through each one's channel (with a kick), waits for the
//! acknowledgements, and joins the threads at the end.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sie_hv::{Vcpu, VcpuKicker};
use sie_seccomp::{Seccomp, ThreadKind};

use super::{AckState, VcpuAck, VcpuRequest, VcpuThread, vcpu_main};
use crate::control::VmControl;
use crate::core_dump::elf::VcpuRegisters;
use crate::dispatch::ExitContext;

/// Why a pause (or resume) did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// The VM is stopping; there is nothing to pause.
    #[error("the VM is stopping")]
    Stopping,
    /// Some vCPUs did not answer in time.
    #[error("{answered} of {total} vCPUs answered within {waited_ms} ms")]
    Timeout {
        /// vCPUs that did answer.
        answered: usize,
        /// All vCPUs.
        total: usize,
        /// How long the request waited.
        waited_ms: u64,
    },
}

/// Why work on a vCPU's registers did not run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VcpuAccessError {
    /// No vCPU with that index.
    #[error("no vCPU {0}")]
    NoSuchVcpu(usize),
    /// Registers are only touched while the VM is paused.
    #[error("vCPU {0} is not paused")]
    NotPaused(usize),
    /// The vCPU did not answer (it is stopping, or stuck).
    #[error("vCPU {0} did not answer")]
    NoAnswer(usize),
}

/// How long `with_vcpu` waits for a paused vCPU to do the work.
const ACCESS_TIMEOUT: Duration = Duration::from_secs(5);

struct VcpuLink {
    requests: Sender<VcpuRequest>,
    kicker: Arc<dyn VcpuKicker>,
    thread: Option<JoinHandle<Option<VcpuRegisters>>>,
}

impl VcpuLink {
    /// Queues `request` and makes the vCPU look at it: a kick makes a vCPU
    /// inside the guest leave it (a kick that lands elsewhere stays pending
    /// until its next `KVM_RUN`, so none is lost).
    fn send(&self, request: VcpuRequest) {
        // A vCPU whose thread ended has dropped its receiver: nothing to ask.
        if self.requests.send(request).is_ok() {
            self.kicker.kick();
        }
    }
}

/// Every vCPU of a running VM.
pub struct VcpuSet {
    links: Vec<VcpuLink>,
    acks: Receiver<VcpuAck>,
    exited: Vec<bool>,
    next_seq: u64,
    paused: bool,
    control: Arc<VmControl>,
    /// Each vCPU's registers when its thread ended (filled by `join`).
    final_registers: Vec<Option<VcpuRegisters>>,
    /// Each vCPU thread's word on its filter, until `wait_filters`.
    filters: Vec<Receiver<Result<(), sie_seccomp::SeccompError>>>,
}

impl VcpuSet {
    /// Starts a thread (`fc_vcpu N`) per vCPU, running (or paused, as if
    /// `pause` had been called, when `paused`). Each thread installs the
    /// vCPU seccomp filter before it first enters the guest; a filter the
    /// kernel refuses fails the spawn.
    pub fn spawn(
        vcpus: Vec<Box<dyn Vcpu>>,
        exits: Arc<ExitContext>,
        control: Arc<VmControl>,
        paused: bool,
        seccomp: &Seccomp,
    ) -> std::io::Result<Self> {
        let mut set = Self::spawn_unchecked(vcpus, exits, control, paused, seccomp)?;
        // A refused filter drops `set`, which stops and joins every thread.
        set.wait_filters()?;
        Ok(set)
    }

    /// [`VcpuSet::spawn`] without waiting for the threads' filters: each
    /// still installs its own before it first enters the guest, and
    /// [`VcpuSet::wait_filters`] says whether every one did. The VMM
    /// thread answers the request that started the VM meanwhile.
    pub fn spawn_unchecked(
        vcpus: Vec<Box<dyn Vcpu>>,
        exits: Arc<ExitContext>,
        control: Arc<VmControl>,
        paused: bool,
        seccomp: &Seccomp,
    ) -> std::io::Result<Self> {
        let (ack_tx, acks) = mpsc::channel();
        let mut set = Self {
            links: Vec::with_capacity(vcpus.len()),
            acks,
            exited: vec![false; vcpus.len()],
            next_seq: 1,
            paused,
            control: control.clone(),
            final_registers: Vec::new(),
            filters: Vec::with_capacity(vcpus.len()),
        };
        for (index, vcpu) in vcpus.into_iter().enumerate() {
            let (requests, receiver) = mpsc::channel();
            let kicker = vcpu.kicker();
            let thread = VcpuThread {
                vcpu,
                index,
                exits: exits.clone(),
                control: control.clone(),
                requests: receiver,
                acks: ack_tx.clone(),
                start_paused: paused,
                sat_out: false,
                running_since: Instant::now(),
            };
            let (filtered_tx, filtered) = mpsc::sync_channel(1);
            let seccomp = seccomp.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("fc_vcpu {index}"))
                .spawn(move || {
                    let installed = seccomp.install(ThreadKind::Vcpu);
                    let ok = installed.is_ok();
                    let _ = filtered_tx.send(installed);
                    if ok { vcpu_main(thread) } else { None }
                });
            let spawned = spawned.map(|handle| {
                set.links.push(VcpuLink {
                    requests,
                    kicker,
                    thread: Some(handle),
                });
                set.filters.push(filtered);
            });
            match spawned {
                Ok(()) => {}
                Err(error) => {
                    // Leave no thread behind.
                    set.exit_all();
                    set.join();
                    return Err(error);
                }
            }
        }
        Ok(set)
    }

    /// Waits until every vCPU thread spawned runs under its own filter; a
    /// filter the kernel refused (that thread has ended) is an error.
    pub fn wait_filters(&mut self) -> std::io::Result<()> {
        for filtered in std::mem::take(&mut self.filters) {
            match filtered.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(std::io::Error::other(error)),
                Err(_) => {
                    return Err(std::io::Error::other("a vCPU thread ended at its start"));
                }
            }
        }
        Ok(())
    }

    /// The number of vCPUs.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// True for a VM without vCPUs (never built by sie).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// True between a successful `pause` and the next `resume`.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends one request per live vCPU and waits until each acknowledged it
    /// with `want` (or its thread ended).
    fn transition(
        &mut self,
        request: fn(u64) -> VcpuRequest,
        want: AckState,
        timeout: Duration,
    ) -> Result<(), PauseError> {
        if self.control.is_stopping() {
            return Err(PauseError::Stopping);
        }
        let seq = self.seq();
        let mut waiting: Vec<bool> = self.exited.iter().map(|exited| !exited).collect();
        for (link, wait) in self.links.iter().zip(&waiting) {
            if *wait {
                link.send(request(seq));
            }
        }
        let deadline = Instant::now() + timeout;
        while waiting.iter().any(|w| *w) {
            let ack = match self
                .acks
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(ack) => ack,
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    let total = self.links.len();
                    return Err(PauseError::Timeout {
                        answered: total - waiting.iter().filter(|w| **w).count(),
                        total,
                        waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            };
            self.note(ack);
            if ack.state == AckState::Exited {
                if let Some(wait) = waiting.get_mut(ack.index) {
                    *wait = false;
                }
                return Err(PauseError::Stopping);
            }
            if ack.seq == seq
                && ack.state == want
                && let Some(wait) = waiting.get_mut(ack.index)
            {
                *wait = false;
            }
        }
        Ok(())
    }

    fn note(&mut self, ack: VcpuAck) {
        if ack.state == AckState::Exited
            && let Some(exited) = self.exited.get_mut(ack.index)
        {
            *exited = true;
        }
    }

    /// Takes every vCPU out of the guest and returns once each is `Paused`
    /// (registers readable and writable through [`VcpuSet::with_vcpu`]).
    /// Pausing a paused VM succeeds at once.
    pub fn pause(&mut self, timeout: Duration) -> Result<(), PauseError> {
        self.transition(VcpuRequest::Pause, AckState::Paused, timeout)?;
        self.paused = true;
        Ok(())
    }

    /// Lets every vCPU run again and returns once each is `Running`;
    /// resuming a running VM does nothing harmful.
    pub fn resume(&mut self, timeout: Duration) -> Result<(), PauseError> {
        let resumed = self.transition(VcpuRequest::Resume, AckState::Running, timeout);
        self.paused = false;
        resumed
    }

    /// Has every running vCPU sit out its `percent` share of the time it
    /// ran since it last sat out (a throttle step; the caller repeats it
    /// every 10 ms or so). Does not wait, and does nothing to a paused VM.
    pub fn throttle(&self, percent: u8) {
        if self.paused {
            return;
        }
        for (link, exited) in self.links.iter().zip(&self.exited) {
            if !exited {
                link.send(VcpuRequest::Throttle(percent));
            }
        }
    }

    /// Runs `work` on paused vCPU `index`'s own thread and returns its result.
    pub fn with_vcpu<R: Send + 'static>(
        &mut self,
        index: usize,
        work: impl FnOnce(&mut dyn Vcpu) -> R + Send + 'static,
    ) -> Result<R, VcpuAccessError> {
        if index >= self.links.len() {
            return Err(VcpuAccessError::NoSuchVcpu(index));
        }
        if !self.paused {
            return Err(VcpuAccessError::NotPaused(index));
        }
        let seq = self.seq();
        let (result_tx, result_rx) = mpsc::channel();
        self.links[index].send(VcpuRequest::Access(
            seq,
            Box::new(move |vcpu| {
                let _ = result_tx.send(work(vcpu));
            }),
        ));
        let deadline = Instant::now() + ACCESS_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(ack) = self.acks.recv_timeout(left) else {
                return Err(VcpuAccessError::NoAnswer(index));
            };
            self.note(ack);
            if ack.index != index || ack.seq != seq {
                if ack.index == index && ack.state == AckState::Exited {
                    return Err(VcpuAccessError::NoAnswer(index));
                }
                continue;
            }
            return match ack.state {
                AckState::Accessed => result_rx
                    .try_recv()
                    .map_err(|_| VcpuAccessError::NoAnswer(index)),
                _ => Err(VcpuAccessError::NotPaused(index)),
            };
        }
    }

    /// Asks every vCPU to end (paused ones too); does not wait.
    pub fn exit_all(&self) {
        for link in &self.links {
            link.send(VcpuRequest::Exit);
        }
    }

    /// Waits for every vCPU thread to end (ask them first: `exit_all`, or
    /// the VM's control ending the VM).
    pub fn join(&mut self) {
        for (index, link) in self.links.iter_mut().enumerate() {
            if let Some(thread) = link.thread.take() {
                // A thread that panicked already reported it (vcpu_main
                // catches panics); nothing more to learn here.
                let registers = thread.join().ok().flatten();
                if self.final_registers.len() <= index {
                    self.final_registers.resize(index + 1, None);
                }
                self.final_registers[index] = registers;
            }
        }
    }

    /// The registers each vCPU had when its thread ended (after `join`;
    /// `None` where they could not be read).
    pub fn final_registers(&self) -> &[Option<VcpuRegisters>] {
        &self.final_registers
    }
}

impl Drop for VcpuSet {
    fn drop(&mut self) {
        self.exit_all();
        self.join();
    }
}
