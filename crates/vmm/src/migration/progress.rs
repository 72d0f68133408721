//! How a migration is going, as `GET /migration` and the metrics show it.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// A migration's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationState {
    /// Nothing asked.
    #[default]
    Idle,
    /// Memory and state are going out.
    Sending,
    /// Listening for, or taking in, a VM.
    Receiving,
    /// The VM runs on the destination.
    Completed,
    /// It did not happen; the VM runs where it was.
    Failed,
    /// Cancelled before the switch-over; the VM runs where it was.
    Cancelled,
}

/// The figures, updated by the migration thread as it goes.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Progress {
    /// Where it stands.
    pub state: MigrationState,
    /// The peer (`unix:PATH` or `tcp:HOST:PORT`).
    pub peer: String,
    /// Pre-copy round: 0 for the first pass over all memory.
    pub round: u32,
    /// Bytes of guest memory and state sent (or received).
    pub bytes: u64,
    /// Pages sent (or received).
    pub pages: u64,
    /// Measured link bandwidth, bytes per second.
    pub bandwidth_bytes_per_s: u64,
    /// Bytes the guest dirtied per second during the last round.
    pub dirty_rate_bytes_per_s: u64,
    /// What the pause would take now, by the last round's figures.
    pub estimated_downtime_ms: u64,
    /// The pause the guest saw (when completed).
    pub downtime_ms: Option<u64>,
    /// From the request to the end (when finished).
    pub total_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Progress shared between the migration thread and the API.
pub type SharedProgress = Arc<Mutex<Progress>>;

/// Applies `change` to the shared progress.
pub fn update(progress: &SharedProgress, change: impl FnOnce(&mut Progress)) {
    change(&mut progress.lock().unwrap_or_else(|e| e.into_inner()));
}

/// A copy of the shared progress.
pub fn read(progress: &SharedProgress) -> Progress {
    progress.lock().unwrap_or_else(|e| e.into_inner()).clone()
}
