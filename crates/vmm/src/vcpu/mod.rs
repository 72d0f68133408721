//! The vCPU thread: a state machine over [`VcpuState`].
//!
//! ```text
//!            Pause                    Exit, or the dispatch ends the VM
//!  Running ────────▶ Paused ─────────────────────────────▶ Exiting ──▶ (thread ends)
//!  ▲ │ ▲  ◀──────────   │ ▲ Access(f): f(&mut vcpu)           ▲
//!  └─┘ │    Resume      └─┘                                    │
//!      └──────────────────── Exit, Flow::Finish/Crash ─────────┘
//!  (the loop on Running: Throttle(%), out of the guest a while)
//! ```
//!
//! Transitions are requested through one channel per vCPU ([`VcpuRequest`],
//! sent with a kick so a running vCPU leaves the guest at once) and each one
//! is acknowledged on the VMM's ack channel ([`VcpuAck`]). While `Running`
//! the thread enters the guest through [`ExitContext::run_once`] (where each
//! exit is decoded, counted and timed) and looks at its channel, and at
//! whether the VM is ending, after every exit; while `Paused` it is out of `KVM_RUN` and asleep on the channel, so
//! the VMM can read and write its registers through `Access`. A debug exit
//! the gdb stub armed also leads from `Running` to `Paused`, unrequested: the
//! vCPU leaves word in [`crate::debug_stop`] and the stub pauses the rest
//! (but a `#BP` of the guest's own goes back to the guest: it stays `Running`).
//! `Throttle(percent)` keeps a running vCPU out of the guest for a while
//! and lets it run again ([`throttle`]: a migration's auto-converge slows a
//! guest that dirties memory faster than the link carries it); a `Pause`
//! or `Exit` arriving meanwhile is taken at once. `Exiting` is
//! the one place a vCPU ends: it hands its outcome (if it ended the VM) to
//! [`VmControl::finish`] and acknowledges.
//!
//! Threads are named `fc_vcpu N` because orchestrators built for Firecracker
//! find vCPU threads by that name.

mod set;
#[cfg(test)]
mod tests;
mod throttle;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::time::Instant;

use sie_hv::Vcpu;

use crate::control::VmControl;
use crate::core_dump::elf::VcpuRegisters;
use crate::debug_stop::DebugStop;
use crate::dispatch::{CrashKind, ExitContext, Flow};
use crate::outcome::{CrashReport, VmOutcome};

pub use set::{PauseError, VcpuAccessError, VcpuSet};

/// Work done on a paused vCPU's own thread.
pub type VcpuAccess = Box<dyn FnOnce(&mut dyn Vcpu) + Send>;

/// Where a vCPU is.
#[derive(Debug)]
pub enum VcpuState {
    /// Entering the guest and handling its exits.
    Running,
    /// Out of `KVM_RUN`, asleep until the next request.
    Paused,
    /// Leaving; `Some` when this vCPU decided how the VM ends.
    Exiting(Option<VmOutcome>),
}

/// A transition (or work) the VMM asks of a vCPU. Every request carries a
/// sequence number that its acknowledgement repeats, so a late answer to an
/// earlier request is never taken for the answer to a new one.
pub enum VcpuRequest {
    /// Leave the guest and wait.
    Pause(u64),
    /// Enter the guest again.
    Resume(u64),
    /// Run this on the vCPU while it is paused (refused while running).
    Access(u64, VcpuAccess),
    /// Sit out of the guest so as to be out this percent of the time,
    /// then run on (unacknowledged; a paused vCPU stays paused).
    Throttle(u8),
    /// End the thread.
    Exit,
}

/// The state a vCPU reached after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckState {
    /// It runs the guest.
    Running,
    /// It is paused.
    Paused,
    /// It did the `Access` work (it stays paused).
    Accessed,
    /// `Access` was refused: it was not paused.
    NotPaused,
    /// Its thread is ending.
    Exited,
}

/// One acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuAck {
    /// Which vCPU.
    pub index: usize,
    /// The request it answers (0 for an exit nobody asked for).
    pub seq: u64,
    /// Where the vCPU is now.
    pub state: AckState,
}

/// The thread side of one vCPU.
struct VcpuThread {
    vcpu: Box<dyn Vcpu>,
    index: usize,
    exits: Arc<ExitContext>,
    control: Arc<VmControl>,
    requests: Receiver<VcpuRequest>,
    acks: Sender<VcpuAck>,
    /// Begin `Paused` (a restored VM loaded without `resume_vm`).
    start_paused: bool,
    /// A throttle kept the vCPU out of the guest since it last entered:
    /// that time is not guest time.
    sat_out: bool,
    /// Since when it runs: its start, a resume, or the end of a sit-out.
    running_since: Instant,
}

impl VcpuThread {
    fn ack(&self, seq: u64, state: AckState) {
        // The VMM may have stopped listening (it is ending); nothing to do.
        let _ = self.acks.send(VcpuAck {
            index: self.index,
            seq,
            state,
        });
    }

    /// The transition table: what `request` does to a vCPU in `state`.
    fn on_request(&mut self, state: VcpuState, request: VcpuRequest) -> VcpuState {
        match (state, request) {
            (VcpuState::Exiting(outcome), _) => VcpuState::Exiting(outcome),
            (_, VcpuRequest::Exit) => VcpuState::Exiting(None),
            (_, VcpuRequest::Pause(seq)) => {
                self.ack(seq, AckState::Paused);
                VcpuState::Paused
            }
            (VcpuState::Paused, VcpuRequest::Resume(seq)) => {
                // Before the guest runs again: its watchdog must not take
                // the pause for a soft lockup.
                if let Err(error) = self.vcpu.notify_paused() {
                    tracing::warn!("vCPU {}: {}", self.index, crate::error::error_chain(&error));
                }
                self.ack(seq, AckState::Running);
                self.running_since = Instant::now();
                VcpuState::Running
            }
            (VcpuState::Running, VcpuRequest::Resume(seq)) => {
                self.ack(seq, AckState::Running);
                VcpuState::Running
            }
            (VcpuState::Paused, VcpuRequest::Access(seq, work)) => {
                work(self.vcpu.as_mut());
                self.ack(seq, AckState::Accessed);
                VcpuState::Paused
            }
            (VcpuState::Running, VcpuRequest::Access(seq, _)) => {
                self.ack(seq, AckState::NotPaused);
                VcpuState::Running
            }
            (VcpuState::Running, VcpuRequest::Throttle(percent)) => self.sit_out(percent),
            (VcpuState::Paused, VcpuRequest::Throttle(_)) => VcpuState::Paused,
        }
    }

    /// A throttle: out of the guest for its share of the time it ran,
    /// asleep on the channel so a pause or an exit is taken at once rather
    /// than after it.
    fn sit_out(&mut self, percent: u8) -> VcpuState {
        self.sat_out = true;
        let now = Instant::now();
        let period = throttle::sit_out_after(now.duration_since(self.running_since), percent);
        let state = self.sleep_on_requests(now + period);
        self.running_since = Instant::now();
        state
    }

    fn sleep_on_requests(&mut self, until: Instant) -> VcpuState {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return VcpuState::Running;
            }
            match self.requests.recv_timeout(left) {
                // Already sitting out: a throttle that piled up behind
                // this one adds nothing.
                Ok(VcpuRequest::Throttle(_)) => {}
                Ok(request) => {
                    let next = self.on_request(VcpuState::Running, request);
                    if !matches!(next, VcpuState::Running) {
                        return next;
                    }
                }
                Err(RecvTimeoutError::Timeout) => return VcpuState::Running,
                Err(RecvTimeoutError::Disconnected) => return VcpuState::Exiting(None),
            }
        }
    }

    /// Runs until the state machine reaches `Exiting`; returns the outcome
    /// this vCPU decided, if any.
    fn run(&mut self) -> Option<VmOutcome> {
        let exits = self.exits.clone();
        let Some(stats) = exits.obs.vcpu(self.index) else {
            return Some(self.crash(CrashKind::RunFailed, "no statistics slot"));
        };
        let mut state = if self.start_paused {
            VcpuState::Paused
        } else {
            VcpuState::Running
        };
        let mut entered = Instant::now();
        loop {
            state = match state {
                VcpuState::Running => match exits.run_once(self.vcpu.as_mut(), stats, &mut entered)
                {
                    Flow::Continue => {
                        let next = self.drain_requests();
                        if std::mem::take(&mut self.sat_out) {
                            entered = Instant::now();
                        }
                        next
                    }
                    Flow::Finish(outcome) => VcpuState::Exiting(Some(outcome)),
                    Flow::Crash(kind) => VcpuState::Exiting(Some(self.crash(kind, ""))),
                    Flow::DebugStop(exit) => self.debug_stop(exit),
                },
                VcpuState::Paused => {
                    let next = match self.requests.recv() {
                        Ok(request) => self.on_request(VcpuState::Paused, request),
                        // The VMM is gone: nobody will resume this vCPU.
                        Err(_) => VcpuState::Exiting(None),
                    };
                    // Time asleep is neither guest nor handling time.
                    entered = Instant::now();
                    next
                }
                VcpuState::Exiting(outcome) => return outcome,
            };
        }
    }

    /// After an exit: takes every waiting request, in order. A VM that is
    /// ending (a device asked for a reset during this exit, another vCPU
    /// crashed, a signal came) needs no request: the vCPU leaves at once
    /// rather than entering the guest again until its `Exit` arrives.
    #[inline]
    fn drain_requests(&mut self) -> VcpuState {
        if self.control.is_stopping() {
            return VcpuState::Exiting(None);
        }
        let mut state = VcpuState::Running;
        loop {
            match self.requests.try_recv() {
                Ok(request) => state = self.on_request(state, request),
                Err(TryRecvError::Empty) => return state,
                Err(TryRecvError::Disconnected) => return VcpuState::Exiting(None),
            }
            if !matches!(state, VcpuState::Running) {
                return state;
            }
        }
    }

    /// A debug exit: the vCPU pauses on its own and tells the gdb stub,
    /// which pauses the others (an all-stop debugger) and resumes them all.
    /// A `#BP` of the guest's own (not at one of gdb's `int3`s) is handed
    /// back to the guest instead, and the vCPU runs on: gdb hears nothing.
    #[cold]
    fn debug_stop(&mut self, exit: sie_hv::DebugExit) -> VcpuState {
        if self.exits.debug.is_guests_own(&exit) {
            match self.vcpu.inject_exception(crate::debug_stop::BP_VECTOR) {
                Ok(true) => return self.drain_requests(),
                // Not expected right after an exception exit; gdb then
                // sees the stop rather than the guest a lost #BP.
                Ok(false) => tracing::warn!(
                    "vCPU {}: the guest's #BP at {:#x} not handed back: an exception is pending",
                    self.index,
                    exit.pc
                ),
                Err(error) => tracing::warn!(
                    "vCPU {}: the guest's #BP at {:#x} not handed back: {}",
                    self.index,
                    exit.pc,
                    crate::error::error_chain(&error)
                ),
            }
        }
        self.exits.debug.push(DebugStop {
            vcpu: self.index,
            exit,
        });
        // Wakes the VMM thread's event loop, where the stub looks.
        let _ = self.control.wake_fd().write(1);
        VcpuState::Paused
    }

    fn crash(&self, kind: CrashKind, detail: &str) -> VmOutcome {
        crash_of(self.vcpu.as_ref(), kind, detail)
    }
}

fn crash_of(vcpu: &dyn Vcpu, kind: CrashKind, detail: &str) -> VmOutcome {
    let mut registers = String::new();
    if let Ok(regs) = vcpu.regs() {
        registers.push_str(&regs.to_string());
    }
    if let Ok(sregs) = vcpu.sregs() {
        registers.push_str(&sregs.to_string());
    }
    let mut reason = kind.describe();
    if !detail.is_empty() {
        reason.push_str(": ");
        reason.push_str(detail);
    }
    VmOutcome::Crash(CrashReport {
        vcpu: vcpu.id(),
        reason,
        registers,
    })
}

/// The thread body: the state machine, then the one place a vCPU ends.
/// Returns the registers the vCPU had when it stopped (a core dump of a VM
/// that ended, `--dump-on-panic`, reads them), if they could be read.
fn vcpu_main(mut thread: VcpuThread) -> Option<VcpuRegisters> {
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| thread.run()));
    let outcome = match ran {
        Ok(outcome) => outcome,
        // A bug in sie, not the guest's doing; still end the VM cleanly so
        // the terminal is restored and the cause shown. Only where panics
        // unwind (debug and test builds): a release build aborts after
        // sie's panic hook (the workspace's `panic = "abort"`).
        Err(_) => Some(VmOutcome::Crash(CrashReport {
            vcpu: thread.index as u32,
            reason: "the vCPU thread panicked (a bug in sie)".to_string(),
            registers: String::new(),
        })),
    };
    // Read before the VM is told it ended: the VMM may write a core as soon
    // as every thread has been joined.
    let registers = match (thread.vcpu.regs(), thread.vcpu.sregs()) {
        (Ok(regs), Ok(sregs)) => Some(VcpuRegisters { regs, sregs }),
        _ => None,
    };
    if let Some(outcome) = outcome {
        thread.control.finish(outcome);
    }
    thread.ack(0, AckState::Exited);
    registers
}
