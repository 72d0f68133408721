//! What the event thread hands a drive's engine and gets back: one checked
//! request ([`Op`]) and its outcome ([`Completion`]). Kept apart from the
//! engines so both ([`super::worker`], [`super::uring`]) and their chooser
//! ([`super::engine`]) share it without importing each other.

use std::fs::File;
use std::io;
use std::sync::Arc;

use crate::{GuestMemory, Segment};

/// What an [`Op`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// Disk to guest buffers.
    Read,
    /// Guest buffers to disk.
    Write,
    /// fsync of the image.
    Flush,
}

/// One checked request for the engine: the range lies inside the disk and
/// every buffer inside guest memory, in the right direction.
pub struct Op {
    pub kind: OpKind,
    /// The image, kept open until the op completes even if the drive's
    /// file is swapped meanwhile.
    pub file: Arc<File>,
    /// Byte offset in the image.
    pub offset: u64,
    /// The data buffers (none for a flush).
    pub data: Vec<Segment>,
    /// Their total length in bytes.
    pub len: u64,
    /// Guest memory, kept mapped until the op completes.
    pub mem: Arc<GuestMemory>,
}

/// A finished op: its token and whether all of it happened.
#[derive(Debug)]
pub struct Completion {
    pub token: u16,
    pub result: io::Result<()>,
}
