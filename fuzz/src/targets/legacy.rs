//! The legacy PC devices on their `BusDevice` interface: random sequences
//! of reads and writes at any offset (mostly the device's own registers)
//! and width (mostly one byte), with the host side of each device (time,
//! serial input, Ctrl+Alt+Del) acting in between.
//!
//! Checked for every device: a read fills every byte of the width asked
//! for with one value, and any access wider than a byte reads as an
//! undriven bus (0xff). Per device:
//! - i8042: a reset is only ever requested by a write; after the
//!   self-test or read-command-byte command the status shows a byte
//!   waiting, unless the controller counted it dropped.
//! - RTC (its clock anywhere in -2^40..2^40 s around the epoch): CMOS RAM
//!   reads back what was written; the time registers hold valid fields
//!   (seconds and minutes < 60, hours in range for the 12- or 24-hour
//!   mode, day 1-31, month 1-12) in BCD or binary as status B says.
//! - serial: the guest's output is never more bytes than it wrote to the
//!   transmit register; input is accepted only as far as the FIFO has
//!   room.

use std::io::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sie_devices::legacy::{
    I8042_PORT_LEN, I8042Device, RTC_PORT_LEN, Rtc, SERIAL_FIFO_BYTES, SERIAL_PORT_LEN,
    SerialDevice,
};
use sie_devices::{BusDevice, Interrupt, VmRequests};

use crate::input::Input;

/// Most accesses in one run.
const MAX_STEPS: usize = 512;

/// Counts interrupts; with `fail`, every third one fails (a dead irqfd).
#[derive(Default)]
struct Irq {
    count: AtomicU64,
    fail: bool,
}

impl Interrupt for Irq {
    fn trigger(&self) -> std::io::Result<()> {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if self.fail && n % 3 == 2 {
            return Err(std::io::Error::other("irqfd gone"));
        }
        Ok(())
    }
}

#[derive(Default)]
struct Vm {
    resets: AtomicU64,
    panics: AtomicU64,
}

impl VmRequests for Vm {
    fn request_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn report_panic(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }
}

/// One guest access.
enum Access {
    Read { offset: u64, width: usize },
    Write { offset: u64, data: Vec<u8> },
}

/// The next access: mostly one byte at one of the `len` registers.
fn access(input: &mut Input, len: u64) -> Access {
    let offset = match input.u8() % 16 {
        0 => input.u64(),
        1 => len + u64::from(input.below(4)),
        _ => u64::from(input.u8()) % len,
    };
    let width = match input.u8() % 16 {
        0 => input.below(9) as usize,
        _ => 1,
    };
    if input.bool() {
        Access::Read { offset, width }
    } else {
        Access::Write {
            offset,
            data: input.bytes(width).to_vec(),
        }
    }
}

/// Reads through `device`, checking the whole width was filled with one
/// value (0xff when wider than a byte); returns the byte read.
fn read(device: &dyn BusDevice, offset: u64, width: usize) -> Option<u8> {
    // A pattern no device produces: every byte different.
    let mut data: Vec<u8> = (0..width).map(|i| 0x11 * (i as u8 + 1)).collect();
    device.read(offset, &mut data);
    let first = *data.first()?;
    assert!(
        data.iter().all(|&b| b == first),
        "read of {width} bytes at {offset:#x} left {data:02x?}"
    );
    if width != 1 {
        assert_eq!(first, 0xff, "a {width}-byte read at {offset:#x}");
    }
    Some(first)
}

pub fn i8042(data: &[u8]) {
    let mut input = Input::new(data);
    let irq = Arc::new(Irq {
        fail: input.u8() == 0,
        ..Irq::default()
    });
    let vm = Arc::new(Vm::default());
    let device = I8042Device::new(irq, vm.clone());
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        if input.u8().is_multiple_of(16) {
            let _ = device.send_ctrl_alt_del();
            continue;
        }
        match access(&mut input, I8042_PORT_LEN) {
            Access::Read { offset, width } => {
                let resets = vm.resets.load(Ordering::Relaxed);
                read(&device, offset, width);
                assert_eq!(
                    vm.resets.load(Ordering::Relaxed),
                    resets,
                    "a read asked for a reset"
                );
            }
            Access::Write { offset, data } => {
                let dropped = device.stats().dropped_bytes;
                device.write(offset, &data);
                let replies = matches!(data.as_slice(), [0x20 | 0xaa]);
                if offset == 4 && replies && device.stats().dropped_bytes == dropped {
                    let status = read(&device, 4, 1).expect("one byte");
                    assert!(status & 1 != 0, "command {data:02x?} left no byte to read");
                }
            }
        }
    }
}

/// Binary value of a time register as the mode shows it.
fn field(value: u8, binary: bool) -> u8 {
    if binary {
        value
    } else {
        assert!(
            value & 0x0f <= 9 && value >> 4 <= 9,
            "{value:#04x} is not BCD"
        );
        (value >> 4) * 10 + (value & 0x0f)
    }
}

fn clock_at(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    let at = if seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    };
    at.unwrap_or(UNIX_EPOCH)
}

pub fn rtc(data: &[u8]) {
    let mut input = Input::new(data);
    let now = Arc::new(AtomicI64::new(1_709_210_096));
    let clock = Arc::clone(&now);
    let device = Rtc::with_clock(Box::new(move || clock_at(clock.load(Ordering::Relaxed))));
    let mut index = 0u8;
    let mut status_b = 0x02u8;
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        match input.u8() % 16 {
            0 => {
                let seconds = match input.u8() % 4 {
                    0 => (input.u64() as i64) >> 23,
                    1 => now.load(Ordering::Relaxed) + i64::from(input.u16()),
                    2 => 253_402_300_799 + i64::from(input.below(3)) - 1,
                    _ => -i64::from(input.u32()),
                };
                now.store(seconds, Ordering::Relaxed);
                continue;
            }
            1 => {
                // Select a register, then read it.
                index = input.u8() & 0x7f;
                device.write(0, &[index]);
            }
            _ => {}
        }
        match access(&mut input, RTC_PORT_LEN) {
            Access::Read { offset, width } => {
                let value = read(&device, offset, width);
                if offset == 0 {
                    assert!(value.is_none_or(|v| v == 0xff), "index port read");
                }
                if let (1, Some(v)) = (offset, value.filter(|_| width == 1)) {
                    check_register(index, v, status_b);
                }
            }
            Access::Write { offset, data } => {
                device.write(offset, &data);
                match (offset, data.as_slice()) {
                    (0, [i]) => index = i & 0x7f,
                    (1, [v]) => {
                        if index == 0x0b {
                            status_b = *v;
                        }
                        if index >= 0x0e && index != 0x32 {
                            let back = read(&device, 1, 1).expect("one byte");
                            assert_eq!(back, *v, "CMOS RAM {index:#04x} changed");
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn check_register(index: u8, value: u8, status_b: u8) {
    let binary = status_b & 0x04 != 0;
    match index {
        0x00 | 0x02 => assert!(field(value, binary) < 60, "{index:#x} = {value:#x}"),
        0x04 if status_b & 0x02 != 0 => assert!(field(value, binary) < 24, "hour {value:#x}"),
        0x04 => assert!(
            (1..=12).contains(&field(value & 0x7f, binary)),
            "12-hour hour {value:#x}"
        ),
        0x07 => assert!((1..=31).contains(&field(value, binary)), "day {value:#x}"),
        0x08 => assert!((1..=12).contains(&field(value, binary)), "month {value:#x}"),
        0x09 | 0x32 => assert!(field(value, binary) < 100, "{index:#x} = {value:#x}"),
        _ => {}
    }
}

/// Guest output, counted.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<u64>>);

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn serial(data: &[u8]) {
    let mut input = Input::new(data);
    let irq = Arc::new(Irq {
        fail: input.u8() == 0,
        ..Irq::default()
    });
    let output = Output::default();
    let device = SerialDevice::new(
        irq.clone(),
        Box::new(output.clone()),
        Some(irq as Arc<dyn Interrupt>),
    );
    let mut written = 0u64;
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        if input.u8().is_multiple_of(8) {
            let bytes = input.chunk(80);
            let room = device.input_room();
            assert!(room <= SERIAL_FIFO_BYTES, "{room} bytes of room");
            let taken = device.enqueue_input(bytes);
            assert!(
                taken <= bytes.len().min(room),
                "took {taken} of {} bytes into {room}",
                bytes.len()
            );
            continue;
        }
        match access(&mut input, SERIAL_PORT_LEN) {
            Access::Read { offset, width } => {
                read(&device, offset, width);
            }
            Access::Write { offset, data } => {
                if offset == 0 && data.len() == 1 {
                    written += 1;
                }
                device.write(offset, &data);
            }
        }
        let out = *output.0.lock().unwrap_or_else(|e| e.into_inner());
        assert!(out <= written, "{out} bytes out of {written} written");
    }
    let _ = device.flush_output();
}
