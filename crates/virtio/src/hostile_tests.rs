//! A hostile driver: malformed rings built in real guest memory. Each
//! attack must fail its request (used length 0, counted) or mark the device
//! NEEDS_RESET with a configuration interrupt, and nothing may panic.

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};

use crate::rng::Rng;
use crate::testing::{
    CountingIrq, DATA, Driver, MEM_SIZE, Ring, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, transport,
};
use crate::{GuestMemory, VirtioMmioTransport};

const SIZE: u16 = 16;
const W: u32 = VRING_DESC_F_WRITE;
const NW: u32 = VRING_DESC_F_NEXT | VRING_DESC_F_WRITE;

struct Rig {
    t: VirtioMmioTransport<Rng>,
    mem: GuestMemory,
    irq: std::sync::Arc<CountingIrq>,
    ring: Ring,
}

impl Rig {
    fn new() -> Self {
        let (t, mem, irq) = transport(Rng::new());
        let ring = Ring::new(0x1000, SIZE);
        Driver::new(&t).start(&[ring]);
        Self { t, mem, irq, ring }
    }

    fn kick(&self, heads: &[u16]) {
        self.ring.publish(&self.mem, heads);
        Driver::new(&self.t).notify(0);
    }

    fn needs_reset(&self) -> bool {
        self.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// The chain at `head` came back with nothing written and one error,
    /// and a well-formed request right after still works.
    fn assert_dropped_then_recovers(&self, head: u16) {
        let slot = self.ring.used_idx(&self.mem) - 1;
        assert_eq!(self.ring.used(&self.mem, slot), (u32::from(head), 0));
        assert_eq!(self.t.counters().errors, 1);
        assert!(!self.needs_reset());
        self.ring.set_desc(&self.mem, 15, DATA, 8, W, 0);
        self.kick(&[15]);
        assert_eq!(self.ring.used(&self.mem, slot + 1), (15, 8));
        assert_eq!(Driver::new(&self.t).take_interrupt(), VIRTIO_MMIO_INT_VRING);
    }

    fn assert_needs_reset(&self) {
        assert!(self.needs_reset());
        assert_eq!(
            Driver::new(&self.t).take_interrupt() & VIRTIO_MMIO_INT_CONFIG,
            VIRTIO_MMIO_INT_CONFIG
        );
        assert!(self.irq.count() >= 1);
        // Further notifications are not served until the driver resets.
        let used = self.ring.used_idx(&self.mem);
        self.ring.set_desc(&self.mem, 15, DATA, 8, W, 0);
        self.kick(&[15]);
        assert_eq!(self.ring.used_idx(&self.mem), used);
    }
}

#[test]
fn descriptor_loop() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 8, NW, 1);
    rig.ring.set_desc(&rig.mem, 1, DATA + 8, 8, NW, 0);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
}

#[test]
fn self_referencing_descriptor() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 3, DATA, 8, NW, 3);
    rig.kick(&[3]);
    rig.assert_dropped_then_recovers(3);
}

#[test]
fn chain_longer_than_the_queue() {
    let rig = Rig::new();
    for i in 0..SIZE {
        rig.ring.set_desc(
            &rig.mem,
            i,
            DATA + 16 * u64::from(i),
            16,
            NW,
            (i + 1) % SIZE,
        );
    }
    rig.kick(&[0]);
    let (id, len) = rig.ring.used(&rig.mem, 0);
    assert_eq!((id, len), (0, 0));
    assert_eq!(rig.t.counters().errors, 1);
    assert!(!rig.needs_reset());
}

#[test]
fn next_index_out_of_range() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 8, NW, SIZE);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 8, NW, u16::MAX);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
}

#[test]
fn head_index_out_of_range() {
    let rig = Rig::new();
    // Past the table lies the available ring: readable memory, so only
    // the index check stops the device from reading it as descriptors.
    rig.kick(&[SIZE]);
    assert_eq!(rig.t.counters().errors, 1);
    rig.assert_needs_reset();
}

#[test]
fn buffer_outside_guest_ram() {
    for (addr, len) in [(MEM_SIZE - 8, 64), (MEM_SIZE, 8), (1 << 40, 8)] {
        let rig = Rig::new();
        rig.ring.set_desc(&rig.mem, 0, addr, len, W, 0);
        rig.kick(&[0]);
        rig.assert_dropped_then_recovers(0);
    }
}

#[test]
fn zero_length_descriptor() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 8, NW, 1);
    rig.ring.set_desc(&rig.mem, 1, DATA + 8, 0, W, 0);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
}

#[test]
fn length_that_wraps_the_address_space() {
    for (addr, len) in [(u64::MAX - 4, 64), (u64::MAX, 1), (DATA, u32::MAX)] {
        let rig = Rig::new();
        rig.ring.set_desc(&rig.mem, 0, addr, len, W, 0);
        rig.kick(&[0]);
        rig.assert_dropped_then_recovers(0);
    }
}

#[test]
fn chain_over_four_gib_in_total() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, u32::MAX, NW, 1);
    rig.ring.set_desc(&rig.mem, 1, DATA, u32::MAX, W, 0);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
}

#[test]
fn avail_index_far_ahead() {
    let rig = Rig::new();
    rig.ring.set_avail_idx(&rig.mem, SIZE + 1);
    Driver::new(&rig.t).notify(0);
    rig.assert_needs_reset();
}

#[test]
fn avail_index_moved_backwards() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 8, W, 0);
    rig.kick(&[0]);
    assert_eq!(rig.ring.used_idx(&rig.mem), 1);
    // One behind what the device consumed: u16 arithmetic says 65535 ahead.
    rig.ring.set_avail_idx(&rig.mem, 0);
    Driver::new(&rig.t).notify(0);
    rig.assert_needs_reset();
}

#[test]
fn reset_recovers_from_needs_reset() {
    let rig = Rig::new();
    rig.ring.set_avail_idx(&rig.mem, u16::MAX);
    Driver::new(&rig.t).notify(0);
    assert!(rig.needs_reset());
    let ring = Ring::new(0x8000, SIZE);
    Driver::new(&rig.t).start(&[ring]);
    assert!(!rig.needs_reset());
    ring.set_desc(&rig.mem, 0, DATA, 8, W, 0);
    ring.publish(&rig.mem, &[0]);
    Driver::new(&rig.t).notify(0);
    assert_eq!(ring.used(&rig.mem, 0), (0, 8));
}

#[test]
fn many_bad_chains_in_one_batch() {
    let rig = Rig::new();
    rig.ring.set_desc(&rig.mem, 0, DATA, 0, W, 0);
    rig.ring.set_desc(&rig.mem, 1, MEM_SIZE, 8, W, 0);
    rig.ring.set_desc(&rig.mem, 2, DATA, 8, NW, 2);
    rig.ring.set_desc(&rig.mem, 3, DATA, 8, W, 0);
    rig.kick(&[0, 1, 2, 3]);
    assert_eq!(rig.ring.used_idx(&rig.mem), 4);
    assert_eq!(rig.ring.used(&rig.mem, 3), (3, 8));
    let c = rig.t.counters();
    assert_eq!((c.requests, c.errors, c.interrupts), (4, 3, 1));
}

#[test]
fn indirect_table_outside_guest_ram_or_nested() {
    // INDIRECT is never offered; virtio-queue follows such tables anyway,
    // so they must at least be harmless.
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let rig = Rig::new();
    rig.ring
        .set_desc(&rig.mem, 0, MEM_SIZE - 16, 64, VRING_DESC_F_INDIRECT, 0);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
    // An indirect table whose entry is itself indirect.
    let rig = Rig::new();
    let table = Ring::new(DATA + 0x1000, 4);
    table.set_desc(&rig.mem, 0, DATA + 0x1000, 16, VRING_DESC_F_INDIRECT, 0);
    rig.ring
        .set_desc(&rig.mem, 0, table.desc, 64, VRING_DESC_F_INDIRECT, 0);
    rig.kick(&[0]);
    rig.assert_dropped_then_recovers(0);
}
