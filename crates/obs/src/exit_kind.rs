//! The kinds of VM exit the observatory tells apart.

/// What made a vCPU leave the guest. The vCPU's exit dispatch decodes every
/// exit into exactly one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// Port I/O read (`in`).
    PioIn,
    /// Port I/O write (`out`).
    PioOut,
    /// MMIO read outside guest RAM.
    MmioRead,
    /// MMIO write outside guest RAM.
    MmioWrite,
    /// `hlt` reaching the VMM (without an in-kernel irqchip).
    Hlt,
    /// Triple fault or other KVM shutdown.
    Shutdown,
    /// A system event: reset, shutdown or crash reported by KVM.
    SystemEvent,
    /// Interrupt window open.
    IrqWindowOpen,
    /// KVM internal error, including emulation failure.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// `KVM_RUN` returned early (signal, `immediate_exit`, AP waiting for SIPI).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in report order.
    pub const ALL: [ExitKind; 12] = [
        ExitKind::PioIn,
        ExitKind::PioOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::IrqWindowOpen,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// Number of kinds.
    pub const COUNT: usize = Self::ALL.len();

    /// Dense index, for per-kind arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Short stable name used in reports, metrics and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            ExitKind::PioIn => "pio_in",
            ExitKind::PioOut => "pio_out",
            ExitKind::MmioRead => "mmio_read",
            ExitKind::MmioWrite => "mmio_write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system_event",
            ExitKind::IrqWindowOpen => "irq_window_open",
            ExitKind::InternalError => "internal_error",
            ExitKind::FailEntry => "fail_entry",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_matches_position_in_all() {
        for (position, kind) in ExitKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), position);
        }
    }
}
