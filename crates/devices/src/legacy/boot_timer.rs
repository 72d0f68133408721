//! The boot-timer MMIO page (0xC000_0000): the guest writes 123 to offset 0
//! when it has booted, sie records the moment (Firecracker's convention).

use std::sync::Arc;

use sie_obs::MarkerSource;

use super::marker_sink::MarkerSink;
use crate::BusDevice;

/// The value that signals "guest boot complete".
pub const BOOT_TIMER_MAGIC: u64 = 123;

/// The boot-timer device (one 4 KiB MMIO page).
pub struct BootTimer {
    sink: Arc<dyn MarkerSink>,
}

impl BootTimer {
    /// A boot timer recording into `sink`.
    pub fn new(sink: Arc<dyn MarkerSink>) -> Self {
        Self { sink }
    }
}

/// `data` as a little-endian integer; `None` for widths over 8 bytes.
fn little_endian(data: &[u8]) -> Option<u64> {
    let mut bytes = [0u8; 8];
    bytes.get_mut(..data.len())?.copy_from_slice(data);
    Some(u64::from_le_bytes(bytes))
}

impl BusDevice for BootTimer {
    fn read(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // The whole value must be 123: a wide write whose low byte happens to
        // be 123 is something else.
        if offset == 0 && !data.is_empty() && little_endian(data) == Some(BOOT_TIMER_MAGIC) {
            self.sink.mark(MarkerSource::BootTimer, BOOT_TIMER_MAGIC);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::marker_sink::tests::RecordingSink;

    #[test]
    fn only_123_at_offset_0_is_a_marker() {
        let sink = Arc::new(RecordingSink::default());
        let timer = BootTimer::new(sink.clone());
        timer.write(0, &[123]);
        timer.write(0, &123u32.to_le_bytes());
        timer.write(0, &123u64.to_le_bytes());
        timer.write(0, &[]);
        timer.write(0, &[124]);
        timer.write(0, &0x17bu16.to_le_bytes());
        timer.write(4, &[123]);
        timer.write(0, &[123; 9]);
        assert_eq!(sink.0.lock().unwrap().len(), 3);
        assert!(
            sink.0
                .lock()
                .unwrap()
                .iter()
                .all(|m| *m == (MarkerSource::BootTimer, 123))
        );
        let mut b = [0xff; 8];
        timer.read(0, &mut b);
        assert_eq!(b, [0; 8]);
    }
}
