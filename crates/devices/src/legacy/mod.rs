//! Legacy PC devices (to be written).
