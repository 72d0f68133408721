//! KVM backend (to be written).
