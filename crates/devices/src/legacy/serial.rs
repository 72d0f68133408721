//! The 16550A UART behind COM1–COM4, on vm-superio's register model.
//!
//! vm-superio owns the registers; this wrapper adds what sie needs around
//! them: a lock so vCPUs share the device through `&self`, bounded input with
//! an "input room" notification for the event loop, and counters instead of
//! panics when the output or an interrupt fails. A UART that is present but
//! silent (COM2–COM4) is the same device built with [`SerialDevice::silent`].
//!
//! Guest output is the hot path (one exit per byte), so a write takes one lock
//! and allocates nothing. vm-superio flushes its writer after every byte; the
//! device swallows that flush so a buffering writer such as
//! [`LineBufferedOutput`](super::LineBufferedOutput) keeps its batching, and
//! the VMM flushes through [`SerialDevice::flush_output`] instead.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};
use vm_superio::serial::{Error as UartError, SerialEvents, SerialState};
use vm_superio::{Serial, Trigger};

use crate::{BusDevice, Interrupt};

/// Bytes the receive FIFO holds (vm-superio's FIFO size).
pub const SERIAL_FIFO_BYTES: usize = 64;

/// Registers a 16550 decodes; accesses at or beyond this offset are unclaimed.
const REGISTER_COUNT: u64 = 8;

/// Adapts our [`Interrupt`] to vm-superio's `Trigger`.
struct IrqTrigger(Arc<dyn Interrupt>);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.trigger()
    }
}

/// Receives vm-superio's callbacks: counts lost output and tells the event
/// loop when the guest has emptied the receive FIFO.
struct UartEvents {
    input_room: Option<Arc<dyn Interrupt>>,
    output_errors: AtomicU64,
    notify_errors: AtomicU64,
}

impl SerialEvents for UartEvents {
    fn buffer_read(&self) {}

    fn out_byte(&self) {}

    fn tx_lost_byte(&self) {
        self.output_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn in_buffer_empty(&self) {
        // vm-superio also calls this when the guest reads an already empty
        // RBR; a spurious wake-up only makes the event loop retry early.
        if let Some(room) = &self.input_room
            && room.trigger().is_err()
        {
            self.notify_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The guest's output writer, with vm-superio's per-byte flush swallowed.
struct UartOutput(Box<dyn Write + Send>);

impl Write for UartOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing per guest byte would defeat any buffering in the writer;
        // the VMM decides when output is flushed (`flush_output`).
        Ok(())
    }
}

type Uart = Serial<IrqTrigger, UartEvents, UartOutput>;

/// Error counts of one UART (for the metrics; the guest never sees them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SerialStats {
    /// Guest output bytes the writer refused (e.g. stdout closed).
    pub output_errors: u64,
    /// Interrupts that could not be raised.
    pub interrupt_errors: u64,
    /// "Input room" notifications that could not be sent.
    pub notify_errors: u64,
}

/// A UART's registers and unread input, as a snapshot keeps them (the
/// saved form, separate from vm-superio's live one).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialDeviceState {
    /// Divisor latch, low and high byte.
    pub baud_divisor: [u8; 2],
    /// IER, IIR, LCR, LSR, MCR, MSR and the scratch register, in that order.
    pub registers: [u8; 7],
    /// Received bytes the guest has not read yet.
    pub input: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(state: SerialState) -> Self {
        Self {
            baud_divisor: [state.baud_divisor_low, state.baud_divisor_high],
            registers: [
                state.interrupt_enable,
                state.interrupt_identification,
                state.line_control,
                state.line_status,
                state.modem_control,
                state.modem_status,
                state.scratch,
            ],
            input: state.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(state: &SerialDeviceState) -> Self {
        let [ier, iir, lcr, lsr, mcr, msr, scratch] = state.registers;
        SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: state.input.clone(),
        }
    }
}

/// Why a saved UART state was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("serial state holds {0} unread bytes; the FIFO holds {SERIAL_FIFO_BYTES}")]
pub struct SerialStateError(pub usize);

/// A 16550A UART at an 8-port range (THR/RBR at offset 0 … SCR at 7).
pub struct SerialDevice {
    uart: Mutex<Uart>,
    interrupt_errors: AtomicU64,
}

impl SerialDevice {
    /// A UART raising `interrupt`, writing guest output to `out`.
    /// `input_room` (if any) is triggered whenever the guest has drained the
    /// receive FIFO, so the producer of [`enqueue_input`](Self::enqueue_input)
    /// knows when to offer the bytes it kept.
    pub fn new(
        interrupt: Arc<dyn Interrupt>,
        out: Box<dyn Write + Send>,
        input_room: Option<Arc<dyn Interrupt>>,
    ) -> Self {
        let events = UartEvents {
            input_room,
            output_errors: AtomicU64::new(0),
            notify_errors: AtomicU64::new(0),
        };
        Self {
            uart: Mutex::new(Serial::with_events(
                IrqTrigger(interrupt),
                events,
                UartOutput(out),
            )),
            interrupt_errors: AtomicU64::new(0),
        }
    }

    /// A UART that is present (the guest's probe finds it) but discards
    /// output and never receives input: COM2–COM4.
    pub fn silent(interrupt: Arc<dyn Interrupt>) -> Self {
        Self::new(interrupt, Box::new(io::sink()), None)
    }

    /// Offers `bytes` to the guest; returns how many fit in the receive FIFO
    /// (0 when it is full). The caller keeps the rest and retries after the
    /// input-room notification.
    pub fn enqueue_input(&self, bytes: &[u8]) -> usize {
        let mut uart = self.lock();
        let accepted = bytes.len().min(uart.fifo_capacity());
        match uart.enqueue_raw_bytes(bytes) {
            Ok(count) => count,
            Err(UartError::FullFifo) => 0,
            // The bytes are queued even though the interrupt failed; the
            // guest still finds them when it next polls LSR.
            Err(_) => {
                self.interrupt_errors.fetch_add(1, Ordering::Relaxed);
                accepted
            }
        }
    }

    /// Free bytes in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.lock().fifo_capacity()
    }

    /// Flushes the output writer (call when the guest goes quiet, or before
    /// the VMM exits).
    pub fn flush_output(&self) -> io::Result<()> {
        self.lock().writer_mut().0.flush()
    }

    /// The registers and unread input, for a snapshot.
    pub fn state(&self) -> SerialDeviceState {
        self.lock().state().into()
    }

    /// Puts the registers and unread input back; the output, interrupt line
    /// and counters stay. A state with more input than the FIFO holds (a
    /// damaged snapshot) is refused and the device left as it was.
    pub fn restore(&self, state: &SerialDeviceState) -> Result<(), SerialStateError> {
        if state.input.len() > SERIAL_FIFO_BYTES {
            return Err(SerialStateError(state.input.len()));
        }
        let mut uart = self.lock();
        let interrupt = IrqTrigger(uart.interrupt_evt().0.clone());
        let events = UartEvents {
            input_room: uart.events().input_room.clone(),
            output_errors: AtomicU64::new(uart.events().output_errors.load(Ordering::Relaxed)),
            notify_errors: AtomicU64::new(uart.events().notify_errors.load(Ordering::Relaxed)),
        };
        let out = std::mem::replace(&mut uart.writer_mut().0, Box::new(io::sink()));
        match Serial::from_state(&state.into(), interrupt, events, UartOutput(out)) {
            Ok(restored) => *uart = restored,
            // Checked above: the only refusal is an over-full FIFO.
            Err(_) => return Err(SerialStateError(state.input.len())),
        }
        Ok(())
    }

    /// Error counts so far.
    pub fn stats(&self) -> SerialStats {
        let uart = self.lock();
        let events = uart.events();
        SerialStats {
            output_errors: events.output_errors.load(Ordering::Relaxed),
            interrupt_errors: self.interrupt_errors.load(Ordering::Relaxed),
            notify_errors: events.notify_errors.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Uart> {
        // A panic elsewhere while holding the lock leaves plain register
        // values behind, still valid to use.
        self.uart.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The register a guest access addresses, if it is a 1-byte access in range.
fn register(offset: u64, len: usize) -> Option<u8> {
    if len != 1 || offset >= REGISTER_COUNT {
        return None;
    }
    u8::try_from(offset).ok()
}

impl BusDevice for SerialDevice {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match register(offset, data.len()) {
            Some(reg) => data.fill(self.lock().read(reg)),
            // Like an undriven ISA bus.
            None => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let (Some(reg), Some(&value)) = (register(offset, data.len()), data.first()) else {
            return;
        };
        match self.lock().write(reg, value) {
            Ok(()) => {}
            // Already counted by `UartEvents::tx_lost_byte`; the guest goes on.
            Err(UartError::IOError(_)) => {}
            Err(_) => {
                self.interrupt_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::legacy::test_fakes::{BrokenPipe, CountingInterrupt, SharedBuffer};

    const THR: u64 = 0;
    const RBR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LCR: u64 = 3;
    const LSR: u64 = 5;
    const LSR_DATA_READY: u8 = 0x01;
    const LSR_THR_EMPTY: u8 = 0x20;
    const IER_THR_EMPTY: u8 = 0x02;
    const IER_RX_DATA: u8 = 0x01;

    fn read_byte(dev: &SerialDevice, offset: u64) -> u8 {
        let mut data = [0u8];
        dev.read(offset, &mut data);
        data[0]
    }

    fn uart() -> (
        SerialDevice,
        Arc<CountingInterrupt>,
        Arc<CountingInterrupt>,
        SharedBuffer,
    ) {
        let irq = Arc::new(CountingInterrupt::default());
        let room = Arc::new(CountingInterrupt::default());
        let out = SharedBuffer::default();
        let dev = SerialDevice::new(irq.clone(), Box::new(out.clone()), Some(room.clone()));
        (dev, irq, room, out)
    }

    #[test]
    fn state_moves_registers_and_unread_input_to_another_uart() {
        let (dev, _, _, _) = uart();
        dev.write(LCR, &[0x03]);
        dev.write(7, &[0x5a]);
        dev.enqueue_input(b"ab");
        let state = dev.state();
        assert_eq!(state.input, b"ab");

        let (other, _, _, out) = uart();
        other.restore(&state).unwrap();
        assert_eq!(read_byte(&other, LCR), 0x03);
        assert_eq!(read_byte(&other, 7), 0x5a);
        assert_eq!(read_byte(&other, LSR) & LSR_DATA_READY, LSR_DATA_READY);
        assert_eq!(
            (read_byte(&other, RBR), read_byte(&other, RBR)),
            (b'a', b'b')
        );
        // Output still reaches the restored device's own writer.
        other.write(THR, b"z");
        assert_eq!(out.contents(), b"z");
        let round_trip: SerialDeviceState =
            serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(round_trip, state);
    }

    #[test]
    fn a_state_with_more_input_than_the_fifo_is_refused() {
        let (dev, _, _, _) = uart();
        dev.write(7, &[0x11]);
        let state = SerialDeviceState {
            input: vec![0; SERIAL_FIFO_BYTES + 1],
            ..SerialDeviceState::default()
        };
        assert_eq!(
            dev.restore(&state),
            Err(SerialStateError(SERIAL_FIFO_BYTES + 1))
        );
        assert_eq!(read_byte(&dev, 7), 0x11, "left as it was");
    }

    #[test]
    fn bytes_written_to_thr_reach_the_writer() {
        let (dev, _, _, out) = uart();
        for &b in b"hi\n" {
            dev.write(THR, &[b]);
        }
        assert_eq!(out.contents(), b"hi\n");
        assert_ne!(read_byte(&dev, LSR) & LSR_THR_EMPTY, 0);
    }

    #[test]
    fn enqueued_input_reads_back_through_rbr_with_data_ready() {
        let (dev, _, _, _) = uart();
        assert_eq!(read_byte(&dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        assert_ne!(read_byte(&dev, LSR) & LSR_DATA_READY, 0);
        assert_eq!(read_byte(&dev, RBR), b'o');
        assert_eq!(read_byte(&dev, RBR), b'k');
        assert_eq!(read_byte(&dev, LSR) & LSR_DATA_READY, 0);
    }

    #[test]
    fn input_beyond_the_fifo_is_left_to_the_caller() {
        let (dev, _, _, _) = uart();
        let input = [b'x'; SERIAL_FIFO_BYTES + 10];
        assert_eq!(dev.enqueue_input(&input), SERIAL_FIFO_BYTES);
        assert_eq!(dev.input_room(), 0);
        assert_eq!(dev.enqueue_input(b"y"), 0);
        assert_eq!(dev.enqueue_input(b""), 0);
    }

    #[test]
    fn thr_empty_interrupt_fires_only_when_enabled() {
        let (dev, irq, _, _) = uart();
        dev.write(THR, b"a");
        assert_eq!(irq.count(), 0);
        dev.write(IER, &[IER_THR_EMPTY]);
        let after_enable = irq.count();
        assert_eq!(
            after_enable, 1,
            "enabling THRE with an empty THR asserts it"
        );
        // Reading IIR acknowledges; the next byte sent raises it again.
        assert_eq!(read_byte(&dev, IIR) & 0x0f, 0x02);
        dev.write(THR, b"b");
        assert_eq!(irq.count(), after_enable + 1);
    }

    #[test]
    fn received_data_interrupt_fires_when_enabled() {
        let (dev, irq, _, _) = uart();
        dev.write(IER, &[IER_RX_DATA]);
        dev.enqueue_input(b"z");
        assert_eq!(irq.count(), 1);
    }

    #[test]
    fn input_room_notifier_fires_when_the_guest_drains_the_fifo() {
        let (dev, _, room, _) = uart();
        dev.enqueue_input(b"ab");
        read_byte(&dev, RBR);
        assert_eq!(room.count(), 0, "one byte still queued");
        read_byte(&dev, RBR);
        assert_eq!(room.count(), 1);
        assert_eq!(dev.input_room(), SERIAL_FIFO_BYTES);
    }

    #[test]
    fn output_errors_are_counted_not_fatal() {
        let irq = Arc::new(CountingInterrupt::default());
        let dev = SerialDevice::new(irq.clone(), Box::new(BrokenPipe), None);
        dev.write(IER, &[IER_THR_EMPTY]);
        read_byte(&dev, IIR);
        dev.write(THR, b"a");
        dev.write(THR, b"b");
        assert_eq!(dev.stats().output_errors, 2);
        // THRE still fires so the guest driver never stalls on a dead console.
        assert_eq!(irq.count(), 2);
        assert!(dev.flush_output().is_err());
    }

    #[test]
    fn interrupt_errors_are_counted() {
        let irq = Arc::new(CountingInterrupt::default());
        irq.fail.store(true, Ordering::SeqCst);
        let dev = SerialDevice::new(irq, Box::new(io::sink()), None);
        dev.write(IER, &[IER_THR_EMPTY | IER_RX_DATA]);
        assert_eq!(dev.enqueue_input(b"abc"), 3);
        assert_eq!(dev.stats().interrupt_errors, 2);
    }

    #[test]
    fn odd_sizes_and_offsets_do_not_panic() {
        let (dev, _, _, out) = uart();
        for offset in [0, 1, 5, 7, 8, 9, 0xff, u64::MAX] {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut data = vec![0u8; len];
                dev.read(offset, &mut data);
                if len != 1 || offset >= 8 {
                    assert!(data.iter().all(|&b| b == 0xff));
                }
                if len != 1 {
                    dev.write(offset, &vec![b'q'; len]);
                }
            }
        }
        dev.write(8, b"q");
        assert!(
            out.contents().is_empty(),
            "ignored writes must not reach THR"
        );
    }

    #[test]
    fn divisor_latch_does_not_send_bytes() {
        let (dev, _, _, out) = uart();
        dev.write(LCR, &[0x80]);
        dev.write(THR, &[0x0c]);
        dev.write(LCR, &[0x03]);
        assert!(out.contents().is_empty());
    }

    #[test]
    fn silent_uart_probes_like_a_uart() {
        let dev = SerialDevice::silent(Arc::new(CountingInterrupt::default()));
        // Linux's 8250 probe: scratch register round trip, then LSR sanity.
        dev.write(7, &[0xa5]);
        assert_eq!(read_byte(&dev, 7), 0xa5);
        assert_ne!(read_byte(&dev, LSR) & LSR_THR_EMPTY, 0);
        dev.write(THR, b"discarded");
        assert_eq!(dev.stats(), SerialStats::default());
    }
}
