//! Where the boot-marker devices send what the guest writes.
//!
//! The marker devices are built with the buses, before the VMM creates the
//! [`Observatory`](sie_obs::Observatory) (it needs every device's name), so
//! they take an `Arc<dyn MarkerSink>`: either the observatory itself when it
//! already exists, or a [`LateMarkerSink`] the VMM points at it once built.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sie_obs::{MarkerSource, Observatory};

/// Receives boot markers.
pub trait MarkerSink: Send + Sync {
    /// Records that the guest wrote `value` through `source`, now.
    fn mark(&self, source: MarkerSource, value: u64);
}

impl MarkerSink for Observatory {
    fn mark(&self, source: MarkerSource, value: u64) {
        Observatory::mark(self, source, value);
    }
}

/// Errors installing a [`LateMarkerSink`]'s target.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MarkerSinkError {
    /// The target was already installed; the first one stays.
    #[error("marker sink target already installed")]
    AlreadyInstalled,
}

/// A sink whose target is installed once, after the devices exist. Markers
/// arriving before that (no vCPU runs before the VMM installs it, so there
/// should be none) are counted, not stored.
#[derive(Default)]
pub struct LateMarkerSink {
    target: OnceLock<Arc<dyn MarkerSink>>,
    unrouted: AtomicU64,
}

impl LateMarkerSink {
    /// A sink with no target yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends all later markers to `target`.
    pub fn install(&self, target: Arc<dyn MarkerSink>) -> Result<(), MarkerSinkError> {
        self.target
            .set(target)
            .map_err(|_| MarkerSinkError::AlreadyInstalled)
    }

    /// Markers that arrived before a target was installed.
    pub fn unrouted(&self) -> u64 {
        self.unrouted.load(Ordering::Relaxed)
    }
}

impl MarkerSink for LateMarkerSink {
    fn mark(&self, source: MarkerSource, value: u64) {
        match self.target.get() {
            Some(target) => target.mark(source, value),
            None => {
                self.unrouted.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// Remembers every marker, for the device tests.
    #[derive(Default)]
    pub(crate) struct RecordingSink(pub Mutex<Vec<(MarkerSource, u64)>>);

    impl MarkerSink for RecordingSink {
        fn mark(&self, source: MarkerSource, value: u64) {
            self.0.lock().unwrap().push((source, value));
        }
    }

    #[test]
    fn late_sink_forwards_once_installed() {
        let late = LateMarkerSink::new();
        late.mark(MarkerSource::DebugPort, 1);
        assert_eq!(late.unrouted(), 1);
        let target = Arc::new(RecordingSink::default());
        late.install(target.clone()).unwrap();
        late.mark(MarkerSource::BootTimer, 123);
        assert_eq!(*target.0.lock().unwrap(), [(MarkerSource::BootTimer, 123)]);
        assert_eq!(
            late.install(Arc::new(RecordingSink::default())),
            Err(MarkerSinkError::AlreadyInstalled)
        );
    }

    #[test]
    fn the_observatory_is_a_sink() {
        let obs = Arc::new(Observatory::new(Instant::now(), 1, vec![]));
        let late = LateMarkerSink::new();
        late.install(obs.clone()).unwrap();
        late.mark(MarkerSource::DebugPort, 0x41);
        let markers = obs.report().markers;
        assert_eq!(markers.len(), 1);
        assert_eq!(
            (markers[0].source, markers[0].value),
            (MarkerSource::DebugPort, 0x41)
        );
    }
}
