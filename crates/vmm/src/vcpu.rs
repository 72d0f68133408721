//! The vCPU thread: enter the guest, dispatch the exit, record it, repeat.
//!
//! The loop is a small state machine: `Running` until the dispatch or the
//! VM's control says otherwise, then `Exited`; between exits a vCPU may be
//! `Paused`, asleep in [`VmControl::park_while_paused`] until resumed. Threads are named `fc_vcpu N` because orchestrators built
//! for Firecracker find vCPU threads by that name.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use sie_hv::Vcpu;

use crate::control::VmControl;
use crate::dispatch::{CrashKind, ExitContext, Flow};
use crate::outcome::{CrashReport, VmOutcome};

fn nanos(from: Instant, to: Instant) -> u64 {
    u64::try_from(to.saturating_duration_since(from).as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one vCPU until the VM stops; the vCPU is dropped at the end.
pub fn run_vcpu(mut vcpu: Box<dyn Vcpu>, index: usize, exits: &ExitContext, control: &VmControl) {
    let Some(stats) = exits.obs.vcpu(index) else {
        control.finish(crash_of(
            vcpu.as_ref(),
            CrashKind::RunFailed,
            "no statistics slot",
        ));
        return;
    };
    let mut entered = Instant::now();
    loop {
        let result = vcpu.run();
        // Two clock reads per exit: when the guest left, and when the exit
        // was handled; the second doubles as the next entry time.
        let left = Instant::now();
        let step = match result {
            Ok(exit) => exits.dispatch(exit),
            Err(error) => {
                stats.record(sie_obs::ExitKind::Other, nanos(entered, left), 0);
                control.finish(crash_of(
                    vcpu.as_ref(),
                    CrashKind::RunFailed,
                    &error.to_string(),
                ));
                return;
            }
        };
        let handled = Instant::now();
        stats.record(step.kind, nanos(entered, left), nanos(left, handled));
        if let Some((device, is_write)) = step.device
            && let Some(device) = exits.obs.device(device)
        {
            device.record(is_write, nanos(left, handled));
        }
        match step.flow {
            Flow::Continue => {
                if control.is_stopping() {
                    return;
                }
                if control.is_paused() {
                    control.park_while_paused();
                    if control.is_stopping() {
                        return;
                    }
                    // Time asleep is neither guest nor handling time.
                    entered = Instant::now();
                    continue;
                }
            }
            Flow::Finish(outcome) => {
                control.finish(outcome);
                return;
            }
            Flow::Crash(kind) => {
                control.finish(crash_of(vcpu.as_ref(), kind, ""));
                return;
            }
        }
        entered = handled;
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

/// Starts a thread per vCPU.
pub fn spawn_vcpus(
    vcpus: Vec<Box<dyn Vcpu>>,
    exits: Arc<ExitContext>,
    control: Arc<VmControl>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let mut handles = Vec::with_capacity(vcpus.len());
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let exits = exits.clone();
        let control = control.clone();
        let handle = std::thread::Builder::new()
            .name(format!("fc_vcpu {index}"))
            .spawn(move || {
                let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    run_vcpu(vcpu, index, &exits, &control)
                }));
                if ran.is_err() {
                    // A bug in sie, not the guest's doing; still end the VM
                    // cleanly so the terminal is restored and the cause shown.
                    control.finish(VmOutcome::Crash(CrashReport {
                        vcpu: index as u32,
                        reason: "the vCPU thread panicked (a bug in sie)".to_string(),
                        registers: String::new(),
                    }));
                }
            })?;
        handles.push(handle);
    }
    Ok(handles)
}
