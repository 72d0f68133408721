//! The vCPU state machine driven with scripted vCPUs (no KVM): pause is a
//! fact (no progress, registers readable and writable), resume continues
//! exactly, and every way a VM ends reaches every vCPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sie_devices::{Bus, BusDevice, VmRequests};
use sie_obs::Observatory;

use super::*;
use crate::debug_stop::{BP_VECTOR, DebugStops};
use crate::test_doubles::ScriptedVcpu;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Port 0x99: counts writes and asks for a reset at the `reset_at`-th.
struct ResetAfter {
    control: Arc<VmControl>,
    writes: AtomicU64,
    reset_at: u64,
}

impl BusDevice for ResetAfter {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&self, _offset: u64, _data: &[u8]) {
        if self.writes.fetch_add(1, Ordering::SeqCst) + 1 == self.reset_at {
            self.control.request_reset();
        }
    }
}

struct Vm {
    set: VcpuSet,
    control: Arc<VmControl>,
    exits: Vec<Arc<AtomicU64>>,
    obs: Arc<Observatory>,
}

fn start(count: usize, reset_at: u64) -> Vm {
    start_with(count, reset_at, Default::default(), |_| {})
}

/// `start`, with the gdb stub's side of debug exits and each scripted
/// vCPU prepared by `script` before its thread runs.
fn start_with(
    count: usize,
    reset_at: u64,
    debug: Arc<DebugStops>,
    script: impl FnMut(&mut ScriptedVcpu),
) -> Vm {
    let control = Arc::new(VmControl::new().unwrap());
    let obs = Arc::new(Observatory::new(Instant::now(), count));
    let mut pio = Bus::default();
    let device = Arc::new(ResetAfter {
        control: control.clone(),
        writes: AtomicU64::new(0),
        reset_at,
    });
    pio.insert(0x99, 1, device, obs.register_device("port99"))
        .unwrap();
    let exits = Arc::new(ExitContext {
        pio,
        mmio: Bus::default(),
        obs: obs.clone(),
        debug,
    });
    let mut vcpus: Vec<ScriptedVcpu> = (0..count as u32).map(ScriptedVcpu::new).collect();
    vcpus.iter_mut().for_each(script);
    let counters = vcpus.iter().map(|v| v.exits.clone()).collect();
    let boxed: Vec<Box<dyn Vcpu>> = vcpus
        .into_iter()
        .map(|v| Box::new(v) as Box<dyn Vcpu>)
        .collect();
    let set = VcpuSet::spawn(boxed, exits, control.clone(), false, &Default::default()).unwrap();
    Vm {
        set,
        control,
        exits: counters,
        obs,
    }
}

fn total(vm: &Vm) -> u64 {
    vm.exits.iter().map(|e| e.load(Ordering::SeqCst)).sum()
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn paused_vcpus_make_no_progress_and_resume_where_they_stopped() {
    let mut vm = start(2, u64::MAX);
    wait_for("both vCPUs to run", || {
        vm.exits.iter().all(|e| e.load(Ordering::SeqCst) > 2)
    });
    vm.set.pause(TIMEOUT).unwrap();
    assert!(vm.set.is_paused());
    let at_pause = total(&vm);
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(total(&vm), at_pause, "no exits while paused");
    // Pausing again is harmless and answered at once.
    vm.set.pause(TIMEOUT).unwrap();

    // Registers are readable and writable while paused, on the vCPU's thread.
    let rip = vm
        .set
        .with_vcpu(0, |vcpu| vcpu.regs().unwrap().rip)
        .unwrap();
    assert_eq!(rip, vm.exits[0].load(Ordering::SeqCst));
    vm.set
        .with_vcpu(1, |vcpu| {
            let mut regs = vcpu.regs().unwrap();
            regs.rbx = 0x5e5e;
            vcpu.set_regs(&regs).unwrap();
        })
        .unwrap();
    let rbx = vm
        .set
        .with_vcpu(1, |vcpu| vcpu.regs().unwrap().rbx)
        .unwrap();
    assert_eq!(rbx, 0x5e5e);
    assert_eq!(
        vm.set.with_vcpu(7, |_| ()).unwrap_err(),
        VcpuAccessError::NoSuchVcpu(7)
    );

    vm.set.resume(TIMEOUT).unwrap();
    assert!(!vm.set.is_paused());
    wait_for("progress after resume", || total(&vm) > at_pause + 4);
    assert_eq!(
        vm.set.with_vcpu(0, |_| ()).unwrap_err(),
        VcpuAccessError::NotPaused(0)
    );
    vm.control.finish(VmOutcome::Shutdown);
    vm.set.join();
}

#[test]
fn a_device_that_ends_the_vm_stops_every_vcpu_with_its_outcome() {
    let mut vm = start(3, 20);
    wait_for("the reset", || vm.control.is_stopping());
    // Nobody asked the vCPUs to exit: they see the VM ending after their
    // next exit and leave on their own.
    vm.set.join();
    assert_eq!(vm.control.outcome(), Some(VmOutcome::Reset));
    let after = total(&vm);
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(total(&vm), after, "no vCPU runs after the end");
    assert!(vm.obs.report().devices[0].stats.writes >= 20);
}

#[test]
fn paused_vcpus_leave_when_the_vm_ends() {
    let mut vm = start(2, u64::MAX);
    vm.set.pause(TIMEOUT).unwrap();
    vm.control.finish(VmOutcome::Signal(15));
    assert_eq!(vm.set.pause(TIMEOUT), Err(PauseError::Stopping));
    vm.set.exit_all();
    vm.set.join();
    assert_eq!(vm.control.outcome(), Some(VmOutcome::Signal(15)));
}

#[test]
fn every_exit_is_counted_with_its_device() {
    let mut vm = start(1, u64::MAX);
    wait_for("a few exits", || total(&vm) >= 5);
    vm.set.pause(TIMEOUT).unwrap();
    let report = vm.obs.report();
    let exits = total(&vm);
    assert_eq!(report.exit(sie_obs::ExitKind::PioOut).count, exits);
    assert_eq!(report.devices[0].stats.writes, exits);
    vm.control.finish(VmOutcome::Shutdown);
    vm.set.exit_all();
    vm.set.join();
}

#[test]
fn a_throttled_vcpu_sits_out_yet_pauses_at_once_and_runs_on_after() {
    let mut vm = start(2, u64::MAX);
    wait_for("both vCPUs to run", || {
        vm.exits.iter().all(|e| e.load(Ordering::SeqCst) > 2)
    });
    // 99% makes up for the run before it with seconds out of the guest:
    // only a pause ends that early.
    vm.set.throttle(99);
    wait_for("the vCPUs to sit out", || {
        let before = total(&vm);
        std::thread::sleep(Duration::from_millis(20));
        total(&vm) == before
    });
    vm.set.pause(TIMEOUT).unwrap();
    let at_pause = total(&vm);
    // A throttle step is nothing to a paused VM.
    vm.set.throttle(99);
    vm.set.resume(TIMEOUT).unwrap();
    wait_for("progress after resume", || total(&vm) > at_pause + 4);
    vm.control.finish(VmOutcome::Shutdown);
    vm.set.join();
}

/// gdb's `int3` is at [`GDB_INT3`]; the guest has its own at [`GUEST_INT3`].
const GDB_INT3: u64 = 0xffff_ffff_8100_1000;
const GUEST_INT3: u64 = 0xffff_ffff_8100_2000;

/// One vCPU whose guest first hits the `int3`s at `pcs`, while gdb has an
/// `int3` at [`GDB_INT3`]; with the stub's side of debug exits and the
/// exceptions the vCPU was handed.
struct Hitting {
    vm: Vm,
    debug: Arc<DebugStops>,
    injected: Arc<std::sync::Mutex<Vec<u8>>>,
}

fn start_hitting(pcs: &[u64]) -> Hitting {
    let debug = Arc::new(DebugStops::default());
    debug.set_int3s([GDB_INT3]);
    let injected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let vm = start_with(1, u64::MAX, debug.clone(), |vcpu| {
        vcpu.injected = injected.clone();
        vcpu.debug_exits
            .lock()
            .unwrap()
            .extend(pcs.iter().map(|&pc| sie_hv::DebugExit {
                exception: u32::from(BP_VECTOR),
                pc,
                dr6: 0,
                dr7: 0,
            }));
    });
    Hitting {
        vm,
        debug,
        injected,
    }
}

impl Hitting {
    fn end(mut self) {
        self.vm.control.finish(VmOutcome::Shutdown);
        self.vm.set.exit_all();
        self.vm.set.join();
    }
}

/// After gdb's stop, pauses the set as the stub does: the vCPU, which
/// paused at the stop, never wrote its port again (the script's RIP counts
/// those writes).
fn assert_no_run_on(hit: &mut Hitting) {
    hit.vm.set.pause(TIMEOUT).unwrap();
    let rip = hit.vm.set.with_vcpu(0, |vcpu| vcpu.regs().unwrap().rip);
    assert_eq!(rip.unwrap(), 0, "the guest ran on after gdb's stop");
    assert_eq!(total(&hit.vm), 0);
}

#[test]
fn the_guests_own_int3_goes_back_to_the_guest_and_the_vcpu_runs_on() {
    let hit = start_hitting(&[GUEST_INT3]);
    wait_for("the vCPU to run on past the #BP", || total(&hit.vm) > 2);
    assert_eq!(*hit.injected.lock().unwrap(), [BP_VECTOR]);
    assert!(hit.debug.take().is_empty(), "no stop for gdb");
    hit.end();
}

#[test]
fn gdbs_int3_is_a_stop_and_the_vcpu_stays_paused() {
    let mut hit = start_hitting(&[GDB_INT3]);
    wait_for("the stop", || !hit.debug.is_empty());
    let stops = hit.debug.take();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].exit.pc, GDB_INT3);
    assert_no_run_on(&mut hit);
    assert!(
        hit.injected.lock().unwrap().is_empty(),
        "gdb's #BP stays gdb's"
    );
    hit.end();
}

/// The guest's `int3` then gdb's: the first goes back to the guest, the
/// second stops the vCPU for gdb, in that order.
#[test]
fn the_guests_int3_then_gdbs_reports_only_gdbs() {
    let mut hit = start_hitting(&[GUEST_INT3, GDB_INT3]);
    wait_for("the stop", || !hit.debug.is_empty());
    let stops = hit.debug.take();
    assert_eq!(stops.len(), 1);
    assert_eq!(stops[0].exit.pc, GDB_INT3);
    assert_eq!(*hit.injected.lock().unwrap(), [BP_VECTOR]);
    assert_no_run_on(&mut hit);
    hit.end();
}
