//! The hypervisor seam.
//!
//! The rest of sie talks to the hypervisor only through the [`Hypervisor`],
//! [`Vm`] and [`Vcpu`] traits and the neutral types in [`x86`]; [`Vcpu::run`]
//! returns a neutral [`VmExit`]. The [`kvm`] module holds the only KVM code
//! and nearly all of sie's `unsafe`. A second backend later is a new module
//! here, not a rewrite of the VMM.
//!
//! ```no_run
//! use sie_hv::{Hypervisor, kvm::Kvm};
//!
//! let kvm = Kvm::open().expect("/dev/kvm");
//! let vm = kvm.create_vm().expect("VM");
//! println!("max vCPUs: {}", kvm.max_vcpus());
//! # let _ = vm;
//! ```

pub mod exit;
pub mod kvm;
pub mod probe;
pub mod state;
pub mod x86;

use std::sync::Arc;

use vm_memory::MmapRegion;
use vm_memory::bitmap::AtomicBitmap;
use vmm_sys_util::eventfd::EventFd;

pub use exit::{DebugExit, SystemEventKind, VmExit};
pub use state::{VcpuState, VmState};
use x86::{CpuidEntry, FpuState, GuestDebug, LapicState, MsrEntry, Regs, SpecialRegs};

/// Guest RAM as sie holds it: mmap-backed regions, each with a page
/// bitmap (4 KiB pages) that every write through `vm_memory` (device DMA,
/// the VMM's own writes) marks, so a Diff snapshot can include pages the
/// kernel's dirty log never sees.
pub type GuestMemory = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// The pages the guest wrote in one memory slot: bit `i` of `pages` (word
/// `i / 64`, bit `i % 64`) is the 4 KiB page at `guest_addr + i * 4096`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyLog {
    /// Guest-physical start of the slot.
    pub guest_addr: u64,
    /// Bytes in the slot.
    pub len: u64,
    /// One bit per page.
    pub pages: Vec<u64>,
}

/// Errors from the hypervisor backend. Each names the operation that failed;
/// the OS error is the source.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// The device node could not be opened.
    #[error("cannot open {path}")]
    Open {
        /// Path of the device node.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The backend's API version is not the one sie speaks.
    #[error("unsupported KVM API version {0} (sie needs 12)")]
    ApiVersion(i32),
    /// A capability sie needs is missing.
    #[error("the hypervisor lacks a capability sie needs: {0}")]
    MissingCapability(&'static str),
    /// An ioctl or other call failed.
    #[error("{op} failed")]
    Call {
        /// The operation, e.g. "KVM_CREATE_VM".
        op: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A request the backend cannot express (too many entries, bad size...).
    #[error("invalid request to the hypervisor: {0}")]
    Invalid(String),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, HvError>;

/// An I/O event address for [`Vm::register_ioevent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoEventAddress {
    /// An I/O port.
    Pio(u64),
    /// A guest-physical MMIO address.
    Mmio(u64),
}

/// A message-signalled interrupt: the 32-bit `data` a device writes at
/// `address` (0xfee0_0000 plus the destination APIC id at bits 12-19 on x86)
/// to raise one interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// The guest-physical address written.
    pub address: u64,
    /// The value written (vector and delivery mode on x86).
    pub data: u32,
}

/// The first GSI the VMM may route as an MSI (below are the IOAPIC's pins).
pub const FIRST_MSI_GSI: u32 = kvm::FIRST_MSI_GSI;

/// A hypervisor: opens VMs and describes the host's abilities.
pub trait Hypervisor: Send + Sync {
    /// Creates an empty VM.
    fn create_vm(&self) -> Result<Arc<dyn Vm>>;
    /// The maximum number of vCPUs per VM.
    fn max_vcpus(&self) -> u32;
    /// The CPUID entries the hypervisor can give a guest, unnormalized.
    /// KVM: its supported list, plus the TSC-deadline bit when the in-kernel
    /// LAPIC emulates that timer mode (`KVM_CAP_TSC_DEADLINE_TIMER`).
    fn supported_cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// The MSR indices the hypervisor lets the VMM save and restore.
    fn supported_msrs(&self) -> Result<Vec<u32>>;
    /// Whether the backend has capability `cap` (KVM: `KVM_CHECK_EXTENSION`
    /// with that number; Firecracker's `kvm_capabilities` name them so).
    fn has_capability(&self, cap: u32) -> bool;
}

/// One virtual machine.
pub trait Vm: Send + Sync {
    /// Maps all of `memory` into the guest, one memory slot per region.
    /// The VM keeps a clone of `memory` so the mappings live as long as it.
    fn map_memory(&self, memory: &GuestMemory) -> Result<()>;
    /// Places `region` (host memory that is not guest RAM: a passed-through
    /// device's BAR pages) at `guest_addr` as a memory slot of its own,
    /// outside dirty logging; the VM keeps `region` until
    /// [`Vm::unmap_device_memory`]. Returns the slot.
    fn map_device_memory(&self, guest_addr: u64, region: Arc<MmapRegion>) -> Result<u32> {
        let _ = (guest_addr, region);
        Err(HvError::Invalid(
            "this backend cannot map device memory".to_string(),
        ))
    }
    /// Like [`Vm::map_device_memory`], but the guest may only read the
    /// region: its writes exit to the VMM as MMIO writes (a read-only
    /// virtio-pmem file).
    fn map_read_only_device_memory(&self, guest_addr: u64, region: Arc<MmapRegion>) -> Result<u32> {
        let _ = (guest_addr, region);
        Err(HvError::Invalid(
            "this backend cannot map read-only device memory".to_string(),
        ))
    }
    /// Removes a slot [`Vm::map_device_memory`] made (the BAR moved or the
    /// device went away).
    fn unmap_device_memory(&self, slot: u32) -> Result<()> {
        let _ = slot;
        Err(HvError::Invalid(
            "this backend cannot map device memory".to_string(),
        ))
    }
    /// Starts logging the pages the guest writes, on every slot mapped so
    /// far and every slot mapped later.
    fn enable_dirty_log(&self) -> Result<()>;
    /// The pages the guest wrote since logging started or the last call,
    /// one [`DirtyLog`] per slot; the log is cleared as it is read. An error
    /// when logging is off.
    fn take_dirty_log(&self) -> Result<Vec<DirtyLog>>;
    /// Creates the in-kernel interrupt controllers (PIC, IOAPIC, LAPICs) and
    /// the PIT, and sets the x86 TSS and identity-map addresses.
    fn create_platform(&self, tss_addr: u64, identity_map_addr: u64) -> Result<()>;
    /// Creates vCPU `id` (its APIC id).
    fn create_vcpu(&self, id: u32) -> Result<Box<dyn Vcpu>>;
    /// Injects an interrupt on `gsi` whenever `fd` is written.
    fn register_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()>;
    /// Like [`Vm::register_irqfd`] for a level-triggered line (a
    /// passed-through device's INTx): the line stays up until the guest
    /// acknowledges it, and then `resample` is signalled.
    fn register_irqfd_resample(&self, fd: &EventFd, resample: &EventFd, gsi: u32) -> Result<()> {
        let _ = (fd, resample, gsi);
        Err(HvError::Invalid(
            "this backend cannot resample an irqfd".to_string(),
        ))
    }
    /// Stops `fd` injecting on `gsi` (a `register_irqfd` undone).
    fn unregister_irqfd(&self, fd: &EventFd, gsi: u32) -> Result<()> {
        let _ = (fd, gsi);
        Err(HvError::Invalid(
            "this backend cannot remove an irqfd".to_string(),
        ))
    }
    /// Routes `gsi` ([`FIRST_MSI_GSI`] or above) to the MSI `message`, or
    /// with `None` removes its route (an irqfd on it then injects nothing).
    /// The interrupt controllers' own routes (GSIs below) stay as they are.
    fn set_msi_route(&self, gsi: u32, message: Option<MsiMessage>) -> Result<()> {
        let _ = (gsi, message);
        Err(HvError::Invalid(
            "this backend cannot route MSIs".to_string(),
        ))
    }
    /// Signals `fd` (without an exit to the VMM) when the guest writes `addr`,
    /// optionally only when the written value equals `datamatch`. With a
    /// datamatch only writes of 4 bytes match (8 when the value exceeds
    /// `u32::MAX`): the width of virtio-mmio's QueueNotify register.
    fn register_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> Result<()>;
    /// Undoes a `register_ioevent` with the same arguments (a BAR moved).
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        addr: IoEventAddress,
        datamatch: Option<u64>,
    ) -> Result<()> {
        let _ = (fd, addr, datamatch);
        Err(HvError::Invalid(
            "this backend cannot remove an ioeventfd".to_string(),
        ))
    }
    /// Sets the level of an interrupt line.
    fn set_irq_line(&self, gsi: u32, active: bool) -> Result<()>;
    /// Saves the in-kernel devices (interrupt controllers, PIT, clock); the
    /// vCPUs must be out of the guest.
    fn save_state(&self) -> Result<VmState>;
    /// Restores what `save_state` gave, on a VM with its platform created.
    fn restore_state(&self, state: &VmState) -> Result<()>;
    /// Moves the guest's clock forward by `by` (the time a snapshot spent
    /// as files); call it before any vCPU runs. Returns the new clock (ns).
    fn advance_clock(&self, by: std::time::Duration) -> Result<u64>;
}

/// One virtual CPU. Owned by its thread; `run` is called in a loop.
pub trait Vcpu: Send {
    /// The vCPU's id (its APIC id).
    fn id(&self) -> u32;
    /// General-purpose registers.
    fn regs(&self) -> Result<Regs>;
    /// Sets general-purpose registers.
    fn set_regs(&self, regs: &Regs) -> Result<()>;
    /// Segment, control and descriptor-table registers.
    fn sregs(&self) -> Result<SpecialRegs>;
    /// Sets segment, control and descriptor-table registers.
    fn set_sregs(&self, sregs: &SpecialRegs) -> Result<()>;
    /// Reads the FPU/SSE control state.
    fn fpu(&self) -> Result<FpuState>;
    /// Sets the FPU/SSE control state (the rest of the FPU state is zeroed).
    fn set_fpu(&self, fpu: &FpuState) -> Result<()>;
    /// Reads the MSRs at `indices`; stops at the first the backend rejects,
    /// so the result may be shorter.
    fn msrs(&self, indices: &[u32]) -> Result<Vec<MsrEntry>>;
    /// Writes MSRs; returns how many were written (the backend stops at the first it rejects).
    fn set_msrs(&self, msrs: &[MsrEntry]) -> Result<usize>;
    /// The CPUID table the guest sees.
    fn cpuid(&self) -> Result<Vec<CpuidEntry>>;
    /// Sets the CPUID table the guest sees.
    fn set_cpuid(&self, entries: &[CpuidEntry]) -> Result<()>;
    /// Reads the local APIC's register page.
    fn lapic(&self) -> Result<LapicState>;
    /// Writes the local APIC's register page.
    fn set_lapic(&self, lapic: &LapicState) -> Result<()>;
    /// Enters the guest until the next exit the VMM must see.
    ///
    /// The first call on a thread prepares that thread for kicks (the KVM
    /// backend blocks its kick signal there, see [`kvm::kick`]); later calls
    /// on the same thread add no system call besides entering the guest.
    /// [`VmExit::Interrupted`] may also come without a kick (another signal,
    /// an AP waiting for its SIPI): check the VMM's state and call again.
    fn run(&mut self) -> Result<VmExit<'_>>;
    /// A handle that can make this vCPU's `run` return soon from another thread.
    fn kicker(&self) -> Arc<dyn VcpuKicker>;
    /// Saves everything the vCPU needs to continue, with the MSRs in
    /// `msr_indices` ([`Hypervisor::supported_msrs`]); call it between runs.
    fn save_state(&self, msr_indices: &[u32]) -> Result<VcpuState>;
    /// Restores what `save_state` gave, on a vCPU that has not run.
    fn restore_state(&self, state: &VcpuState) -> Result<()>;
    /// Tells the guest that the host stopped this vCPU for a while (a pause
    /// or a snapshot), so it does not mistake the gap for a soft lockup;
    /// call it before the vCPU runs again. `false` when the guest has no
    /// paravirtual clock to tell.
    fn notify_paused(&self) -> Result<bool>;
    /// Hands the guest exception `vector` (without an error code) at its
    /// next entry, unless an exception is already on its way in: `false`
    /// then, and nothing changes. Call it between runs. After a `#BP`
    /// ([`VmExit::Debug`] with exception 3) injecting vector 3 gives the
    /// guest its own breakpoint: the hypervisor delivers it as the `int3`
    /// would have, with RIP past the instruction. A software exception
    /// (`#BP`, `#OF`) queued this way is not seen by a later call (KVM does
    /// not report them back), so the answer concerns the others.
    fn inject_exception(&self, vector: u8) -> Result<bool> {
        let _ = vector;
        Err(HvError::Invalid(
            "this backend cannot inject exceptions".to_string(),
        ))
    }
    /// Arms (or, with the default [`GuestDebug`], disarms) the debugger's
    /// controls: single step, `int3` and the debug registers; each event
    /// then ends `run` with [`VmExit::Debug`]. Call it between runs.
    fn set_guest_debug(&self, debug: &GuestDebug) -> Result<()> {
        let _ = debug;
        Err(HvError::Invalid(
            "this backend cannot debug a guest".to_string(),
        ))
    }
}

/// Makes a vCPU leave `run` from another thread (used for pause and shutdown).
pub trait VcpuKicker: Send + Sync {
    /// Requests that the vCPU return from `run` with [`VmExit::Interrupted`]
    /// as soon as possible; harmless if it is not running.
    fn kick(&self);
}
