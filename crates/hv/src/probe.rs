//! Host capability probe (to be written).
