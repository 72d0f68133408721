//! KVM's vCPU and VM state, read and written with the `KVM_GET_*` and
//! `KVM_SET_*` ioctls. The kvm-bindings structures serialize as their raw
//! bytes (its `serde` feature), so the saved form is exactly what KVM gave.
//!
//! Restore order matters: CPUID before MSRs (KVM checks MSRs against the
//! guest's CPUID), special registers before the LAPIC (the APIC base MSR
//! lives in sregs), vCPU events and MP state last.

use kvm_bindings::{
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_MAX_CPUID_ENTRIES,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
    Msrs, kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state,
    kvm_mp_state, kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::call;
use crate::{HvError, Result};

/// MSRs are read in batches of this many (KVM's limit per call is larger;
/// a batch that fails part-way is retried one by one).
const MSR_BATCH: usize = 64;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KvmVcpuState {
    pub(crate) regs: kvm_regs,
    pub(crate) sregs: kvm_sregs,
    pub(crate) xsave: kvm_xsave,
    pub(crate) xcrs: Option<kvm_xcrs>,
    pub(crate) debugregs: Option<kvm_debugregs>,
    pub(crate) lapic: kvm_lapic_state,
    pub(crate) msrs: Vec<kvm_msr_entry>,
    pub(crate) cpuid: Vec<kvm_cpuid_entry2>,
    pub(crate) events: kvm_vcpu_events,
    pub(crate) mp_state: kvm_mp_state,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct KvmVmState {
    pub(crate) pic_master: kvm_irqchip,
    pub(crate) pic_slave: kvm_irqchip,
    pub(crate) ioapic: kvm_irqchip,
    pub(crate) pit: kvm_pit_state2,
    pub(crate) clock: kvm_clock_data,
}

/// Reads every MSR in `indices` the vCPU gives; the ones it refuses are
/// listed in `skipped`.
fn read_msrs(fd: &VcpuFd, indices: &[u32], skipped: &mut Vec<String>) -> Vec<kvm_msr_entry> {
    let mut saved = Vec::with_capacity(indices.len());
    for batch in indices.chunks(MSR_BATCH) {
        let entries: Vec<kvm_msr_entry> = batch
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let Ok(mut msrs) = Msrs::from_entries(&entries) else {
            skipped.push(format!("MSR batch from {:#x}: too large", batch[0]));
            continue;
        };
        let read = fd.get_msrs(&mut msrs).unwrap_or(0);
        saved.extend_from_slice(&msrs.as_slice()[..read.min(batch.len())]);
        // KVM stops at the first MSR it refuses: take the rest one by one.
        for &index in &batch[read.min(batch.len())..] {
            let one = [kvm_msr_entry {
                index,
                ..Default::default()
            }];
            let read_one = Msrs::from_entries(&one).ok().and_then(|mut single| {
                (fd.get_msrs(&mut single).unwrap_or(0) == 1).then(|| single.as_slice()[0])
            });
            match read_one {
                Some(entry) => saved.push(entry),
                None => skipped.push(format!("MSR {index:#x}: refused by KVM")),
            }
        }
    }
    saved
}

pub(crate) fn save_vcpu(fd: &VcpuFd, msr_indices: &[u32]) -> Result<(KvmVcpuState, Vec<String>)> {
    let mut skipped = Vec::new();
    let xcrs = fd
        .get_xcrs()
        .map_err(|e| skipped.push(format!("XCRs: {e}")))
        .ok();
    let debugregs = fd
        .get_debug_regs()
        .map_err(|e| skipped.push(format!("debug registers: {e}")))
        .ok();
    let state = KvmVcpuState {
        regs: fd.get_regs().map_err(call("KVM_GET_REGS"))?,
        sregs: fd.get_sregs().map_err(call("KVM_GET_SREGS"))?,
        xsave: fd.get_xsave().map_err(call("KVM_GET_XSAVE"))?,
        xcrs,
        debugregs,
        lapic: fd.get_lapic().map_err(call("KVM_GET_LAPIC"))?,
        msrs: read_msrs(fd, msr_indices, &mut skipped),
        cpuid: fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(call("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec(),
        events: fd.get_vcpu_events().map_err(call("KVM_GET_VCPU_EVENTS"))?,
        mp_state: fd.get_mp_state().map_err(call("KVM_GET_MP_STATE"))?,
    };
    Ok((state, skipped))
}

pub(crate) fn restore_vcpu(fd: &VcpuFd, state: &KvmVcpuState) -> Result<()> {
    let cpuid = kvm_bindings::CpuId::from_entries(&state.cpuid)
        .map_err(|_| HvError::Invalid(format!("{} CPUID entries", state.cpuid.len())))?;
    fd.set_cpuid2(&cpuid).map_err(call("KVM_SET_CPUID2"))?;
    fd.set_sregs(&state.sregs).map_err(call("KVM_SET_SREGS"))?;
    fd.set_regs(&state.regs).map_err(call("KVM_SET_REGS"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4 KiB). KVM reads more
    // than that only when the VMM enabled KVM_CAP_XSAVE2 with dynamic
    // features (AMX) for this VM, which sie never does.
    unsafe { fd.set_xsave(&state.xsave) }.map_err(call("KVM_SET_XSAVE"))?;
    if let Some(xcrs) = &state.xcrs {
        fd.set_xcrs(xcrs).map_err(call("KVM_SET_XCRS"))?;
    }
    if let Some(debugregs) = &state.debugregs {
        fd.set_debug_regs(debugregs)
            .map_err(call("KVM_SET_DEBUGREGS"))?;
    }
    fd.set_lapic(&state.lapic).map_err(call("KVM_SET_LAPIC"))?;
    for batch in state.msrs.chunks(MSR_BATCH) {
        let msrs = Msrs::from_entries(batch)
            .map_err(|_| HvError::Invalid(format!("{} MSRs", batch.len())))?;
        let written = fd.set_msrs(&msrs).map_err(call("KVM_SET_MSRS"))?;
        if written < batch.len() {
            return Err(HvError::Invalid(format!(
                "KVM refused MSR {:#x} on restore",
                batch[written].index
            )));
        }
    }
    fd.set_vcpu_events(&state.events)
        .map_err(call("KVM_SET_VCPU_EVENTS"))?;
    fd.set_mp_state(state.mp_state)
        .map_err(call("KVM_SET_MP_STATE"))?;
    Ok(())
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut chip).map_err(call("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

pub(crate) fn save_vm(fd: &VmFd) -> Result<KvmVmState> {
    Ok(KvmVmState {
        pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
        pit: fd.get_pit2().map_err(call("KVM_GET_PIT2"))?,
        clock: fd.get_clock().map_err(call("KVM_GET_CLOCK"))?,
    })
}

pub(crate) fn restore_vm(fd: &VmFd, state: &KvmVmState) -> Result<()> {
    for chip in [&state.pic_master, &state.pic_slave, &state.ioapic] {
        fd.set_irqchip(chip).map_err(call("KVM_SET_IRQCHIP"))?;
    }
    fd.set_pit2(&state.pit).map_err(call("KVM_SET_PIT2"))?;
    // Only the clock value is restored: the flags KVM reports (such as
    // KVM_CLOCK_TSC_STABLE) are not accepted back.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(call("KVM_SET_CLOCK"))?;
    Ok(())
}

/// Moves the VM's KVM clock forward by `by`; returns the new value (ns).
/// Read and written back while no vCPU runs, so the guest sees one jump.
pub(crate) fn advance_clock(fd: &VmFd, by: std::time::Duration) -> Result<u64> {
    let now = fd.get_clock().map_err(call("KVM_GET_CLOCK"))?;
    let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
    let clock = kvm_clock_data {
        clock: now.clock.saturating_add(by),
        ..Default::default()
    };
    fd.set_clock(&clock).map_err(call("KVM_SET_CLOCK"))?;
    Ok(clock.clock)
}

/// Tells the guest, through its pvclock page, that its vCPU was stopped by
/// the host (`KVM_KVMCLOCK_CTRL`), so its soft-lockup watchdog does not
/// count the pause; `false` when the guest has no pvclock (EINVAL).
pub(crate) fn notify_paused(fd: &VcpuFd) -> Result<bool> {
    match fd.kvmclock_ctrl() {
        Ok(()) => Ok(true),
        Err(error) if error.errno() == libc::EINVAL => Ok(false),
        Err(error) => Err(call("KVM_KVMCLOCK_CTRL")(error)),
    }
}

/// Queues exception `vector` for the next entry unless one is pending or
/// being injected already (`false`). The vCPU events go back as they were
/// read but for the exception, so nothing else about them changes; the
/// pending NMI and SMI are left out of the write (flags), because another
/// thread may queue one between the read and the write, which the write
/// would undo. KVM moves RIP past the instruction when it delivers a
/// software exception (`#BP` after the `int3` that exited: it kept the
/// instruction's length).
pub(crate) fn inject_exception(fd: &VcpuFd, vector: u8) -> Result<bool> {
    let mut events = fd.get_vcpu_events().map_err(call("KVM_GET_VCPU_EVENTS"))?;
    if events.exception.injected != 0 || events.exception.pending != 0 {
        return Ok(false);
    }
    events.flags &= !(KVM_VCPUEVENT_VALID_NMI_PENDING
        | KVM_VCPUEVENT_VALID_SMM
        | KVM_VCPUEVENT_VALID_SIPI_VECTOR);
    events.exception.injected = 1;
    events.exception.nr = vector;
    events.exception.has_error_code = 0;
    events.exception.error_code = 0;
    fd.set_vcpu_events(&events)
        .map_err(call("KVM_SET_VCPU_EVENTS"))?;
    Ok(true)
}
