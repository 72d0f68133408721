//! Stand-ins for the hypervisor in unit tests: a VM that records what it is
//! asked, and a vCPU that "exits" on a port write every so often (or with
//! the debug exits a test scripts), so the vCPU state machine and the
//! device manager are tested without KVM.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sie_hv::GuestMemory;
use sie_hv::x86::{CpuidEntry, FpuState, LapicState, MsrEntry, Regs, SpecialRegs};
use sie_hv::{DebugExit, HvError, IoEventAddress, Vcpu, VcpuKicker, Vm, VmExit};
use vmm_sys_util::eventfd::EventFd;

/// Records irqfds and ioeventfds.
#[derive(Default)]
pub struct FakeVm {
    pub irqfds: Mutex<Vec<u32>>,
    pub ioevents: Mutex<Vec<(IoEventAddress, Option<u64>)>>,
    /// MSI routes as set, by GSI.
    pub msi_routes: Mutex<std::collections::BTreeMap<u32, sie_hv::MsiMessage>>,
    /// What the next `take_dirty_log` returns ("the guest wrote").
    pub dirty: Mutex<Vec<sie_hv::DirtyLog>>,
}

impl Vm for FakeVm {
    fn map_memory(&self, _memory: &GuestMemory) -> sie_hv::Result<()> {
        Ok(())
    }
    fn enable_dirty_log(&self) -> sie_hv::Result<()> {
        Ok(())
    }
    fn take_dirty_log(&self) -> sie_hv::Result<Vec<sie_hv::DirtyLog>> {
        Ok(std::mem::take(&mut *self.dirty.lock().unwrap()))
    }
    fn create_platform(&self, _tss: u64, _identity: u64) -> sie_hv::Result<()> {
        Ok(())
    }
    fn create_vcpu(&self, id: u32) -> sie_hv::Result<Box<dyn Vcpu>> {
        Ok(Box::new(ScriptedVcpu::new(id)))
    }
    fn register_irqfd(&self, _fd: &EventFd, gsi: u32) -> sie_hv::Result<()> {
        self.irqfds.lock().unwrap().push(gsi);
        Ok(())
    }
    fn unregister_irqfd(&self, _fd: &EventFd, gsi: u32) -> sie_hv::Result<()> {
        let mut irqfds = self.irqfds.lock().unwrap();
        if let Some(at) = irqfds.iter().position(|g| *g == gsi) {
            irqfds.remove(at);
        }
        Ok(())
    }
    fn set_msi_route(&self, gsi: u32, message: Option<sie_hv::MsiMessage>) -> sie_hv::Result<()> {
        let mut routes = self.msi_routes.lock().unwrap();
        match message {
            Some(message) => routes.insert(gsi, message),
            None => routes.remove(&gsi),
        };
        Ok(())
    }
    fn unregister_ioevent(
        &self,
        _fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> sie_hv::Result<()> {
        let mut ioevents = self.ioevents.lock().unwrap();
        if let Some(at) = ioevents.iter().position(|e| *e == (addr, datamatch)) {
            ioevents.remove(at);
        }
        Ok(())
    }
    fn register_ioevent(
        &self,
        _fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> sie_hv::Result<()> {
        self.ioevents.lock().unwrap().push((addr, datamatch));
        Ok(())
    }
    fn set_irq_line(&self, _gsi: u32, _active: bool) -> sie_hv::Result<()> {
        Ok(())
    }
    fn save_state(&self) -> sie_hv::Result<sie_hv::VmState> {
        Err(HvError::Invalid("the fake VM keeps no state".into()))
    }
    fn restore_state(&self, _state: &sie_hv::VmState) -> sie_hv::Result<()> {
        Err(HvError::Invalid("the fake VM keeps no state".into()))
    }
    fn advance_clock(&self, _by: std::time::Duration) -> sie_hv::Result<u64> {
        Err(HvError::Invalid("the fake VM has no clock".into()))
    }
}

/// A kick makes the next `run` return `Interrupted`.
#[derive(Default)]
pub struct FlagKicker(pub AtomicBool);

impl VcpuKicker for FlagKicker {
    fn kick(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A vCPU whose guest writes its exit count to port 0x99 every 200 µs and
/// whose `rip` counts those exits, so a test sees progress and registers.
/// The debug exits queued in `debug_exits` come first, one per `run`; the
/// exceptions injected are listed in `injected`.
pub struct ScriptedVcpu {
    id: u32,
    regs: Mutex<Regs>,
    kicked: Arc<FlagKicker>,
    pub exits: Arc<AtomicU64>,
    pub debug_exits: Arc<Mutex<VecDeque<DebugExit>>>,
    pub injected: Arc<Mutex<Vec<u8>>>,
    out: [u8; 1],
}

impl ScriptedVcpu {
    pub fn new(id: u32) -> Self {
        Self {
            id,
            regs: Mutex::new(Regs::default()),
            kicked: Arc::new(FlagKicker::default()),
            exits: Arc::new(AtomicU64::new(0)),
            debug_exits: Arc::default(),
            injected: Arc::default(),
            out: [0],
        }
    }
}

impl Vcpu for ScriptedVcpu {
    fn id(&self) -> u32 {
        self.id
    }
    fn regs(&self) -> sie_hv::Result<Regs> {
        Ok(*self.regs.lock().unwrap())
    }
    fn set_regs(&self, regs: &Regs) -> sie_hv::Result<()> {
        *self.regs.lock().unwrap() = *regs;
        Ok(())
    }
    fn sregs(&self) -> sie_hv::Result<SpecialRegs> {
        Ok(SpecialRegs::default())
    }
    fn set_sregs(&self, _sregs: &SpecialRegs) -> sie_hv::Result<()> {
        Ok(())
    }
    fn fpu(&self) -> sie_hv::Result<FpuState> {
        Err(HvError::Invalid("no FPU in the scripted vCPU".into()))
    }
    fn set_fpu(&self, _fpu: &FpuState) -> sie_hv::Result<()> {
        Ok(())
    }
    fn msrs(&self, _indices: &[u32]) -> sie_hv::Result<Vec<MsrEntry>> {
        Ok(Vec::new())
    }
    fn set_msrs(&self, msrs: &[MsrEntry]) -> sie_hv::Result<usize> {
        Ok(msrs.len())
    }
    fn cpuid(&self) -> sie_hv::Result<Vec<CpuidEntry>> {
        Ok(Vec::new())
    }
    fn set_cpuid(&self, _entries: &[CpuidEntry]) -> sie_hv::Result<()> {
        Ok(())
    }
    fn lapic(&self) -> sie_hv::Result<LapicState> {
        Ok(LapicState { regs: [0; 1024] })
    }
    fn set_lapic(&self, _lapic: &LapicState) -> sie_hv::Result<()> {
        Ok(())
    }
    fn run(&mut self) -> sie_hv::Result<VmExit<'_>> {
        if self.kicked.0.swap(false, Ordering::SeqCst) {
            return Ok(VmExit::Interrupted);
        }
        if let Some(exit) = self.debug_exits.lock().unwrap().pop_front() {
            return Ok(VmExit::Debug(exit));
        }
        std::thread::sleep(Duration::from_micros(200));
        let count = self.exits.fetch_add(1, Ordering::SeqCst) + 1;
        self.regs.lock().unwrap().rip = count;
        self.out = [count as u8];
        Ok(VmExit::IoOut {
            port: 0x99,
            size: 1,
            data: &self.out,
        })
    }
    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kicked.clone()
    }
    fn save_state(&self, _msrs: &[u32]) -> sie_hv::Result<sie_hv::VcpuState> {
        Err(HvError::Invalid("the scripted vCPU keeps no state".into()))
    }
    fn restore_state(&self, _state: &sie_hv::VcpuState) -> sie_hv::Result<()> {
        Err(HvError::Invalid("the scripted vCPU keeps no state".into()))
    }
    fn notify_paused(&self) -> sie_hv::Result<bool> {
        Ok(false)
    }
    /// Recorded; the script's guest takes every exception at once.
    fn inject_exception(&self, vector: u8) -> sie_hv::Result<bool> {
        self.injected.lock().unwrap().push(vector);
        Ok(true)
    }
}
