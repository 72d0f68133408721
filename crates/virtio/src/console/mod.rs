//! virtio-console (device type 3): the guest's `hvc0`, one port, no
//! VIRTIO_CONSOLE_F_MULTIPORT, so two queues: receiveq0 (0, host to guest)
//! and transmitq0 (1, guest to host).
//!
//! A serial console costs the guest two VM exits per byte (LSR poll, THR
//! write); here a whole buffer of output costs one queue notification,
//! which the ioeventfd turns into a wake-up of the VMM's event thread
//! without a trip through the vCPU's exit dispatch.
//!
//! Transmit: each chain's device-readable bytes go to the output writer
//! (the VMM hands it the same sink COM1 writes to: stdout, a
//! `serial_out_path` file, the console socket's ring). Receive: host input
//! arrives through [`ConsoleInput`] and waits there (bounded, see
//! [`input`]) until the guest posts receive buffers.
//!
//! Hostile chains (a writable buffer to transmit, a readable buffer to
//! receive into, more than [`MAX_TX_CHAIN_BYTES`] to print, buffers outside
//! RAM) fail that chain with used length 0 and count an error; a ring that
//! cannot be read marks the device NEEDS_RESET, as for every device here.
//!
//! Neither the console size (F_SIZE) nor emergency writes (F_EMERG_WRITE)
//! are offered. A snapshot keeps the transport's queues; input buffered
//! here but not yet delivered is the host's, not the guest's, and is not
//! saved.
//!
//! ```
//! use sie_virtio::console::Console;
//! use sie_virtio::VirtioDevice;
//!
//! let console = Console::new(Box::new(std::io::sink()), None).unwrap();
//! let input = console.input();
//! assert_eq!(input.enqueue(b"ls\n"), 3);
//! assert_eq!(console.device_type(), 3);
//! ```

pub mod input;
#[cfg(test)]
mod tests;

use std::io::Write;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_CONSOLE;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes};

use crate::chain::{Segment, drain_queue_until};
use crate::counters::VirtioCounters;
use crate::device::{ActivateError, Activation, VirtioDevice, read_config_bytes};
use crate::fault::DeviceFault;
use crate::interrupt::VirtioInterrupt;
use crate::memory::GuestMemory;

pub use input::{ConsoleInput, INPUT_BUFFER_BYTES};

/// receiveq0: buffers the device fills with host input.
pub const RX_QUEUE: usize = 0;
/// transmitq0: buffers of guest output.
pub const TX_QUEUE: usize = 1;
/// Queue size offered for each queue. Linux fills the whole receive queue
/// with page-sized buffers at probe, so this is also the guest memory its
/// driver sets aside (64 pages: 256 KiB); its console writes wait for each
/// transmit buffer to come back, so a deeper transmit queue buys nothing.
pub const CONSOLE_QUEUE_SIZE: u16 = 64;
/// Most bytes one transmit chain may carry (1 MiB). Linux sends at most a
/// page per buffer; a chain claiming more is refused rather than tying up
/// the event thread.
pub const MAX_TX_CHAIN_BYTES: u64 = 1 << 20;
/// Bytes copied out of guest memory per step, so a large chain needs no
/// large allocation.
const COPY_CHUNK: usize = 4096;
/// `struct virtio_console_config`: cols, rows (u16), max_nr_ports,
/// emerg_wr (u32).
const CONFIG_LEN: usize = 12;

/// What the device holds while the driver is live.
struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
}

/// The console device.
pub struct Console {
    counters: Arc<VirtioCounters>,
    output: Box<dyn Write + Send>,
    input: ConsoleInput,
    config: [u8; CONFIG_LEN],
    active: Option<Active>,
}

impl Console {
    /// A console writing guest output to `output`; `room` is told when the
    /// guest took buffered input (see [`ConsoleInput::enqueue`]).
    pub fn new(
        output: Box<dyn Write + Send>,
        room: Option<Arc<dyn sie_devices::Interrupt>>,
    ) -> std::io::Result<Self> {
        let mut config = [0u8; CONFIG_LEN];
        // max_nr_ports: one (only read by a multiport driver, which this
        // device does not offer to be).
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        Ok(Self {
            counters: Arc::default(),
            output,
            input: ConsoleInput::new(room)?,
            config,
            active: None,
        })
    }

    /// The handle host input is offered through.
    pub fn input(&self) -> ConsoleInput {
        self.input.clone()
    }

    /// A ring that cannot be trusted (the transport marks the device
    /// NEEDS_RESET) is not touched again until the driver resets the
    /// device; host input keeps waiting for the next driver.
    fn stop_on_fault(&mut self, result: Result<(), DeviceFault>) -> Result<(), DeviceFault> {
        if result.is_err() {
            self.active = None;
        }
        result
    }

    /// Prints every transmit chain.
    fn transmit(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let (counters, output) = (&self.counters, &mut self.output);
        let mem = &active.mem;
        if drain_queue_until(&mut active.tx, mem, counters, |buffers| {
            if let Ok(buffers) = buffers {
                print_chain(mem, &buffers, output.as_mut(), counters);
            }
            // The device writes nothing into a transmit buffer.
            Some(0)
        })? {
            active.interrupt.signal_used(TX_QUEUE);
        }
        Ok(())
    }

    /// Moves waiting input into receive buffers, as far as both go.
    fn receive(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        if self.input.buffered() == 0 {
            return Ok(());
        }
        let (counters, input) = (&self.counters, &self.input);
        let mem = &active.mem;
        let mut delivered = 0u64;
        let used = drain_queue_until(&mut active.rx, mem, counters, |buffers| {
            if input.buffered() == 0 {
                // Left on the ring for the next input.
                return None;
            }
            let n = buffers.map_or(0, |b| fill_chain(mem, &b, input, counters));
            delivered += u64::from(n);
            Some(n)
        })?;
        if delivered > 0 {
            counters.read_bytes(delivered);
            input.made_room();
        }
        if used {
            active.interrupt.signal_used(RX_QUEUE);
        }
        Ok(())
    }
}

/// Writes one transmit chain's bytes to `output`. A chain with a
/// device-writable buffer or more than [`MAX_TX_CHAIN_BYTES`] is refused
/// whole (counted), so output is never half printed for a bad chain.
fn print_chain(
    mem: &GuestMemory,
    buffers: &[Segment],
    output: &mut dyn Write,
    counters: &VirtioCounters,
) {
    let total: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
    if buffers.iter().any(|s| s.writable) || total > MAX_TX_CHAIN_BYTES {
        counters.error();
        return;
    }
    let mut chunk = [0u8; COPY_CHUNK];
    for segment in buffers {
        let mut done = 0usize;
        let len = segment.len as usize;
        while done < len {
            let n = (len - done).min(COPY_CHUNK);
            let Some(addr) = segment.addr.checked_add(done as u64) else {
                counters.error();
                return;
            };
            if mem.read_slice(&mut chunk[..n], addr).is_err() {
                counters.error();
                return;
            }
            if output.write_all(&chunk[..n]).is_err() {
                // The host's sink failed (stdout closed): the guest is not
                // told, the loss is counted.
                counters.error();
                return;
            }
            counters.wrote_bytes(n as u64);
            done += n;
        }
    }
}

/// Fills one receive chain from `input`; returns the bytes written. A
/// chain with a device-readable buffer is refused (counted) and gets
/// nothing.
fn fill_chain(
    mem: &GuestMemory,
    buffers: &[Segment],
    input: &ConsoleInput,
    counters: &VirtioCounters,
) -> u32 {
    if buffers.iter().any(|s| !s.writable) {
        counters.error();
        return 0;
    }
    let room: u64 = buffers.iter().map(|s| u64::from(s.len)).sum();
    let bytes = input.take(room.min(INPUT_BUFFER_BYTES as u64) as usize);
    let mut rest = bytes.as_slice();
    for segment in buffers {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(rest.len().min(segment.len as usize));
        if mem.write_slice(chunk, segment.addr).is_err() {
            counters.error();
            break;
        }
        rest = tail;
    }
    // Whatever could not be written waits for the next buffer.
    input.unget(rest);
    u32::try_from(bytes.len() - rest.len()).unwrap_or(0)
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[CONSOLE_QUEUE_SIZE, CONSOLE_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let [rx, tx] = activation.ready_queues()?;
        self.active = Some(Active {
            mem: activation.mem,
            rx,
            tx,
            interrupt: activation.interrupt,
        });
        // Input typed before the driver came up goes out now.
        self.receive()
            .map_err(|_| ActivateError::QueueInvalid(RX_QUEUE))
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let result = match index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        };
        self.stop_on_fault(result)
    }

    fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.input.wake_fd())
    }

    fn process_backend(&mut self) -> Result<(), DeviceFault> {
        self.input.clear_wake();
        // While the driver is not live the bytes simply wait.
        let result = self.receive();
        self.stop_on_fault(result)
    }

    fn reset(&mut self) {
        // Buffered input is the host's: it waits for the next driver.
        self.active = None;
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }
}
