//! sie-vmm (to be written).
