//! sie-arch (to be written).
