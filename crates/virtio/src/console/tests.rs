//! The console against a register-level driver and hand-built rings:
//! output reaches the sink, input waits for buffers, hostile chains fail
//! alone.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::VirtioMmioTransport;
use crate::testing::{DATA, Driver, MEM_SIZE, Ring, transport};

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Default)]
struct Room(AtomicU64);

impl sie_devices::Interrupt for Room {
    fn trigger(&self) -> io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Rig {
    t: VirtioMmioTransport<Console>,
    mem: GuestMemory,
    rx: Ring,
    tx: Ring,
    sink: Sink,
    room: Arc<Room>,
    input: ConsoleInput,
}

impl Rig {
    /// A console whose driver is not started yet.
    fn idle() -> Self {
        let sink = Sink::default();
        let room = Arc::new(Room::default());
        let console = Console::new(Box::new(sink.clone()), Some(room.clone())).unwrap();
        let input = console.input();
        let (t, mem, _irq) = transport(console);
        Self {
            t,
            mem,
            rx: Ring::new(0x1000, 16),
            tx: Ring::new(0x2000, 16),
            sink,
            room,
            input,
        }
    }

    fn new() -> Self {
        let rig = Self::idle();
        rig.start();
        rig
    }

    fn start(&self) {
        Driver::new(&self.t).start(&[self.rx, self.tx]);
    }

    fn send(&self, head: u16) {
        self.tx.publish(&self.mem, &[head]);
        Driver::new(&self.t).notify(TX_QUEUE as u32);
    }

    fn post_rx(&self, head: u16) {
        self.rx.publish(&self.mem, &[head]);
        Driver::new(&self.t).notify(RX_QUEUE as u32);
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
        out
    }

    fn needs_reset(&self) -> bool {
        self.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }
}

#[test]
fn offers_version_1_and_event_idx_but_no_size_or_multiport() {
    let rig = Rig::idle();
    let features = Driver::new(&rig.t).device_features();
    assert_eq!(
        features,
        1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_EVENT_IDX
    );
    assert_eq!(rig.t.with_device(|d| d.queue_max_sizes().len()), 2);
}

#[test]
fn a_transmit_chain_goes_to_the_sink_in_one_piece() {
    let rig = Rig::new();
    rig.mem.write_slice(b"Linux ", GuestAddress(DATA)).unwrap();
    rig.mem
        .write_slice(b"version 6.1\n", GuestAddress(DATA + 0x100))
        .unwrap();
    rig.tx
        .set_chain(&rig.mem, 0, &[(DATA, 6, false), (DATA + 0x100, 12, false)]);
    rig.send(0);
    assert_eq!(rig.sink.text(), b"Linux version 6.1\n");
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    assert_eq!(rig.tx.used(&rig.mem, 0), (0, 0));
    assert_eq!(Driver::new(&rig.t).take_interrupt(), VIRTIO_MMIO_INT_VRING);
    let c = rig.t.counters();
    assert_eq!((c.requests, c.bytes_written, c.errors), (1, 18, 0));
}

#[test]
fn a_large_transmit_buffer_is_copied_in_chunks() {
    let rig = Rig::new();
    let text: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    rig.mem.write_slice(&text, GuestAddress(DATA)).unwrap();
    rig.tx.set_chain(&rig.mem, 0, &[(DATA, 10_000, false)]);
    rig.send(0);
    assert_eq!(rig.sink.text(), text);
}

#[test]
fn input_waits_for_a_receive_buffer_then_fills_it() {
    let rig = Rig::new();
    assert_eq!(rig.input.enqueue(b"ls -l\n"), 6);
    rig.t.backend_event();
    // No buffer yet: the bytes wait.
    assert_eq!(rig.input.buffered(), 6);
    rig.rx
        .set_chain(&rig.mem, 0, &[(DATA, 4, true), (DATA + 0x10, 64, true)]);
    rig.post_rx(0);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 6));
    assert_eq!(rig.read(DATA, 4), b"ls -");
    assert_eq!(rig.read(DATA + 0x10, 2), b"l\n");
    assert_eq!(rig.input.buffered(), 0);
    assert_eq!(rig.room.0.load(Ordering::SeqCst), 1);
    assert_eq!(rig.t.counters().bytes_read, 6);
}

#[test]
fn input_arriving_while_buffers_wait_is_delivered_at_once() {
    let rig = Rig::new();
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 2, true)]);
    rig.rx.set_chain(&rig.mem, 1, &[(DATA + 0x10, 2, true)]);
    rig.rx.publish(&rig.mem, &[0, 1]);
    Driver::new(&rig.t).notify(RX_QUEUE as u32);
    // Nothing to deliver: the buffers stay on the ring.
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_eq!(rig.t.counters().requests, 0);
    rig.input.enqueue(b"abc");
    rig.t.backend_event();
    assert_eq!(rig.rx.used_idx(&rig.mem), 2);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 2));
    assert_eq!(rig.rx.used(&rig.mem, 1), (1, 1));
    assert_eq!(rig.read(DATA, 2), b"ab");
    assert_eq!(rig.read(DATA + 0x10, 1), b"c");
}

#[test]
fn input_typed_before_the_driver_is_delivered_once_it_is_live() {
    let rig = Rig::idle();
    rig.input.enqueue(b"early");
    rig.t.backend_event();
    rig.start();
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 64, true)]);
    rig.post_rx(0);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 5));
    assert_eq!(rig.read(DATA, 5), b"early");
}

#[test]
fn input_beyond_the_buffer_is_left_to_the_producer() {
    let rig = Rig::new();
    let big = vec![b'x'; INPUT_BUFFER_BYTES + 100];
    assert_eq!(rig.input.enqueue(&big), INPUT_BUFFER_BYTES);
    assert_eq!(rig.input.enqueue(b"y"), 0);
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 4096, true)]);
    rig.post_rx(0);
    assert_eq!(rig.input.buffered(), INPUT_BUFFER_BYTES - 4096);
    assert_eq!(rig.room.0.load(Ordering::SeqCst), 1);
    assert_eq!(rig.input.enqueue(&big), 4096);
}

#[test]
fn a_writable_transmit_buffer_fails_its_chain_only() {
    let rig = Rig::new();
    rig.mem.write_slice(b"ok\n", GuestAddress(DATA)).unwrap();
    rig.tx
        .set_chain(&rig.mem, 0, &[(DATA, 3, false), (DATA + 0x10, 8, true)]);
    rig.send(0);
    assert_eq!(rig.sink.text(), b"");
    assert_eq!(rig.tx.used(&rig.mem, 0), (0, 0));
    assert_eq!(rig.t.counters().errors, 1);
    rig.tx.set_chain(&rig.mem, 2, &[(DATA, 3, false)]);
    rig.send(2);
    assert_eq!(rig.sink.text(), b"ok\n");
    assert!(!rig.needs_reset());
}

#[test]
fn a_transmit_chain_past_the_limit_is_refused() {
    let rig = Rig::new();
    // Two descriptors over the same 768 KiB: 1.5 MiB claimed.
    let len = 768 << 10;
    rig.tx
        .set_chain(&rig.mem, 0, &[(0, len, false), (0, len, false)]);
    rig.send(0);
    assert!(rig.sink.text().is_empty());
    assert_eq!(rig.t.counters().errors, 1);
    assert!(!rig.needs_reset());
}

#[test]
fn a_buffer_outside_ram_fails_its_chain() {
    let rig = Rig::new();
    rig.tx.set_chain(&rig.mem, 0, &[(MEM_SIZE - 4, 16, false)]);
    rig.send(0);
    assert_eq!(rig.tx.used(&rig.mem, 0), (0, 0));
    rig.input.enqueue(b"keep");
    rig.rx
        .set_chain(&rig.mem, 0, &[(MEM_SIZE + 0x1000, 16, true)]);
    rig.post_rx(0);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 0));
    assert_eq!(rig.input.buffered(), 4, "input is kept for a good buffer");
    assert_eq!(rig.t.counters().errors, 2);
    assert!(!rig.needs_reset());
}

#[test]
fn a_readable_receive_buffer_fails_its_chain_and_keeps_the_input() {
    let rig = Rig::new();
    rig.input.enqueue(b"hi");
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 8, false)]);
    rig.post_rx(0);
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 0));
    assert_eq!(rig.t.counters().errors, 1);
    rig.rx.set_chain(&rig.mem, 1, &[(DATA + 0x100, 8, true)]);
    rig.post_rx(1);
    assert_eq!(rig.rx.used(&rig.mem, 1), (1, 2));
    assert_eq!(rig.read(DATA + 0x100, 2), b"hi");
}

#[test]
fn a_head_past_the_queue_marks_the_device_needs_reset() {
    let rig = Rig::new();
    rig.tx.publish(&rig.mem, &[99]);
    Driver::new(&rig.t).notify(TX_QUEUE as u32);
    assert!(rig.needs_reset());
    // The rings are left alone until the driver resets the device: a
    // receive buffer posted now gets nothing, and the input waits.
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 16, true)]);
    rig.post_rx(0);
    rig.input.enqueue(b"x");
    rig.t.backend_event();
    assert_eq!(rig.rx.used_idx(&rig.mem), 0);
    assert_eq!(rig.input.buffered(), 1);
    // A new driver (fresh rings) gets it.
    let (rx, tx) = (Ring::new(0x8000, 16), Ring::new(0x9000, 16));
    Driver::new(&rig.t).start(&[rx, tx]);
    assert!(!rig.needs_reset());
    rx.set_chain(&rig.mem, 0, &[(DATA + 0x200, 16, true)]);
    rx.publish(&rig.mem, &[0]);
    Driver::new(&rig.t).notify(RX_QUEUE as u32);
    assert_eq!(rx.used(&rig.mem, 0), (0, 1));
    assert_eq!(rig.read(DATA + 0x200, 1), b"x");
}

#[test]
fn config_space_reads_one_port_and_refuses_writes() {
    let rig = Rig::idle();
    let mut data = [0u8; 4];
    rig.t.with_device(|d| d.read_config(4, &mut data));
    assert_eq!(u32::from_le_bytes(data), 1);
    assert!(!rig.t.with_device(|d| d.write_config(8, &[1, 0, 0, 0])));
}

#[test]
fn a_restored_console_fills_the_receive_buffers_posted_before_the_snapshot() {
    let rig = Rig::new();
    rig.mem
        .write_slice(b"before\n", GuestAddress(DATA))
        .unwrap();
    rig.tx.set_chain(&rig.mem, 0, &[(DATA, 7, false)]);
    rig.send(0);
    // A receive buffer waits on the ring when the VM is saved.
    rig.rx.set_chain(&rig.mem, 0, &[(DATA + 0x100, 16, true)]);
    rig.post_rx(0);
    let json = serde_json::to_string(&rig.t.state()).unwrap();

    // A new process: a fresh console on the same memory.
    let sink = Sink::default();
    let console = Console::new(Box::new(sink.clone()), None).unwrap();
    let input = console.input();
    let irq = Arc::new(crate::testing::CountingIrq::default());
    let new = VirtioMmioTransport::new(console, rig.mem.clone(), irq).unwrap();
    new.restore(&serde_json::from_str(&json).unwrap()).unwrap();
    input.enqueue(b"after");
    new.backend_event();
    assert_eq!(rig.rx.used(&rig.mem, 0), (0, 5));
    assert_eq!(rig.read(DATA + 0x100, 5), b"after");
    rig.mem.write_slice(b"more\n", GuestAddress(DATA)).unwrap();
    rig.tx.set_chain(&rig.mem, 1, &[(DATA, 5, false)]);
    rig.tx.publish(&rig.mem, &[1]);
    Driver::new(&new).notify(TX_QUEUE as u32);
    assert_eq!(sink.text(), b"more\n");
    assert_eq!(rig.tx.used_idx(&rig.mem), 2);
}

#[test]
fn over_pci_output_and_input_use_a_vector_per_queue() {
    use crate::testing::{PciDriver, pci_transport};
    use sie_pci::testing::MsiCall;

    let sink = Sink::default();
    let console = Console::new(Box::new(sink.clone()), None).unwrap();
    let input = console.input();
    let (t, mem, msi) = pci_transport(console);
    let (rx, tx) = (Ring::new(0x1000, 16), Ring::new(0x2000, 16));
    let d = PciDriver::new(&t);
    d.start(&[rx, tx]);
    msi.take_calls();
    mem.write_slice(b"hvc0\n", GuestAddress(DATA)).unwrap();
    tx.set_chain(&mem, 0, &[(DATA, 5, false)]);
    tx.publish(&mem, &[0]);
    d.notify(TX_QUEUE as u16);
    assert_eq!(sink.text(), b"hvc0\n");
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(1)]);
    rx.set_chain(&mem, 0, &[(DATA + 0x100, 64, true)]);
    rx.publish(&mem, &[0]);
    d.notify(RX_QUEUE as u16);
    input.enqueue(b"ls\n");
    t.backend_event();
    assert_eq!(rx.used(&mem, 0), (0, 3));
    assert_eq!(msi.take_calls(), vec![MsiCall::Trigger(0)]);
}
