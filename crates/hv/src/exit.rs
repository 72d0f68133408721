//! The neutral VM exit returned by [`crate::Vcpu::run`].

/// A system event reported by the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SystemEventKind {
    /// The guest asked for a shutdown (e.g. ACPI or PSCI off).
    Shutdown,
    /// The guest asked for a reset.
    Reset,
    /// The guest reported a crash.
    Crash,
    /// Any other event code.
    Other(u32),
}

/// What a debug exit reports (x86).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DebugExit {
    /// The exception vector: 1 (#DB: step, hardware breakpoint or
    /// watchpoint) or 3 (#BP: an `int3`).
    pub exception: u32,
    /// The guest's instruction pointer.
    pub pc: u64,
    /// DR6: which debug register fired (bits 0-3), single step (bit 14).
    pub dr6: u64,
    /// DR7 as it was armed.
    pub dr7: u64,
}

/// Why the guest stopped running. Data buffers borrow the backend's shared
/// run area: the VMM fills `data` of a read before the next `run`.
#[derive(Debug)]
pub enum VmExit<'a> {
    /// `in` from `port`; fill `data`: `size` bytes (1, 2 or 4) per access,
    /// several accesses back to back for string I/O (`rep insb`).
    IoIn {
        /// Port number.
        port: u16,
        /// Bytes per access.
        size: u8,
        /// Where the values read go.
        data: &'a mut [u8],
    },
    /// `out` to `port` of `data`: `size` bytes per access, several accesses
    /// back to back for string I/O (`rep outsb`).
    IoOut {
        /// Port number.
        port: u16,
        /// Bytes per access.
        size: u8,
        /// The values written.
        data: &'a [u8],
    },
    /// Read of guest-physical `addr` outside RAM; fill `data`.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Where the value read goes.
        data: &'a mut [u8],
    },
    /// Write of `data` to guest-physical `addr` outside RAM.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The value written.
        data: &'a [u8],
    },
    /// The guest executed `hlt` and no in-kernel irqchip absorbed it.
    Hlt,
    /// Triple fault (or another shutdown the CPU took).
    Shutdown,
    /// A system event.
    SystemEvent(SystemEventKind),
    /// The guest can take an interrupt now.
    IrqWindowOpen,
    /// The hypervisor failed internally; `emulation` is set when it could not
    /// emulate an instruction.
    InternalError {
        /// Backend-specific sub-error code.
        suberror: u32,
        /// True for an instruction-emulation failure.
        emulation: bool,
    },
    /// The hardware refused to enter the guest.
    FailEntry {
        /// Hardware-specific reason.
        reason: u64,
    },
    /// `run` returned without a guest exit: a signal, a kick, or an AP
    /// still waiting for its start-up IPI. Call `run` again (or stop).
    Interrupted,
    /// A debug event asked for through [`crate::Vcpu::set_guest_debug`]: a
    /// single step, a breakpoint or a watchpoint.
    Debug(DebugExit),
    /// An exit sie does not handle; the code is backend-specific.
    Unsupported(u32),
}
