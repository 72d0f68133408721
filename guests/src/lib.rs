//! Test guests (to be written).
