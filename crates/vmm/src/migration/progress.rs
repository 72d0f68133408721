//! How a migration is going, as `GET /migration` and the metrics show it.

use std::fmt::Write;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

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
    /// Share of every 10 ms the vCPUs sit out so the rounds converge
    /// (auto-converge; 0 when off or not needed, and again once a failed
    /// or cancelled send lifted it; a completed send keeps its last step).
    pub throttle_percent: u8,
    /// The guest moved post-copy (the mode, or `auto` once it turned).
    pub postcopy: bool,
    /// Post-copy: pages the destination's guest asked for (sent ahead of
    /// the push).
    pub requested_pages: u64,
    /// The pause the guest saw (when completed).
    pub downtime_ms: Option<u64>,
    /// Where that pause went (when completed by this side, the source).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime_parts: Option<DowntimeParts>,
    /// From the request to the end (when finished).
    pub total_ms: Option<u64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// Where a switch-over's downtime went, as the source saw it, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct DowntimeParts {
    /// Pausing the vCPUs and taking the device and vCPU state.
    pub pause_and_state_ms: f64,
    /// Sending the pages dirtied since the last round (pre-copy; 0 in
    /// local mode and post-copy).
    pub last_pages_ms: f64,
    /// From the state's first byte out to the receiver's `Ready`: the
    /// state on the wire and the receiver building the VM from it.
    pub receiver_ms: f64,
    /// From the `Go` out to the receiver's `Done` (post-copy: 0, the
    /// guest runs there from the go).
    pub commit_ms: f64,
}

impl std::fmt::Display for DowntimeParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pause and state {:.1} ms, last pages {:.1} ms, state out and the receiver's build {:.1} ms, go to done {:.1} ms",
            self.pause_and_state_ms, self.last_pages_ms, self.receiver_ms, self.commit_ms
        )
    }
}

/// Marks a switch-over's steps as they end, for [`DowntimeParts`].
#[derive(Debug)]
pub struct SwitchoverClock {
    last: std::time::Instant,
    parts: DowntimeParts,
}

impl SwitchoverClock {
    /// Starts at the pause.
    pub fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            parts: DowntimeParts::default(),
        }
    }

    /// The step `part` picks ended now.
    pub fn mark(&mut self, part: impl FnOnce(&mut DowntimeParts) -> &mut f64) {
        let now = std::time::Instant::now();
        *part(&mut self.parts) += (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
    }

    /// The parts so far.
    pub fn parts(&self) -> DowntimeParts {
        self.parts
    }
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

impl MigrationState {
    /// The state's name, as `GET /migration` spells it.
    pub fn name(self) -> &'static str {
        match self {
            MigrationState::Idle => "idle",
            MigrationState::Sending => "sending",
            MigrationState::Receiving => "receiving",
            MigrationState::Completed => "completed",
            MigrationState::Failed => "failed",
            MigrationState::Cancelled => "cancelled",
        }
    }
}

impl Progress {
    /// The metrics line's `migration` group: numbers only (0 for a figure
    /// not known yet), plus the state's name; the peer and the error stay
    /// in `GET /migration`.
    pub fn metrics_json(&self) -> Value {
        json!({
            "state": self.state.name(),
            "round": self.round,
            "bytes": self.bytes,
            "pages": self.pages,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
            "dirty_rate_bytes_per_s": self.dirty_rate_bytes_per_s,
            "estimated_downtime_ms": self.estimated_downtime_ms,
            "throttle_percent": self.throttle_percent,
            "requested_pages": self.requested_pages,
            "downtime_ms": self.downtime_ms.unwrap_or(0),
            "total_ms": self.total_ms.unwrap_or(0),
        })
    }

    /// The same figures as Prometheus samples (`sie_migration_*`), the
    /// state as a label on a sample of 1.
    pub fn prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP sie_migration_state The live migration's state (label).\n# TYPE sie_migration_state gauge\nsie_migration_state{{state=\"{}\"}} 1",
            self.state.name()
        );
        if let Value::Object(fields) = self.metrics_json() {
            for (field, number) in fields.iter().filter(|(_, v)| v.is_number()) {
                let _ = writeln!(out, "sie_migration_{field} {number}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Progress {
        Progress {
            state: MigrationState::Completed,
            peer: "unix:/m.sock".into(),
            round: 3,
            bytes: 5 << 20,
            pages: 1280,
            bandwidth_bytes_per_s: 900 << 20,
            dirty_rate_bytes_per_s: 12 << 20,
            estimated_downtime_ms: 4,
            throttle_percent: 30,
            postcopy: true,
            requested_pages: 2,
            downtime_ms: Some(17),
            downtime_parts: Some(DowntimeParts {
                pause_and_state_ms: 1.5,
                last_pages_ms: 2.0,
                receiver_ms: 12.25,
                commit_ms: 1.0,
            }),
            total_ms: Some(950),
            error: None,
        }
    }

    #[test]
    fn the_downtime_parts_read_in_one_line_and_stay_out_of_the_metrics() {
        let progress = done();
        assert_eq!(
            progress.downtime_parts.unwrap().to_string(),
            "pause and state 1.5 ms, last pages 2.0 ms, state out and the receiver's build 12.2 ms, go to done 1.0 ms"
        );
        let status = serde_json::to_value(&progress).unwrap();
        assert_eq!(status["downtime_parts"]["receiver_ms"], 12.25);
        assert!(progress.metrics_json().get("downtime_parts").is_none());
        let idle = serde_json::to_value(Progress::default()).unwrap();
        assert!(idle.get("downtime_parts").is_none(), "{idle}");
    }

    #[test]
    fn the_metrics_group_carries_every_figure() {
        let group = done().metrics_json();
        assert_eq!(
            group,
            json!({
                "state": "completed",
                "round": 3,
                "bytes": 5 << 20,
                "pages": 1280,
                "bandwidth_bytes_per_s": 900u64 << 20,
                "dirty_rate_bytes_per_s": 12 << 20,
                "estimated_downtime_ms": 4,
                "throttle_percent": 30,
                "requested_pages": 2,
                "downtime_ms": 17,
                "total_ms": 950,
            })
        );
        // Figures not known yet are 0, so every line has the same fields.
        let idle = Progress::default().metrics_json();
        assert_eq!(idle["state"], "idle");
        assert_eq!(idle["downtime_ms"], 0);
        assert_eq!(
            idle.as_object().map(|o| o.len()),
            group.as_object().map(|o| o.len())
        );
    }

    #[test]
    fn the_state_names_match_the_api() {
        for state in [
            MigrationState::Idle,
            MigrationState::Sending,
            MigrationState::Receiving,
            MigrationState::Completed,
            MigrationState::Failed,
            MigrationState::Cancelled,
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), state.name());
        }
    }

    #[test]
    fn prometheus_has_one_sample_per_figure() {
        let mut out = String::new();
        done().prometheus(&mut out);
        assert!(
            out.contains("sie_migration_state{state=\"completed\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("\nsie_migration_bytes 5242880\n"), "{out}");
        assert!(
            out.contains("\nsie_migration_throttle_percent 30\n"),
            "{out}"
        );
        assert!(out.contains("\nsie_migration_downtime_ms 17\n"), "{out}");
    }
}
