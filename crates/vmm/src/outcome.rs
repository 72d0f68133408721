//! How a VM ended, and the process exit status that says so.

use std::fmt;

/// Why a vCPU could not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// The vCPU that stopped.
    pub vcpu: u32,
    /// One line: what happened.
    pub reason: String,
    /// The vCPU's registers at the time, multi-line.
    pub registers: String,
}

/// The end of a VM's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmOutcome {
    /// The guest reset the machine (i8042 reset, `reboot`): the normal end.
    Reset,
    /// The guest powered off through the hypervisor.
    Shutdown,
    /// The guest kernel reported a panic (pvpanic).
    GuestPanic,
    /// A vCPU hit a triple fault, an emulation failure or an internal error.
    Crash(CrashReport),
    /// sie received a terminating signal.
    Signal(i32),
    /// The VM moved to another sie (its endpoint, and how the move went):
    /// it runs there now.
    Migrated(String),
    /// A migration into this sie failed (one line: why).
    MigrationFailed(String),
}

/// Exit status for a guest that panicked.
pub const EXIT_GUEST_PANIC: i32 = 4;
/// Exit status for a migration into this sie that failed.
pub const EXIT_MIGRATION_FAILED: i32 = 1;
/// Exit status for a vCPU crash.
pub const EXIT_VCPU_CRASH: i32 = 3;

impl VmOutcome {
    /// The process exit status for this outcome: 0 for a reset, a power-off or a migration away,
    /// 1 for a failed migration in,
    /// 3 for a vCPU crash, 4 for a guest panic, 128+N for signal N.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmOutcome::Reset | VmOutcome::Shutdown | VmOutcome::Migrated(_) => 0,
            VmOutcome::MigrationFailed(_) => EXIT_MIGRATION_FAILED,
            VmOutcome::Crash(_) => EXIT_VCPU_CRASH,
            VmOutcome::GuestPanic => EXIT_GUEST_PANIC,
            VmOutcome::Signal(signal) => 128 + signal,
        }
    }
}

impl fmt::Display for VmOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmOutcome::Reset => write!(f, "the guest reset the machine"),
            VmOutcome::Shutdown => write!(f, "the guest powered off"),
            VmOutcome::GuestPanic => write!(f, "the guest kernel panicked"),
            VmOutcome::Crash(report) => write!(f, "vCPU {}: {}", report.vcpu, report.reason),
            VmOutcome::Signal(signal) => write!(f, "stopped by signal {signal}"),
            VmOutcome::Migrated(to) => write!(f, "the VM migrated to {to}"),
            VmOutcome::MigrationFailed(why) => write!(f, "migration failed: {why}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_tell_outcomes_apart() {
        let crash = VmOutcome::Crash(CrashReport {
            vcpu: 0,
            reason: "triple fault".into(),
            registers: String::new(),
        });
        let codes = [
            VmOutcome::Reset.exit_code(),
            crash.exit_code(),
            VmOutcome::GuestPanic.exit_code(),
            VmOutcome::Signal(15).exit_code(),
        ];
        assert_eq!(codes, [0, 3, 4, 143]);
        assert_eq!(VmOutcome::Shutdown.exit_code(), 0);
        assert_eq!(crash.to_string(), "vCPU 0: triple fault");
        let moved = VmOutcome::Migrated("unix:/run/m.sock".into());
        assert_eq!(moved.exit_code(), 0);
        assert_eq!(moved.to_string(), "the VM migrated to unix:/run/m.sock");
        assert_eq!(VmOutcome::MigrationFailed("x".into()).exit_code(), 1);
    }
}
