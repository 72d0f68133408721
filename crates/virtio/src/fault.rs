//! The ring states a device cannot recover from without a reset.
//!
//! Raised while taking chains off a queue (`chain`) and returned
//! by every device's queue and backend work ([`crate::VirtioDevice`]); the
//! transport answers each by marking the device NEEDS_RESET.

/// A queue state the device cannot recover from without a reset.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceFault {
    /// The driver published more chains than the queue holds.
    #[error("available index runs more than a queue ahead")]
    AvailIndex,
    /// A chain head outside the descriptor table: it cannot be returned.
    #[error("descriptor head {0} out of range")]
    HeadOutOfRange(u16),
    /// A ring could not be read or written.
    #[error("ring access failed")]
    RingAccess,
}
