//! The debug port (I/O 0x80): each byte the guest writes is a boot marker.
//!
//! Guests write progress codes here (0x40 kernel start and 0x41 userspace
//! start by the convention sie shares with its peers), and sie stamps them
//! with the time since it started. Note that some kernels also use port 0x80
//! as an I/O delay (`outb %al, $0x80`); those writes are markers too, and the
//! timeline's bound keeps them from growing memory.

use std::sync::Arc;

use sie_obs::MarkerSource;

use super::marker_sink::MarkerSink;
use crate::BusDevice;

/// The port 0x80 marker device (one byte wide).
pub struct DebugPort {
    sink: Arc<dyn MarkerSink>,
}

impl DebugPort {
    /// A debug port recording into `sink`.
    pub fn new(sink: Arc<dyn MarkerSink>) -> Self {
        Self { sink }
    }
}

impl BusDevice for DebugPort {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        // Nothing to read back on a POST-code port; 0 is harmless.
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // Only the byte landing on port 0x80 itself is the code, whatever
        // the access width.
        if offset == 0
            && let Some(&code) = data.first()
        {
            self.sink.mark(MarkerSource::DebugPort, u64::from(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::marker_sink::tests::RecordingSink;

    #[test]
    fn every_byte_written_is_a_marker() {
        let sink = Arc::new(RecordingSink::default());
        let port = DebugPort::new(sink.clone());
        port.write(0, &[0x40]);
        port.write(0, &[0x41, 0x99]);
        port.write(0, &[]);
        port.write(1, &[0x42]);
        assert_eq!(
            *sink.0.lock().unwrap(),
            [
                (MarkerSource::DebugPort, 0x40),
                (MarkerSource::DebugPort, 0x41)
            ]
        );
        let mut b = [0xaa; 2];
        port.read(0, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
