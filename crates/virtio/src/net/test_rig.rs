//! A net device on a socket pair behind a real transport, driven through
//! its registers and hand-built rings.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{Net, NetCountersSnapshot, RX_QUEUE, TX_QUEUE};
use crate::rate_limiter::RateLimiter;
use crate::testing::{
    CountingIrq, Driver, PairBackend, Peer, Ring, VIRTIO_RING_F_EVENT_IDX, pair, transport,
};
use crate::{CountersSnapshot, GuestMemory, VirtioMmioTransport};

pub const MAC: [u8; 6] = [0x06, 0x11, 0x22, 0x33, 0x44, 0x55];

pub struct Rig {
    pub t: Arc<VirtioMmioTransport<Net<PairBackend>>>,
    pub mem: GuestMemory,
    pub irq: Arc<CountingIrq>,
    pub rx: Ring,
    pub tx: Ring,
    pub peer: Peer,
}

impl Rig {
    /// A device that is not started yet.
    pub fn idle() -> Self {
        Self::idle_with_mtu(None)
    }

    /// A device offering `mtu`, not started yet.
    pub fn idle_with_mtu(mtu: Option<u16>) -> Self {
        let (backend, peer) = pair();
        let net = Net::new(backend, Some(MAC), mtu).expect("net device");
        let (t, mem, irq) = transport(net);
        Self {
            t: Arc::new(t),
            mem,
            irq,
            rx: Ring::new(0x1000, 16),
            tx: Ring::new(0x2000, 16),
            peer,
        }
    }

    /// Started with every feature but EVENT_IDX, frames passing through
    /// `rx` and `tx`.
    pub fn with_rate_limiters(rx: RateLimiter, tx: RateLimiter) -> Self {
        let rig = Self::idle();
        rig.t.with_device(|net| net.set_rate_limiters(rx, tx));
        let features = rig.driver().device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        rig.start(features);
        rig
    }

    /// Started with every feature but EVENT_IDX.
    pub fn new() -> Self {
        let rig = Self::idle();
        let features = rig.driver().device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        rig.start(features);
        rig
    }

    pub fn start(&self, features: u64) {
        self.driver().start_with(features, &[self.rx, self.tx]);
    }

    pub fn driver(&self) -> Driver<'_, Net<PairBackend>> {
        Driver::new(&self.t)
    }

    /// Posts a receive chain at `head` and notifies the receive queue.
    pub fn post_rx(&self, head: u16, buffers: &[(u64, u32, bool)]) {
        self.rx.set_chain(&self.mem, head, buffers);
        self.rx.publish(&self.mem, &[head]);
        self.driver().notify(RX_QUEUE as u32);
    }

    /// Queues a transmit chain at `head` and notifies the transmit queue.
    pub fn post_tx(&self, head: u16, buffers: &[(u64, u32, bool)]) {
        self.tx.set_chain(&self.mem, head, buffers);
        self.tx.publish(&self.mem, &[head]);
        self.driver().notify(TX_QUEUE as u32);
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("guest write");
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.mem
            .read_slice(&mut out, GuestAddress(addr))
            .expect("guest read");
        out
    }

    /// The last used element of `ring`.
    pub fn last_used(&self, ring: Ring) -> (u32, u32) {
        ring.used(&self.mem, ring.used_idx(&self.mem).wrapping_sub(1))
    }

    pub fn counters(&self) -> CountersSnapshot {
        self.t.counters()
    }

    pub fn stats(&self) -> NetCountersSnapshot {
        self.t.with_device(|net| net.stats().snapshot())
    }

    pub fn needs_reset(&self) -> bool {
        self.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// Whether the worker's event loop would wake up for the backend now.
    pub fn backend_wakes(&self) -> bool {
        let fd = self.t.backend_fd().expect("net has a backend fd");
        let epoll = Epoll::new().expect("epoll");
        epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
            .expect("watch");
        let mut events = [EpollEvent::default()];
        epoll.wait(0, &mut events).expect("epoll wait") > 0
    }
}

/// `n` bytes of a recognisable frame.
pub fn frame(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}
