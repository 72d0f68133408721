//! Device work on the VMM's event thread: one subscriber per device,
//! woken by the queue eventfds (ioeventfd or a trapped QueueNotify write),
//! its backend descriptor and its rate limiters' timers.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

use crate::device::VirtioDevice;
use crate::transport_core::VirtioCore;

/// A transport (virtio-MMIO or virtio-PCI) around a [`VirtioCore`].
pub trait VirtioTransport<D>: Send + Sync {
    /// The transport-neutral core the event thread serves.
    fn core(&self) -> &Arc<VirtioCore<D>>;
}

/// Event data of the backend descriptor (queue indexes are small).
const BACKEND: u32 = u32::MAX;
/// Event data of rate-limiter timer `i`: this bit, plus `i`.
const TIMER: u32 = 1 << 30;

/// Subscribes a transport's queue eventfds (and its device's backend
/// descriptor, if any) to an `event_manager` event loop and serves each
/// when it fires.
pub struct VirtioWorker<D> {
    transport: Arc<VirtioCore<D>>,
}

impl<D: VirtioDevice> VirtioWorker<D> {
    /// The worker for `transport` (which stays on the bus as well).
    pub fn new<T: VirtioTransport<D>>(transport: Arc<T>) -> Self {
        Self {
            transport: Arc::clone(transport.core()),
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioWorker<D> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if !events.event_set().contains(EventSet::IN) {
            return;
        }
        if events.data() == BACKEND {
            self.transport.backend_event();
        } else if events.data() & TIMER != 0 {
            self.transport
                .timer_event((events.data() & !TIMER) as usize);
        } else {
            self.transport.queue_event(events.data() as usize);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (index, event) in self.transport.queue_events().iter().enumerate() {
            let Ok(data) = u32::try_from(index) else {
                return;
            };
            if let Err(error) = ops.add(Events::with_data(event, data, EventSet::IN)) {
                tracing::error!(?error, index, "cannot watch virtio queue");
            }
        }
        for (index, fd) in self.transport.timer_fds().into_iter().enumerate() {
            let Some(data) = u32::try_from(index).ok().filter(|i| *i < TIMER) else {
                return;
            };
            if let Err(error) = ops.add(Events::with_data_raw(fd, TIMER | data, EventSet::IN)) {
                tracing::error!(?error, index, "cannot watch a rate limiter timer");
            }
        }
        if let Some(fd) = self.transport.backend_fd()
            && let Err(error) = ops.add(Events::with_data_raw(fd, BACKEND, EventSet::IN))
        {
            tracing::error!(?error, "cannot watch the virtio device's backend");
        }
    }
}
