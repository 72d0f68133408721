//! [`KvmVcpu`]: one KVM vCPU, its register access and its run loop step.

use std::io;
use std::sync::Arc;

use kvm_bindings::{
    KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
    KVM_MAX_CPUID_ENTRIES, KVMIO, Msrs, kvm_guest_debug, kvm_guest_debug_arch, kvm_msr_entry,
};
use kvm_ioctls::VcpuFd;
use vmm_sys_util::ioctl::{ioctl, ioctl_with_ref};
use vmm_sys_util::{ioctl_io_nr, ioctl_iow_nr};

use super::convert;
use super::kick::{self, KickState};
use super::memory::KeptMemory;
use super::run_area::RunArea;
use super::{call, io_call};
use crate::x86::{CpuidEntry, FpuState, GuestDebug, LapicState, MsrEntry, Regs, SpecialRegs};
use crate::{HvError, Result, Vcpu, VcpuKicker, VmExit};

ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_iow_nr!(
    KVM_SET_SIGNAL_MASK,
    KVMIO,
    0x8b,
    kvm_bindings::kvm_signal_mask
);

/// The `struct kvm_signal_mask` KVM reads: a length, then the kernel's
/// 64-bit signal set (bit N-1 for signal N).
#[repr(C)]
struct SignalMask {
    len: u32,
    sigset: [u8; 8],
}

/// One KVM vCPU. Created by [`super::KvmVm`]; owned by the thread that runs it.
#[derive(Debug)]
pub struct KvmVcpu {
    id: u32,
    area: RunArea,
    fd: VcpuFd,
    kick: Arc<KickState>,
    /// The thread whose signal mask and id are set up for kicks.
    thread: Option<libc::pthread_t>,
    /// Keeps guest memory mapped while this vCPU can still run: the vCPU
    /// file holds the VM alive in the kernel even after `KvmVm` is dropped.
    _memory: Arc<KeptMemory>,
}

impl KvmVcpu {
    pub(crate) fn new(
        id: u32,
        fd: VcpuFd,
        run_size: usize,
        memory: Arc<KeptMemory>,
    ) -> Result<KvmVcpu> {
        kick::install_handler().map_err(io_call("sigaction"))?;
        let area = RunArea::map(&fd, run_size).map_err(io_call("mmap of kvm_run"))?;
        Ok(KvmVcpu {
            id,
            area,
            fd,
            kick: Arc::new(KickState::default()),
            thread: None,
            _memory: memory,
        })
    }

    /// Sets up the calling thread for kicks: the kick signal is blocked in
    /// the thread's mask and open only inside `KVM_RUN`, and kickers learn
    /// the thread id. Runs once per thread the vCPU is run on.
    #[cold]
    fn attach_thread(&mut self, thread: libc::pthread_t) -> Result<()> {
        let mask = kick::block_in_thread().map_err(io_call("pthread_sigmask"))?;
        let arg = SignalMask {
            len: 8,
            sigset: mask.to_ne_bytes(),
        };
        // SAFETY: the vCPU fd is valid and `arg` has the layout of
        // `struct kvm_signal_mask` followed by its 8-byte set, which is all
        // the kernel reads (it checks `len` is 8).
        let ret = unsafe { ioctl_with_ref(&self.fd, KVM_SET_SIGNAL_MASK(), &arg) };
        if ret < 0 {
            return Err(HvError::Call {
                op: "KVM_SET_SIGNAL_MASK",
                source: io::Error::last_os_error(),
            });
        }
        self.kick.set_thread(kick::current_tid());
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for KvmVcpu {
    fn drop(&mut self) {
        // Kickers that outlive the vCPU must not signal its old thread.
        self.kick.set_thread(0);
    }
}

impl Vcpu for KvmVcpu {
    fn id(&self) -> u32 {
        self.id
    }

    fn regs(&self) -> Result<Regs> {
        let regs = self.fd.get_regs().map_err(call("KVM_GET_REGS"))?;
        Ok(convert::regs_from_kvm(&regs))
    }

    fn set_regs(&self, regs: &Regs) -> Result<()> {
        self.fd
            .set_regs(&convert::regs_to_kvm(regs))
            .map_err(call("KVM_SET_REGS"))
    }

    fn sregs(&self) -> Result<SpecialRegs> {
        let sregs = self.fd.get_sregs().map_err(call("KVM_GET_SREGS"))?;
        Ok(convert::sregs_from_kvm(&sregs))
    }

    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()> {
        self.fd
            .set_sregs(&convert::sregs_to_kvm(sregs))
            .map_err(call("KVM_SET_SREGS"))
    }

    fn fpu(&self) -> Result<FpuState> {
        let fpu = self.fd.get_fpu().map_err(call("KVM_GET_FPU"))?;
        Ok(convert::fpu_from_kvm(&fpu))
    }

    fn set_fpu(&self, fpu: &FpuState) -> Result<()> {
        self.fd
            .set_fpu(&convert::fpu_to_kvm(fpu))
            .map_err(call("KVM_SET_FPU"))
    }

    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>> {
        let entries: Vec<kvm_msr_entry> = indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries)
            .map_err(|_| HvError::Invalid(format!("{} MSRs requested at once", indices.len())))?;
        let read = self.fd.get_msrs(&mut msrs).map_err(call("KVM_GET_MSRS"))?;
        Ok(msrs
            .as_slice()
            .iter()
            .take(read)
            .map(convert::msr_entry_from_kvm)
            .collect())
    }

    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<usize> {
        let kvm = convert::msrs_to_kvm(msrs)?;
        self.fd.set_msrs(&kvm).map_err(call("KVM_SET_MSRS"))
    }

    fn cpuid(&self) -> Result<Vec<CpuidEntry>> {
        let cpuid = self
            .fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(call("KVM_GET_CPUID2"))?;
        Ok(cpuid
            .as_slice()
            .iter()
            .map(convert::cpuid_entry_from_kvm)
            .collect())
    }

    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()> {
        let cpuid = convert::cpuid_to_kvm(entries)?;
        self.fd.set_cpuid2(&cpuid).map_err(call("KVM_SET_CPUID2"))
    }

    fn lapic(&self) -> Result<LapicState> {
        let lapic = self.fd.get_lapic().map_err(call("KVM_GET_LAPIC"))?;
        Ok(convert::lapic_from_kvm(&lapic))
    }

    fn set_lapic(&self, lapic: &LapicState) -> Result<()> {
        self.fd
            .set_lapic(&convert::lapic_to_kvm(lapic))
            .map_err(call("KVM_SET_LAPIC"))
    }

    /// The hot path: apart from the first call on a thread, this is a
    /// thread-identity compare, one atomic load, the `KVM_RUN` ioctl and the
    /// decoding of the run area. No allocation, lock or other syscall.
    fn run(&mut self) -> Result<VmExit<'_>> {
        // SAFETY: pthread_self has no preconditions (it reads thread-local
        // state, no syscall).
        let me = unsafe { libc::pthread_self() };
        if self.thread != Some(me) {
            self.attach_thread(me)?;
        }
        // A kick that came while we were outside KVM_RUN: still enter, with
        // immediate_exit set, so KVM completes a pending port or MMIO read
        // (guest state is then consistent for a pause or snapshot) and
        // returns EINTR without running guest code.
        let kicked = self.kick.take_pending();
        if kicked {
            self.area.set_immediate_exit(1);
        }
        // SAFETY: the vCPU fd is valid; KVM_RUN takes no argument and writes
        // only the run area, which `self.area` maps and `&mut self` guards.
        let ret = unsafe { ioctl(&self.fd, KVM_RUN()) };
        let error = (ret < 0).then(io::Error::last_os_error);
        if kicked {
            self.area.set_immediate_exit(0);
        }
        match error {
            None => Ok(self.area.exit()),
            Some(error) => match error.raw_os_error() {
                Some(libc::EINTR) => {
                    // The kick signal stays pending once KVM_RUN restores the
                    // thread's mask; consume it (and the flag of the kick it
                    // answers) so the next run is not cut short.
                    self.kick.take_pending();
                    kick::drain_pending();
                    Ok(VmExit::Interrupted)
                }
                Some(libc::EAGAIN) => Ok(VmExit::Interrupted),
                _ => Err(HvError::Call {
                    op: "KVM_RUN",
                    source: error,
                }),
            },
        }
    }

    fn save_state(&self, msr_indices: &[u32]) -> Result<crate::VcpuState> {
        let (kvm, skipped) = super::state::save_vcpu(&self.fd, msr_indices)?;
        Ok(crate::VcpuState {
            id: self.id,
            kvm,
            skipped,
        })
    }

    fn restore_state(&self, state: &crate::VcpuState) -> Result<()> {
        if state.id != self.id {
            return Err(HvError::Invalid(format!(
                "the state of vCPU {} given to vCPU {}",
                state.id, self.id
            )));
        }
        super::state::restore_vcpu(&self.fd, &state.kvm)
    }

    fn kicker(&self) -> Arc<dyn VcpuKicker> {
        self.kick.clone()
    }

    fn notify_paused(&self) -> Result<bool> {
        super::state::notify_paused(&self.fd)
    }

    fn inject_exception(&self, vector: u8) -> Result<bool> {
        super::state::inject_exception(&self.fd, vector)
    }

    fn set_guest_debug(&self, debug: &GuestDebug) -> Result<()> {
        let mut control = 0;
        let armed = debug.single_step || debug.sw_breakpoints || debug.dr7 != 0;
        if armed {
            control |= KVM_GUESTDBG_ENABLE;
        }
        if debug.single_step {
            control |= KVM_GUESTDBG_SINGLESTEP;
        }
        if debug.sw_breakpoints {
            control |= KVM_GUESTDBG_USE_SW_BP;
        }
        if debug.dr7 != 0 {
            control |= KVM_GUESTDBG_USE_HW_BP;
        }
        let mut arch = kvm_guest_debug_arch::default();
        arch.debugreg[..4].copy_from_slice(&debug.addresses);
        arch.debugreg[7] = debug.dr7;
        let request = kvm_guest_debug {
            control,
            pad: 0,
            arch,
        };
        self.fd
            .set_guest_debug(&request)
            .map_err(call("KVM_SET_GUEST_DEBUG"))
    }
}
