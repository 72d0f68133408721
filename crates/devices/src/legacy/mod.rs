//! Legacy PC devices: the 16550 UARTs, the i8042 keyboard controller, the
//! CMOS RTC, pvpanic and the two boot-marker devices.
//!
//! Each device is a [`BusDevice`](crate::BusDevice) the VMM inserts at the
//! conventional address below; none of them knows where it sits, so offsets
//! are relative to the base the VMM chose.
//!
//! ```
//! use std::sync::Arc;
//! use sie_devices::legacy::{SerialDevice, COM1_PORT, COM1_IRQ};
//! use sie_devices::BusDevice;
//! use vmm_sys_util::eventfd::EventFd;
//!
//! let irq = Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
//! let com1 = SerialDevice::new(irq, Box::new(Vec::new()), None);
//! com1.write(0, b"A"); // THR: one byte of guest output
//! # let _ = (COM1_PORT, COM1_IRQ);
//! ```

mod boot_timer;
mod civil_time;
mod debug_port;
mod i8042;
mod line_output;
mod marker_sink;
mod ps2_keyboard;
mod pvpanic;
mod rtc;
mod scan_code;
mod serial;
#[cfg(test)]
mod test_fakes;

pub use boot_timer::{BOOT_TIMER_MAGIC, BootTimer};
pub use debug_port::DebugPort;
pub use i8042::{I8042Device, I8042State, I8042StateError, I8042Stats};
pub use line_output::LineBufferedOutput;
pub use marker_sink::MarkerSink;
pub use ps2_keyboard::{KEYBOARD_QUEUE_BYTES, KeyboardError};
pub use pvpanic::{PVPANIC_CRASH_LOADED, PVPANIC_PANICKED, PvPanic};
pub use rtc::{Rtc, RtcClock, RtcState, RtcStateError};
pub use serial::{
    SERIAL_FIFO_BYTES, SerialDevice, SerialDeviceState, SerialStateError, SerialStats,
};
pub use sie_obs::MarkerSource;

/// First UART's I/O base.
pub const COM1_PORT: u16 = 0x3f8;
/// First UART's ISA interrupt.
pub const COM1_IRQ: u32 = 4;
/// Second UART's I/O base.
pub const COM2_PORT: u16 = 0x2f8;
/// Second UART's ISA interrupt.
pub const COM2_IRQ: u32 = 3;
/// Third UART's I/O base; it shares IRQ 4 with COM1.
pub const COM3_PORT: u16 = 0x3e8;
/// Third UART's ISA interrupt.
pub const COM3_IRQ: u32 = 4;
/// Fourth UART's I/O base; it shares IRQ 3 with COM2.
pub const COM4_PORT: u16 = 0x2e8;
/// Fourth UART's ISA interrupt.
pub const COM4_IRQ: u32 = 3;
/// Bytes of port space each UART decodes.
pub const SERIAL_PORT_LEN: u64 = 8;

/// The i8042's data port; its status/command port is `I8042_PORT + 4`.
pub const I8042_PORT: u16 = 0x60;
/// Span covering both i8042 ports (0x60..=0x64), for one bus entry.
pub const I8042_PORT_LEN: u64 = 5;
/// The i8042's command/status port (the data port is [`I8042_PORT`]).
pub const I8042_COMMAND_PORT: u16 = I8042_PORT + 4;
/// The keyboard's ISA interrupt.
pub const I8042_IRQ: u32 = 1;

/// The CMOS index port; the data port follows it.
pub const RTC_PORT: u16 = 0x70;
/// Span covering the index and data ports.
pub const RTC_PORT_LEN: u64 = 2;
/// The RTC's ISA interrupt (sie's RTC never raises it).
pub const RTC_IRQ: u32 = 8;

/// The POST/debug port the boot markers use.
pub const DEBUG_PORT: u16 = 0x80;
/// The debug port is one byte wide.
pub const DEBUG_PORT_LEN: u64 = 1;

/// The conventional pvpanic I/O port.
pub const PVPANIC_PORT: u16 = 0x505;
/// pvpanic is one byte wide.
pub const PVPANIC_PORT_LEN: u64 = 1;

/// Size of the boot-timer MMIO range.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::test_fakes::{CountingInterrupt, RecordingVm};
    use super::*;
    use crate::BusDevice;

    /// Every device survives a long run of hostile accesses: arbitrary
    /// offsets, widths 0–8 and values, reads and writes interleaved.
    #[test]
    fn hostile_accesses_never_panic() {
        let irq = Arc::new(CountingInterrupt::default());
        let vm = Arc::new(RecordingVm::default());
        let sink = Arc::new(marker_sink::tests::RecordingSink::default());
        let devices: Vec<(Box<dyn BusDevice>, u64)> = vec![
            (
                Box::new(SerialDevice::new(
                    irq.clone(),
                    Box::new(std::io::sink()),
                    Some(irq.clone()),
                )),
                SERIAL_PORT_LEN,
            ),
            (
                Box::new(I8042Device::new(irq.clone(), vm.clone())),
                I8042_PORT_LEN,
            ),
            (Box::new(Rtc::new()), RTC_PORT_LEN),
            (Box::new(DebugPort::new(sink.clone())), DEBUG_PORT_LEN),
            (Box::new(BootTimer::new(sink)), BOOT_TIMER_LEN),
            (Box::new(PvPanic::new(vm)), PVPANIC_PORT_LEN),
        ];
        // A fixed xorshift sequence keeps the test reproducible.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (device, len) in &devices {
            for _ in 0..20_000 {
                let r = next();
                // Mostly in range, sometimes just past it or anywhere.
                let offset = match r % 8 {
                    0 => len + (r >> 8) % 4,
                    1 => r >> 3,
                    _ => (r >> 8) % len,
                };
                let width = ((r >> 40) % 9) as usize;
                let mut data = (r >> 16).to_le_bytes();
                if r & (1 << 63) == 0 {
                    device.read(offset, &mut data[..width]);
                } else {
                    device.write(offset, &data[..width]);
                }
            }
        }
    }
}
