//! Where the boot-marker devices send what the guest writes: a small trait,
//! so the devices are tested with a recorder; in sie it is the
//! [`Observatory`](sie_obs::Observatory), which exists before any device.

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

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};
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
    fn the_observatory_is_a_sink() {
        let obs = Arc::new(Observatory::new(Instant::now(), 1));
        let sink: Arc<dyn MarkerSink> = obs.clone();
        sink.mark(MarkerSource::DebugPort, 0x41);
        let markers = obs.report().markers;
        assert_eq!(markers.len(), 1);
        assert_eq!(
            (markers[0].source, markers[0].value),
            (MarkerSource::DebugPort, 0x41)
        );
    }
}
