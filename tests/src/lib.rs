//! End-to-end rig (to be written).
