//! sie-config (to be written).
