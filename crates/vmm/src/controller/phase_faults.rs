//! Firecracker's fault messages for a request in the wrong phase, shared by
//! every request handler (its own module, so the handlers need not import
//! each other for them).

/// A request only valid before InstanceStart arrived after it.
pub(super) const AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
/// A request only valid after InstanceStart arrived before it.
pub(super) const BEFORE_START: &str =
    "The requested operation is not supported before starting the microVM.";
