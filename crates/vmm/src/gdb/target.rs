//! [`VmTarget`]: the VM as `gdbstub` sees it. Every vCPU is a gdb thread
//! (thread id = vCPU index + 1); registers and memory are read on a paused
//! vCPU's own thread ([`crate::vcpu::VcpuSet::with_vcpu`]); memory by guest
//! virtual address through that vCPU's page tables ([`super::paging`]);
//! breakpoints and watchpoints in the debug registers ([`super::debugregs`])
//! or as `int3` bytes. Resuming arms every vCPU and resumes them all; the
//! first debug stop pauses them all again (an all-stop debugger). While
//! `int3` bytes are in, every `#BP` exits, the guest's own as well; those
//! not at one of gdb's addresses go back to the guest on the vCPU's thread
//! ([`crate::debug_stop`]) and never reach [`VmTarget::take_stop`].

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::outputln;
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSingleStep,
    MultiThreadSingleStepOps,
};
use gdbstub::target::ext::breakpoints::{
    Breakpoints, BreakpointsOps, HwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use sie_hv::Vcpu;
use sie_hv::x86::GuestDebug;
use vm_memory::{Bytes, GuestAddress};

use super::arch::{SieRegs, SieX86_64};
use super::debugregs::{DebugSlots, Slot, SlotKind};
use super::monitor;
use super::paging::PagingMode;
use crate::vcpu::PauseError;
use crate::vm::StartedVm;

/// How long pausing or resuming the vCPUs may take.
const VCPU_TIMEOUT: Duration = Duration::from_secs(5);

/// The `int3` instruction.
const INT3: u8 = 0xcc;

/// A page, for splitting memory accesses where translations may differ.
const PAGE: u64 = 4096;

/// The VM while gdb is attached.
#[derive(Default)]
pub struct VmTarget {
    /// The running VM, lent for the time gdb's packets are handled.
    pub(super) vm: Option<Box<StartedVm>>,
    slots: DebugSlots,
    /// `int3` bytes written into the guest, by the address gdb named: where
    /// the byte is in guest-physical memory, and the byte it replaced.
    sw_breakpoints: BTreeMap<u64, Int3>,
    /// gdb's software breakpoints kept in a debug register instead.
    sw_in_slots: BTreeSet<u64>,
    /// vCPUs that single-step on the next resume.
    stepping: Vec<usize>,
    /// The vCPU of the last stop: whose page tables breakpoints use.
    current: usize,
}

fn tid_of(index: usize) -> Tid {
    NonZeroUsize::MIN.saturating_add(index)
}

fn index_of(tid: Tid) -> usize {
    tid.get() - 1
}

fn fatal(what: impl std::fmt::Display) -> TargetError<String> {
    TargetError::Fatal(what.to_string())
}

impl VmTarget {
    fn vm(&mut self) -> Result<&mut StartedVm, String> {
        self.vm
            .as_deref_mut()
            .ok_or_else(|| "no VM is lent to the gdb stub".to_string())
    }

    /// Runs `work` on paused vCPU `index`.
    fn on_vcpu<R: Send + 'static>(
        &mut self,
        index: usize,
        work: impl FnOnce(&mut dyn Vcpu) -> sie_hv::Result<R> + Send + 'static,
    ) -> Result<R, String> {
        let vm = self.vm()?;
        match vm.vcpus.with_vcpu(index, work) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(crate::error::error_chain(&error)),
            Err(error) => Err(error.to_string()),
        }
    }

    fn paging(&mut self, index: usize) -> Result<PagingMode, String> {
        let sregs = self.on_vcpu(index, |vcpu| vcpu.sregs())?;
        Ok(PagingMode {
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        })
    }

    /// Reads (`Some(data)`) or writes guest memory at `gva` as vCPU `index`
    /// sees it, page by page; returns the bytes done before the first
    /// address that does not translate.
    fn access(&mut self, index: usize, gva: u64, mut io: Io<'_>) -> Result<usize, String> {
        let mode = self.paging(index)?;
        let memory = self.vm()?.memory().clone();
        let len = io.len();
        let mut done = 0;
        while done < len {
            let addr = gva.wrapping_add(done as u64);
            let in_page = (PAGE - addr % PAGE).min((len - done) as u64) as usize;
            let Some(gpa) = mode.translate(&memory, addr) else {
                break;
            };
            let ok = match &mut io {
                Io::Read(data) => memory
                    .read_slice(&mut data[done..done + in_page], GuestAddress(gpa))
                    .is_ok(),
                Io::Write(data) => memory
                    .write_slice(&data[done..done + in_page], GuestAddress(gpa))
                    .is_ok(),
            };
            if !ok {
                break;
            }
            done += in_page;
        }
        Ok(done)
    }

    /// Arms every vCPU with the breakpoints and watchpoints (and single
    /// step for those stepping); `false` disarms them all. The vCPUs learn
    /// where gdb's `int3` bytes are: a `#BP` elsewhere is the guest's own,
    /// which they hand back to the guest without a stop.
    fn arm_all(&mut self, armed: bool) -> Result<(), String> {
        let stepping = std::mem::take(&mut self.stepping);
        let int3s: Vec<u64> = if armed {
            self.sw_breakpoints.keys().copied().collect()
        } else {
            Vec::new()
        };
        self.vm()?.debug_stops.set_int3s(int3s);
        let count = self.vm()?.vcpus.len();
        for index in 0..count {
            let debug = if armed {
                GuestDebug {
                    single_step: stepping.contains(&index),
                    sw_breakpoints: !self.sw_breakpoints.is_empty(),
                    ..self.slots.guest_debug()
                }
            } else {
                GuestDebug::default()
            };
            self.on_vcpu(index, move |vcpu| vcpu.set_guest_debug(&debug))?;
        }
        Ok(())
    }

    /// Pauses every vCPU (those that stopped on their own already are).
    pub(super) fn pause_all(&mut self) -> Result<(), String> {
        self.vm()?
            .vcpus
            .pause(VCPU_TIMEOUT)
            .map_err(|e| format!("pausing the vCPUs: {e}"))
    }

    /// The reason gdb is told for the first debug stop since the last
    /// resume, once every vCPU is paused; `None` while none stopped.
    pub(super) fn take_stop(&mut self) -> Result<Option<MultiThreadStopReason<u64>>, String> {
        let stops = self.vm()?.debug_stops.take();
        let Some(stop) = stops.first().copied() else {
            return self.exited();
        };
        if let Err(error) = self.pause_all() {
            // Another vCPU ended the VM meanwhile: that is the news.
            return match self.exited()? {
                Some(exit) => Ok(Some(exit)),
                None => Err(error),
            };
        }
        self.current = stop.vcpu;
        let tid = tid_of(stop.vcpu);
        let exit = stop.exit;
        let reason = if exit.exception == 3 {
            MultiThreadStopReason::SwBreak(tid)
        } else if let Some(slot) = self.slots.fired(exit.dr6) {
            match slot.kind {
                SlotKind::Execute if self.sw_in_slots.contains(&slot.addr) => {
                    MultiThreadStopReason::SwBreak(tid)
                }
                SlotKind::Execute => MultiThreadStopReason::HwBreak(tid),
                SlotKind::Write => MultiThreadStopReason::Watch {
                    tid,
                    kind: WatchKind::Write,
                    addr: slot.addr,
                },
                SlotKind::Access => MultiThreadStopReason::Watch {
                    tid,
                    kind: WatchKind::ReadWrite,
                    addr: slot.addr,
                },
            }
        } else {
            // A single step (DR6.BS) or anything else: a trap on the thread.
            MultiThreadStopReason::SignalWithThread {
                tid,
                signal: Signal::SIGTRAP,
            }
        };
        Ok(Some(reason))
    }

    /// Once the guest ended the VM (a reset, a panic, a crash): gdb hears
    /// that it exited, with sie's exit status.
    fn exited(&mut self) -> Result<Option<MultiThreadStopReason<u64>>, String> {
        Ok(self.vm()?.control.outcome().map(|outcome| {
            MultiThreadStopReason::Exited(u8::try_from(outcome.exit_code()).unwrap_or(u8::MAX))
        }))
    }

    /// The stop reported for Ctrl-C.
    pub(super) fn interrupted(&mut self) -> Result<MultiThreadStopReason<u64>, String> {
        self.pause_all()?;
        Ok(MultiThreadStopReason::SignalWithThread {
            tid: tid_of(self.current),
            signal: Signal::SIGINT,
        })
    }

    /// gdb left: the `int3` bytes are taken out, every vCPU disarmed and
    /// the VM let run.
    pub(super) fn detach(&mut self) -> Result<(), String> {
        self.pause_all()?;
        for int3 in std::mem::take(&mut self.sw_breakpoints).into_values() {
            self.restore(int3)?;
        }
        self.slots = DebugSlots::default();
        self.sw_in_slots.clear();
        self.arm_all(false)?;
        self.vm()?
            .vcpus
            .resume(VCPU_TIMEOUT)
            .map_err(|e| format!("resuming the vCPUs: {e}"))
    }

    /// Puts back the byte an `int3` replaced; false when its guest-physical
    /// address is no longer in guest memory.
    fn restore(&mut self, int3: Int3) -> Result<bool, String> {
        let memory = self.vm()?.memory().clone();
        Ok(memory
            .write_slice(&[int3.original], GuestAddress(int3.gpa))
            .is_ok())
    }

    /// Writes an `int3` at `gva` as vCPU `index` sees it; `None` when the
    /// address maps to no guest memory.
    fn insert_int3(&mut self, index: usize, gva: u64) -> Result<Option<Int3>, String> {
        let mode = self.paging(index)?;
        let memory = self.vm()?.memory().clone();
        let Some(gpa) = mode.translate(&memory, gva) else {
            return Ok(None);
        };
        let mut original = [0u8];
        if memory.read_slice(&mut original, GuestAddress(gpa)).is_err()
            || memory.write_slice(&[INT3], GuestAddress(gpa)).is_err()
        {
            return Ok(None);
        }
        Ok(Some(Int3 {
            gpa,
            original: original[0],
        }))
    }

    fn slot_change(&mut self, slot: Slot, add: bool) -> TargetResult<bool, Self> {
        Ok(if add {
            self.slots.add(slot)
        } else {
            self.slots.remove(slot)
        })
    }
}

/// An `int3` written into guest memory. It is taken out again through its
/// guest-physical address, found when it went in: by then the guest may
/// have switched to page tables that do not map the address gdb named (a
/// kernel leaving its boot page tables).
#[derive(Clone, Copy, Debug)]
struct Int3 {
    gpa: u64,
    original: u8,
}

/// One memory access: where the bytes come from or go.
enum Io<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Io<'_> {
    fn len(&self) -> usize {
        match self {
            Io::Read(data) => data.len(),
            Io::Write(data) => data.len(),
        }
    }
}

impl Target for VmTarget {
    type Arch = SieX86_64;
    type Error = String;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadBase for VmTarget {
    fn read_registers(&mut self, all: &mut SieRegs, tid: Tid) -> TargetResult<(), Self> {
        let (r, s, fpu) = self
            .on_vcpu(index_of(tid), |vcpu| {
                Ok((vcpu.regs()?, vcpu.sregs()?, vcpu.fpu()?))
            })
            .map_err(fatal)?;
        let regs = &mut all.core;
        regs.regs = [
            r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp, r.r8, r.r9, r.r10, r.r11,
            r.r12, r.r13, r.r14, r.r15,
        ];
        regs.rip = r.rip;
        regs.eflags = r.rflags as u32;
        regs.segments.cs = u32::from(s.cs.selector);
        regs.segments.ss = u32::from(s.ss.selector);
        regs.segments.ds = u32::from(s.ds.selector);
        regs.segments.es = u32::from(s.es.selector);
        regs.segments.fs = u32::from(s.fs.selector);
        regs.segments.gs = u32::from(s.gs.selector);
        regs.fpu.fctrl = u32::from(fpu.fcw);
        regs.mxcsr = fpu.mxcsr;
        all.read_system(&s);
        Ok(())
    }

    /// General-purpose registers, RIP and RFLAGS are written; a segment
    /// selector gdb changed is loaded as is (its base and limit stay); the
    /// system registers ([`super::arch::SYSTEM`]) go in through `set_sregs`,
    /// as `monitor set` writes them. A value that does not fit, or that the
    /// hypervisor refuses (a `cr0` without PE while in long mode), is an
    /// error gdb reports; the session goes on.
    fn write_registers(&mut self, all: &SieRegs, tid: Tid) -> TargetResult<(), Self> {
        let all = all.clone();
        let refused = self
            .on_vcpu(index_of(tid), move |vcpu| {
                let regs = &all.core;
                let mut s = vcpu.sregs()?;
                let before = s;
                if let Err(error) = all.write_system(&mut s) {
                    return Ok(Some(error));
                }
                let seg = &regs.segments;
                for (segment, selector) in [
                    (&mut s.cs, seg.cs),
                    (&mut s.ss, seg.ss),
                    (&mut s.ds, seg.ds),
                    (&mut s.es, seg.es),
                    (&mut s.fs, seg.fs),
                    (&mut s.gs, seg.gs),
                ] {
                    segment.selector = selector as u16;
                }
                if s != before
                    && let Err(error) = vcpu.set_sregs(&s)
                {
                    return Ok(Some(crate::error::error_chain(&error)));
                }
                let mut r = vcpu.regs()?;
                let g = regs.regs;
                (r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.rsp) =
                    (g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]);
                (r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15) =
                    (g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]);
                r.rip = regs.rip;
                r.rflags = (r.rflags & !0xffff_ffff) | u64::from(regs.eflags);
                vcpu.set_regs(&r)?;
                Ok(None)
            })
            .map_err(fatal)?;
        match refused {
            None => Ok(()),
            Some(error) => {
                tracing::warn!("gdb's register write refused: {error}");
                Err(TargetError::NonFatal)
            }
        }
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let done = self
            .access(index_of(tid), start, Io::Read(data))
            .map_err(fatal)?;
        if done == 0 && !data.is_empty() {
            // gdb asked for an address that maps to nothing.
            return Err(TargetError::NonFatal);
        }
        Ok(done)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let done = self
            .access(index_of(tid), start, Io::Write(data))
            .map_err(fatal)?;
        if done < data.len() {
            return Err(TargetError::NonFatal);
        }
        Ok(())
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        for index in 0..self.vm()?.vcpus.len() {
            thread_is_active(tid_of(index));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadResume for VmTarget {
    fn resume(&mut self) -> Result<(), Self::Error> {
        self.arm_all(true)?;
        let vm = self.vm()?;
        // Stops left over from vCPUs that hit something at the same time as
        // the one reported: they will hit it again.
        vm.debug_stops.take();
        match vm.vcpus.resume(VCPU_TIMEOUT) {
            // The guest ended the VM as soon as it ran: gdb hears of it as
            // an exit at the next look.
            Ok(()) | Err(PauseError::Stopping) => Ok(()),
            Err(e) => Err(format!("resuming the vCPUs: {e}")),
        }
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.stepping.clear();
        Ok(())
    }

    /// Every vCPU runs on a resume (no scheduler locking).
    fn set_resume_action_continue(
        &mut self,
        _tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        Some(self)
    }
}

impl MultiThreadSingleStep for VmTarget {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        _signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.stepping.push(index_of(tid));
        Ok(())
    }
}

impl Breakpoints for VmTarget {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        Some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        Some(self)
    }
}

/// gdb's `break`: in a free debug register while there is one, as an
/// `int3` byte after that. A debug register leaves guest memory untouched
/// and works where the hypervisor does not stop at `int3` (kvm_pvm gives
/// the `int3` to the guest, which then faults).
impl SwBreakpoint for VmTarget {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw_breakpoints.contains_key(&addr) || self.sw_in_slots.contains(&addr) {
            return Ok(true);
        }
        if self.slots.add(execute_slot(addr)) {
            self.sw_in_slots.insert(addr);
            return Ok(true);
        }
        let current = self.current;
        match self.insert_int3(current, addr).map_err(fatal)? {
            Some(int3) => {
                self.sw_breakpoints.insert(addr, int3);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        if self.sw_in_slots.remove(&addr) {
            return Ok(self.slots.remove(execute_slot(addr)));
        }
        let Some(int3) = self.sw_breakpoints.remove(&addr) else {
            return Ok(false);
        };
        self.restore(int3).map_err(fatal)
    }
}

fn execute_slot(addr: u64) -> Slot {
    Slot {
        addr,
        len: 1,
        kind: SlotKind::Execute,
    }
}

impl HwBreakpoint for VmTarget {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.slot_change(execute_slot(addr), true)
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        self.slot_change(execute_slot(addr), false)
    }
}

fn watch_slot(addr: u64, len: u64, kind: WatchKind) -> Slot {
    Slot {
        addr,
        len,
        kind: match kind {
            WatchKind::Write => SlotKind::Write,
            WatchKind::Read | WatchKind::ReadWrite => SlotKind::Access,
        },
    }
}

impl HwWatchpoint for VmTarget {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.slot_change(watch_slot(addr, len, kind), true)
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        self.slot_change(watch_slot(addr, len, kind), false)
    }
}

impl MonitorCmd for VmTarget {
    /// `monitor sregs` and `monitor set REG VALUE` ([`super::monitor`]) on
    /// the vCPU of the last stop.
    fn handle_monitor_cmd(&mut self, cmd: &[u8], mut out: ConsoleOutput<'_>) -> Result<(), String> {
        let current = self.current;
        let done = match monitor::parse(cmd) {
            Ok(monitor::Command::Show) => self
                .on_vcpu(current, |vcpu| vcpu.sregs())
                .map(|sregs| format!("vCPU {current}\n{}", monitor::show(&sregs))),
            Ok(monitor::Command::Set(reg, value)) => self
                .on_vcpu(current, move |vcpu| {
                    let mut sregs = vcpu.sregs()?;
                    if let Err(error) = reg.set(&mut sregs, value) {
                        return Ok(Err(error));
                    }
                    vcpu.set_sregs(&sregs)?;
                    Ok(Ok(()))
                })
                .and_then(|written| written)
                .map(|()| format!("vCPU {current}: {}={value:#x}", reg.name)),
            Err(message) => Err(message),
        };
        match done {
            Ok(text) => outputln!(out, "{text}"),
            Err(error) => outputln!(out, "{error}"),
        }
        Ok(())
    }
}
