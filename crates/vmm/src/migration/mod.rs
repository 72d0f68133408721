//! Live migration: a running VM moves to another sie process over a Unix
//! socket or TCP, with pre-copy of guest memory while it runs.
//!
//! [`wire`] is the framed, checksummed protocol both sides speak.

pub mod wire;
