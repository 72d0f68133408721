//! What every virtio transport shares (virtio 1.x §2 and §3): the device,
//! its status state machine, feature negotiation, queue configuration and
//! validation, activation and reset, and the event-thread entry points.
//!
//! A transport (virtio-MMIO in `mmio`, virtio-PCI in `pci`) only decodes
//! its registers into calls here and raises interrupts its own way (an
//! [`InterruptSink`]). The guest reaches the core from any vCPU and the
//! event thread through [`VirtioCore::queue_event`] and friends, so all
//! mutable state sits behind one mutex; the transports keep what their
//! interrupt handler and doorbell touch outside it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::counters::{CountersSnapshot, VirtioCounters};
use crate::device::{Activation, VirtioDevice};
use crate::interrupt::{InterruptSink, VirtioInterrupt};
use crate::memory::GuestMemory;

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The device offers no queue, or a maximum size that is not a power of
    /// two up to 32768.
    #[error("invalid queue layout")]
    InvalidQueues,
    /// The device does not offer VIRTIO_F_VERSION_1.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NotVersion1,
    /// A queue eventfd could not be created.
    #[error("creating a queue eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// The transport's own setup failed (virtio-PCI: BAR, capabilities, MSI-X).
    #[error("transport setup: {0}")]
    Setup(String),
}

/// The driver-visible state every transport has.
pub(crate) struct CoreState<D> {
    pub device: D,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    /// The driver's view of the queues; a copy goes to the device at
    /// activation, these stay behind for register reads.
    pub queues: Vec<Queue>,
    pub config_generation: u32,
}

impl<D> CoreState<D> {
    /// The queue QueueSel (queue_select) names, if it exists.
    pub fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
    }
}

/// A queue register a driver writes, whatever the transport calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueField {
    Size,
    Ready,
    DescLow,
    DescHigh,
    AvailLow,
    AvailHigh,
    UsedLow,
    UsedHigh,
}

/// A virtio device and the transport-neutral half of its transport.
pub struct VirtioCore<D> {
    state: Mutex<CoreState<D>>,
    queue_events: Vec<EventFd>,
    interrupt: VirtioInterrupt,
    counters: Arc<VirtioCounters>,
    mem: GuestMemory,
}

fn fresh_queues(max_sizes: &[u16]) -> Result<Vec<Queue>, TransportError> {
    if max_sizes.is_empty() {
        return Err(TransportError::InvalidQueues);
    }
    max_sizes
        .iter()
        .map(|&max| Queue::new(max).map_err(|_| TransportError::InvalidQueues))
        .collect()
}

impl<D: VirtioDevice> VirtioCore<D> {
    /// Wraps `device`, whose queues live in `mem` and whose interrupts go
    /// to `sink`. Creates one eventfd per queue.
    pub(crate) fn new(
        device: D,
        mem: GuestMemory,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<Self, TransportError> {
        if device.features() & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(TransportError::NotVersion1);
        }
        let queues = fresh_queues(device.queue_max_sizes())?;
        let queue_events = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(TransportError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        let counters = Arc::clone(device.counters());
        let interrupt = VirtioInterrupt::new(sink, Arc::clone(&counters));
        Ok(Self {
            state: Mutex::new(CoreState {
                device,
                status: 0,
                device_features_sel: 0,
                driver_features_sel: 0,
                driver_features: 0,
                queue_sel: 0,
                queues,
                config_generation: 0,
            }),
            queue_events,
            interrupt,
            counters,
            mem,
        })
    }

    /// One eventfd per queue, index = queue index: the VMM registers each
    /// as an ioeventfd where the transport says, and the
    /// [`crate::VirtioWorker`] waits on them.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's counters right now.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    pub(crate) fn shared_counters(&self) -> &VirtioCounters {
        &self.counters
    }

    pub(crate) fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The device status register (for tests and diagnostics).
    pub fn status(&self) -> u32 {
        self.lock().status
    }

    /// Runs `f` on the device under the transport's lock (e.g. to swap a
    /// backing file). Do not touch a bus from inside `f`.
    pub fn with_device<R>(&self, f: impl FnOnce(&mut D) -> R) -> R {
        f(&mut self.lock().device)
    }

    /// The device changed its configuration space: bump the configuration
    /// generation so a driver mid-read retries, and tell an active driver.
    pub fn config_changed(&self) {
        let active = {
            let mut state = self.lock();
            state.config_generation = state.config_generation.wrapping_add(1);
            state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
        };
        if active {
            self.interrupt.signal_config();
        }
    }

    /// Queue `index`'s eventfd fired: consume it, count the notification
    /// and serve the queue. What the worker does; tests call it directly.
    pub fn queue_event(&self, index: usize) {
        let Some(event) = self.queue_events.get(index) else {
            return;
        };
        // Nothing to read means a spurious wakeup; serving anyway is harmless.
        if event.read().is_ok() {
            self.counters.notification();
        }
        self.process_queue(index);
    }

    /// The device's host side is ready (see [`VirtioDevice::backend_fd`]).
    /// Called whatever the device's state: the backend descriptor is
    /// level-triggered, so a device that needs a reset must still drain or
    /// stop watching its host side, or the event thread would spin.
    pub fn backend_event(&self) {
        let mut state = self.lock();
        if let Err(fault) = state.device.process_backend() {
            tracing::debug!(%fault, "virtio device backend needs reset");
            self.needs_reset(&mut state);
        }
    }

    /// Timer `index` of the device's [`VirtioDevice::timer_fds`] fired (a
    /// rate limiter's wait is over): the device consumes it, and the queue
    /// it held back is served if the device is live.
    pub fn timer_event(&self, index: usize) {
        let mut state = self.lock();
        let Some(queue) = state.device.timer_fired(index) else {
            return;
        };
        self.serve(&mut state, queue);
    }

    /// Serves the guest's kicks still pending in the queues' eventfds, then
    /// lets the device finish its work in flight into the used rings (see
    /// [`VirtioDevice::quiesce`]), if it is live: before a snapshot or a
    /// migration's switch-over, with the vCPUs paused. A kick left pending
    /// would otherwise be served here after the state was taken (a frame
    /// sent twice once the destination serves the same queue) or never (a
    /// stalled queue). A fault marks the device NEEDS_RESET.
    pub fn quiesce(&self) {
        for (index, event) in self.queue_events.iter().enumerate() {
            if event.read().is_ok() {
                self.counters.notification();
                self.process_queue(index);
            }
        }
        let mut state = self.lock();
        if !live(state.status) {
            return;
        }
        if let Err(fault) = state.device.quiesce() {
            tracing::debug!(%fault, "virtio device needs reset");
            self.needs_reset(&mut state);
        }
    }

    /// The device's rate-limiter timers (and other wake-up descriptors).
    pub fn timer_fds(&self) -> Vec<std::os::fd::RawFd> {
        self.lock().device.timer_fds()
    }

    /// The device's host-side descriptor, if it has one.
    pub fn backend_fd(&self) -> Option<std::os::fd::RawFd> {
        self.lock().device.backend_fd()
    }

    /// Serves queue `index` if the device is live. A fault marks the device
    /// NEEDS_RESET and raises a configuration interrupt.
    pub fn process_queue(&self, index: usize) {
        let mut state = self.lock();
        self.serve(&mut state, index);
    }

    fn serve(&self, state: &mut CoreState<D>, index: usize) {
        if !live(state.status) {
            return;
        }
        if let Err(fault) = state.device.process_queue(index) {
            // Guest-triggered and counted: debug, so a guest cannot flood the log.
            tracing::debug!(%fault, index, "virtio device needs reset");
            self.needs_reset(state);
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, CoreState<D>> {
        // Plain registers and queue indices: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn needs_reset(&self, state: &mut CoreState<D>) {
        state.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    fn reset(&self, state: &mut CoreState<D>) {
        state.device.reset();
        state.status = 0;
        state.device_features_sel = 0;
        state.driver_features_sel = 0;
        state.driver_features = 0;
        state.queue_sel = 0;
        for queue in &mut state.queues {
            queue.reset();
        }
        self.interrupt.reset();
    }

    /// A queue notification that reached the transport (no ioeventfd
    /// registered, or a width KVM did not match): forward it to the same
    /// eventfd. `false` for a queue that does not exist.
    pub(crate) fn notify(&self, index: usize) -> bool {
        let Some(event) = self.queue_events.get(index) else {
            return false;
        };
        if let Err(error) = event.write(1) {
            self.counters.error();
            tracing::warn!(%error, index, "virtio queue notification lost");
        }
        true
    }

    /// A driver write of the device status: 0 resets; otherwise only the
    /// next bit of the initialisation sequence (or FAILED) is accepted,
    /// FEATURES_OK only for acceptable features, and DRIVER_OK activates.
    pub(crate) fn write_status(&self, state: &mut CoreState<D>, value: u32) {
        if value == 0 {
            self.reset(state);
            return;
        }
        let held = state.status & !VIRTIO_CONFIG_S_NEEDS_RESET;
        let wanted = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if wanted == held {
            return;
        }
        let added = wanted & !held;
        if wanted & held != held {
            // Only a reset clears bits.
            self.counters.invalid_status();
            return;
        }
        if added == VIRTIO_CONFIG_S_FAILED {
            state.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let next = match held {
            0 => VIRTIO_CONFIG_S_ACKNOWLEDGE,
            VIRTIO_CONFIG_S_ACKNOWLEDGE => VIRTIO_CONFIG_S_DRIVER,
            h if h == VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER => {
                VIRTIO_CONFIG_S_FEATURES_OK
            }
            h if h
                == VIRTIO_CONFIG_S_ACKNOWLEDGE
                    | VIRTIO_CONFIG_S_DRIVER
                    | VIRTIO_CONFIG_S_FEATURES_OK =>
            {
                VIRTIO_CONFIG_S_DRIVER_OK
            }
            _ => 0,
        };
        if added != next {
            self.counters.invalid_status();
            return;
        }
        if next == VIRTIO_CONFIG_S_FEATURES_OK && !features_acceptable(state) {
            // Left clear: the driver reads the status back and gives up.
            self.counters.invalid_status();
            return;
        }
        state.status |= added;
        if next == VIRTIO_CONFIG_S_DRIVER_OK {
            self.activate(state);
        }
    }

    /// Hands the device copies of the queues, each checked to lie in guest
    /// memory if ready; anything wrong marks it NEEDS_RESET.
    pub(crate) fn activate(&self, state: &mut CoreState<D>) {
        let mut queues = Vec::with_capacity(state.queues.len());
        for queue in &state.queues {
            if queue.ready() && !queue.is_valid(&self.mem) {
                tracing::debug!("virtio queue rings outside guest memory");
                self.counters.error();
                return self.needs_reset(state);
            }
            match Queue::try_from(queue.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(state.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
                    queues.push(copy);
                }
                Err(_) => return self.needs_reset(state),
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone(),
            acked_features: state.driver_features,
        };
        if let Err(error) = state.device.activate(activation) {
            tracing::debug!(%error, "virtio device activation failed");
            self.counters.error();
            self.needs_reset(state);
        }
    }

    /// A driver read of `data.len()` bytes at `offset` of the device's
    /// configuration space; `false` (nothing read) if the access is not a
    /// byte, word or dword inside it.
    pub(crate) fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        let state = self.lock();
        match config_range(offset, data.len(), state.device.config_len()) {
            Some(start) => {
                state.device.read_config(start, data);
                true
            }
            None => false,
        }
    }

    /// A driver write to the device's configuration space (see
    /// [`Self::read_config`]); `false` if refused.
    pub(crate) fn write_config(&self, offset: u64, data: &[u8]) -> bool {
        let mut state = self.lock();
        match config_range(offset, data.len(), state.device.config_len()) {
            Some(start) => state.device.write_config(start, data),
            None => false,
        }
    }
}

/// Whether the driver has the device running (DRIVER_OK, not failed, not
/// waiting for a reset).
pub(crate) fn live(status: u32) -> bool {
    let live = VIRTIO_CONFIG_S_DRIVER_OK;
    status & (live | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == live
}

/// The config-space offset of an access at `offset`, if it is a
/// byte/word/dword access entirely inside a config space of `len` bytes.
fn config_range(offset: u64, width: usize, len: usize) -> Option<usize> {
    if !matches!(width, 1 | 2 | 4) {
        return None;
    }
    let start = usize::try_from(offset).ok()?;
    (start.checked_add(width)? <= len).then_some(start)
}

/// VERSION_1 accepted (we have no legacy interface) and nothing the device
/// did not offer.
fn features_acceptable<D: VirtioDevice>(state: &CoreState<D>) -> bool {
    let acked = state.driver_features;
    acked & (1 << VIRTIO_F_VERSION_1) != 0 && acked & !state.device.features() == 0
}

/// The 32 offered feature bits the device feature selector names (0 past
/// the second word).
pub(crate) fn device_features_word<D: VirtioDevice>(state: &CoreState<D>) -> u32 {
    match state.device_features_sel {
        0 => state.device.features() as u32,
        1 => (state.device.features() >> 32) as u32,
        _ => 0,
    }
}

/// The 32 accepted feature bits the driver feature selector names.
pub(crate) fn driver_features_word<D>(state: &CoreState<D>) -> u32 {
    match state.driver_features_sel {
        0 => state.driver_features as u32,
        1 => (state.driver_features >> 32) as u32,
        _ => 0,
    }
}

/// Feature bits may only be written between DRIVER and FEATURES_OK.
pub(crate) fn write_driver_features<D>(state: &mut CoreState<D>, value: u32) -> bool {
    let s = state.status;
    if s & VIRTIO_CONFIG_S_DRIVER == 0 || s & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
        return false;
    }
    let shift = match state.driver_features_sel {
        0 => 0,
        1 => 32,
        _ => return false,
    };
    state.driver_features &= !(0xffff_ffff_u64 << shift);
    state.driver_features |= u64::from(value) << shift;
    true
}

/// Queue configuration of the selected queue: only before DRIVER_OK (the
/// device then owns the rings), and only values virtio-queue accepts
/// (power-of-two sizes, aligned rings). Before FEATURES_OK is allowed:
/// Linux clears QueueReady after a reset when it tears a device down.
pub(crate) fn write_queue<D>(state: &mut CoreState<D>, field: QueueField, value: u32) -> bool {
    let configurable = state.status & VIRTIO_CONFIG_S_DRIVER_OK == 0;
    let selected = state.queue_sel as usize;
    let Some(queue) = state.queues.get_mut(selected).filter(|_| configurable) else {
        return false;
    };
    let addr = |current: u64, high: bool| {
        if high {
            (current & 0xffff_ffff) | (u64::from(value) << 32)
        } else {
            (current & !0xffff_ffff) | u64::from(value)
        }
    };
    let guest = vm_memory::GuestAddress;
    match field {
        QueueField::Size => u16::try_from(value)
            .ok()
            .is_some_and(|size| queue.try_set_size(size).is_ok()),
        QueueField::Ready if value <= 1 => {
            queue.set_ready(value == 1);
            true
        }
        QueueField::Ready => false,
        QueueField::DescLow | QueueField::DescHigh => {
            let a = addr(queue.desc_table(), field == QueueField::DescHigh);
            queue.try_set_desc_table_address(guest(a)).is_ok()
        }
        QueueField::AvailLow | QueueField::AvailHigh => {
            let a = addr(queue.avail_ring(), field == QueueField::AvailHigh);
            queue.try_set_avail_ring_address(guest(a)).is_ok()
        }
        QueueField::UsedLow | QueueField::UsedHigh => {
            let a = addr(queue.used_ring(), field == QueueField::UsedHigh);
            queue.try_set_used_ring_address(guest(a)).is_ok()
        }
    }
}
