//! virtio-net (device type 1): one receive and one transmit queue over a
//! tap (or any [`NetBackend`]).
//!
//! Deliberately simple: no merged receive buffers (each receive chain holds
//! a whole frame, which Linux arranges by posting 64 KiB chains once it
//! accepts TSO), no control queue, no multiqueue. Checksum and segmentation
//! offloads are passed through in the `virtio_net_hdr_v1` the tap speaks
//! natively, so frames cross the device without being parsed.
//!
//! Wiring (done by the VMM), on top of the steps every virtio device takes
//! (see [`crate`]):
//! 1. [`Tap::open`] with the host interface name; show a [`TapError`] to
//!    the user as is (it names the tap and the usual fix).
//! 2. [`Net::new`] with the tap, the configured MAC (`None`: random) and
//!    MTU (`None`: the guest picks, 1500 for Linux). An MTU is offered to
//!    the guest (VIRTIO_NET_F_MTU) and set on the tap, so the host sends
//!    the guest no larger frames and a bridge the tap is on passes the
//!    guest's (a bridge drops frames over a port's MTU).
//! 3. Before wrapping it in the transport, keep [`Net::stats`] (an `Arc`)
//!    for metrics, next to the transport's generic counters.
//! 4. [`crate::VirtioWorker`] watches the device's backend
//!    descriptor by itself: a private epoll set around the tap that is
//!    only readable while the device can take frames, so a guest without
//!    receive buffers never makes the event loop spin.
//! 5. With the metadata service on this interface, [`Net::set_mmds`]:
//!    the guest's ARP for its address and TCP to its port 80 are answered
//!    by the [`MmdsStack`] and never reach the tap.
//! 6. Rate limits (Firecracker's `rx_rate_limiter` and `tx_rate_limiter`):
//!    [`Net::update_rate_limiters`], or on a running device the
//!    transport's method of the same name. Each frame costs one operation
//!    and its length in bytes (virtio-net header included). A throttled
//!    receive side also stops listening to the tap, so frames wait there.

mod counters;
mod error;
mod mac;
mod rx;
mod tap;
mod tx;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod mmds_tests;
#[cfg(test)]
mod mtu_tests;
#[cfg(test)]
mod tap_tests;
#[cfg(test)]
pub(crate) mod test_rig;
#[cfg(test)]
mod tests;

use std::os::fd::RawFd;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::Queue;

use crate::net_backend::RxGate;
pub use crate::net_backend::{MAX_FRAME_LEN, NET_HDR_LEN, NetBackend};
pub use counters::{NetCounters, NetCountersSnapshot};
pub use error::NetError;
pub use mac::{MacAddr, MacError, format_mac, parse_mac, random_mac};
use rx::{Receiver, RxBuffer};
use sie_mmds::MmdsStack;
pub use tap::{Tap, TapError, offload_flags};
use tx::Transmitter;

use super::rate_limiter::{LimiterConfig, RateLimiter, RateLimiterError};
use super::{
    ActivateError, Activation, DeviceFault, GuestMemory, VirtioCore, VirtioCounters, VirtioDevice,
    VirtioInterrupt, read_config_bytes,
};

/// Length of an Ethernet header: the shortest frame worth sending.
pub const ETH_HLEN: usize = 14;
/// Queue size offered for both queues.
pub const NET_QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Smallest MTU in bytes: the least the virtio spec lets a device offer
/// (and Linux's ETH_MIN_MTU). The spec's largest, 65535, is `u16::MAX`;
/// a frame that size with its Ethernet header still fits
/// [`MAX_FRAME_LEN`].
pub const MIN_MTU: u16 = 68;
/// Configuration space (`struct virtio_net_config`, little endian): `mac[6]`,
/// status u16, max_virtqueue_pairs u16, then mtu u16 at this offset, which
/// exists only when VIRTIO_NET_F_MTU is offered.
const MTU_OFFSET: usize = 10;
/// Configuration space length with the MTU field.
const CONFIG_LEN: usize = MTU_OFFSET + 2;

/// What the device offers. Checksum and TSO in both directions are free:
/// the tap does the work from the header.
const FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO6;

struct Active {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    interrupt: VirtioInterrupt,
}

/// The network device, generic over its host side (a [`Tap`] in a VMM).
pub struct Net<B: NetBackend = Tap> {
    backend: B,
    gate: RxGate,
    mac: MacAddr,
    mtu: Option<u16>,
    counters: Arc<VirtioCounters>,
    stats: Arc<NetCounters>,
    rx: RxBuffer,
    tx_scratch: Box<[u8]>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    mmds: Option<MmdsStack>,
    active: Option<Active>,
}

impl<B: NetBackend> Net<B> {
    /// A device over `backend` with address `mac` (a random local one if
    /// `None`) and, if given, an MTU in bytes ([`MIN_MTU`] at least):
    /// offered to the guest and set on the backend (for a tap, the host
    /// interface's MTU, which needs CAP_NET_ADMIN).
    pub fn new(mut backend: B, mac: Option<MacAddr>, mtu: Option<u16>) -> Result<Self, NetError> {
        if let Some(mtu) = mtu.filter(|&mtu| mtu < MIN_MTU) {
            return Err(NetError::MtuTooSmall(mtu));
        }
        let mac = match mac {
            Some(mac) => mac,
            None => random_mac().map_err(NetError::Setup)?,
        };
        let gate = RxGate::new(backend.raw_fd()).map_err(NetError::Setup)?;
        if let Some(mtu) = mtu {
            backend
                .set_mtu(mtu)
                .map_err(|source| NetError::HostMtu { mtu, source })?;
        }
        Ok(Self {
            gate,
            backend,
            mac,
            mtu,
            counters: Arc::default(),
            stats: Arc::default(),
            rx: RxBuffer::new(),
            tx_scratch: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            rx_limiter: RateLimiter::new(&LimiterConfig::default()).map_err(NetError::Setup)?,
            tx_limiter: RateLimiter::new(&LimiterConfig::default()).map_err(NetError::Setup)?,
            mmds: None,
            active: None,
        })
    }

    /// Replaces both rate limiters; only before the device's worker is
    /// registered (it watches their timers).
    pub fn set_rate_limiters(&mut self, rx: RateLimiter, tx: RateLimiter) {
        self.rx_limiter = rx;
        self.tx_limiter = tx;
    }

    /// New limits for the receive and/or transmit side (see
    /// [`crate::rate_limiter::Buckets::update`]).
    pub fn update_rate_limiters(
        &mut self,
        rx: Option<&LimiterConfig>,
        tx: Option<&LimiterConfig>,
    ) -> Result<(), RateLimiterError> {
        if let Some(update) = rx {
            self.rx_limiter.update(update)?;
        }
        if let Some(update) = tx {
            self.tx_limiter.update(update)?;
        }
        Ok(())
    }

    /// Answers the guest's ARP and HTTP to the metadata service's address
    /// from `stack` instead of passing them to the backend.
    pub fn set_mmds(&mut self, stack: MmdsStack) {
        self.mmds = Some(stack);
    }

    /// Whether the device carries the metadata service.
    pub fn has_mmds(&self) -> bool {
        self.mmds.is_some()
    }

    /// The receive side's rate limiter.
    pub fn rx_rate_limiter(&self) -> &RateLimiter {
        &self.rx_limiter
    }

    /// The transmit side's rate limiter.
    pub fn tx_rate_limiter(&self) -> &RateLimiter {
        &self.tx_limiter
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The MTU offered to the guest, in bytes, if any.
    pub fn mtu(&self) -> Option<u16> {
        self.mtu
    }

    /// The host side.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Frame and drop counters, shareable with a metrics reader.
    pub fn stats(&self) -> &Arc<NetCounters> {
        &self.stats
    }

    /// Configuration space; the transport lets the driver read its first
    /// [`VirtioDevice::config_len`] bytes, so without an MTU the (zero) MTU
    /// field lies beyond them.
    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        let status = VIRTIO_NET_S_LINK_UP as u16;
        let mtu = self.mtu.unwrap_or(0);
        for (at, bytes) in [
            (0, &self.mac[..]),
            (6, &status.to_le_bytes()[..]),
            (8, &1u16.to_le_bytes()[..]),
            (MTU_OFFSET, &mtu.to_le_bytes()[..]),
        ] {
            if let Some(slot) = config.get_mut(at..at + bytes.len()) {
                slot.copy_from_slice(bytes);
            }
        }
        config
    }

    fn receive(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            // Not live: nowhere to put frames, so stop listening.
            self.gate.close();
            return Ok(());
        };
        let notify = Receiver {
            backend: &mut self.backend,
            mmds: self.mmds.as_mut(),
            rx: &mut self.rx,
            gate: &mut self.gate,
            limiter: &mut self.rx_limiter,
            counters: &self.counters,
            stats: &self.stats,
        }
        .run(&mut active.rx, &active.mem)?;
        if notify {
            active.interrupt.signal_used(RX_QUEUE);
        }
        Ok(())
    }

    /// A fault makes the transport mark the device NEEDS_RESET, after which
    /// it no longer passes backend events on: stop listening, or a readable
    /// tap would spin the event loop until the driver resets the device.
    fn close_on_fault(&mut self, result: Result<(), DeviceFault>) -> Result<(), DeviceFault> {
        if result.is_err() {
            self.gate.close();
        }
        result
    }

    fn transmit(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let notify = Transmitter {
            backend: &mut self.backend,
            mmds: self.mmds.as_mut(),
            scratch: &mut self.tx_scratch,
            limiter: &mut self.tx_limiter,
            counters: &self.counters,
            stats: &self.stats,
        }
        .run(&mut active.tx, &active.mem)?;
        if notify {
            active.interrupt.signal_used(TX_QUEUE);
        }
        if self.mmds.as_ref().is_some_and(MmdsStack::has_frames) {
            // The metadata service answered: deliver now, not when the
            // tap next has a frame.
            self.receive()?;
        }
        Ok(())
    }
}

impl<B: NetBackend> VirtioCore<Net<B>> {
    /// New rate limits under a running guest (Firecracker's `PATCH
    /// /network-interfaces`); frames held back are moved again, under
    /// the new limits.
    pub fn update_rate_limiters(
        &self,
        rx: Option<&LimiterConfig>,
        tx: Option<&LimiterConfig>,
    ) -> Result<(), RateLimiterError> {
        self.with_device(|net| net.update_rate_limiters(rx, tx))?;
        self.process_queue(RX_QUEUE);
        self.process_queue(TX_QUEUE);
        Ok(())
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[NET_QUEUE_SIZE, NET_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        match self.mtu {
            Some(_) => FEATURES | 1 << VIRTIO_NET_F_MTU,
            None => FEATURES,
        }
    }

    fn config_len(&self) -> usize {
        match self.mtu {
            Some(_) => CONFIG_LEN,
            None => MTU_OFFSET,
        }
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let [rx, tx] = activation.ready_queues()?;
        if let Err(error) = self.backend.set_offloads(activation.acked_features) {
            // Harmless: the guest then simply gets no offloaded frames.
            tracing::warn!(%error, "virtio-net: cannot set the tap offloads");
            self.counters.error();
        }
        self.active = Some(Active {
            mem: activation.mem,
            rx,
            tx,
            interrupt: activation.interrupt,
        });
        // Frames that waited for the driver are now wanted.
        self.gate.open();
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let result = match index {
            RX_QUEUE => self.receive(),
            TX_QUEUE => self.transmit(),
            _ => Ok(()),
        };
        self.close_on_fault(result)
    }

    fn reset(&mut self) {
        self.active = None;
        if let Some(mmds) = self.mmds.as_mut() {
            mmds.reset();
        }
        if self.rx.clear() {
            self.stats.rx_drop();
        }
        self.gate.close();
        if let Err(error) = self.backend.set_offloads(0) {
            tracing::debug!(%error, "virtio-net: cannot clear the tap offloads");
        }
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.gate.fd())
    }

    fn process_backend(&mut self) -> Result<(), DeviceFault> {
        let result = self.receive();
        self.close_on_fault(result)
    }

    fn timer_fds(&self) -> Vec<RawFd> {
        [&self.rx_limiter, &self.tx_limiter]
            .into_iter()
            .filter_map(RateLimiter::timer_fd)
            .collect()
    }

    fn timer_fired(&mut self, index: usize) -> Option<usize> {
        // Indexes follow `timer_fds`, which skips a limiter without a timer.
        let sides = [
            (&mut self.rx_limiter, RX_QUEUE),
            (&mut self.tx_limiter, TX_QUEUE),
        ];
        let (limiter, queue) = sides
            .into_iter()
            .filter(|(limiter, _)| limiter.timer_fd().is_some())
            .nth(index)?;
        limiter.timer_fired();
        Some(queue)
    }
}
