//! The virtio-MMIO transport, version 2 (virtio 1.x §4.2.2).
//!
//! One 4 KiB-ish register window per device. The guest reaches it from any
//! vCPU, the event thread reaches the device through [`queue_event`] and
//! [`backend_event`], so all mutable state sits behind one mutex;
//! InterruptStatus is an atomic shared with [`VirtioInterrupt`] so raising
//! an interrupt never needs it, and the registers a guest's interrupt
//! handler and doorbell touch (InterruptStatus, InterruptAck, QueueNotify)
//! never wait for the event thread.
//!
//! [`queue_event`]: VirtioMmioTransport::queue_event
//! [`backend_event`]: VirtioMmioTransport::backend_event

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::counters::{CountersSnapshot, VirtioCounters};
use crate::device::{Activation, VirtioDevice, VirtioInterrupt};
use crate::memory::GuestMemory;
use crate::mmio_state::{SavedQueue, TransportSnapshot, TransportState, TransportStateError};
use sie_devices::{BusDevice, Interrupt};

/// "virt" in little endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// The transport version implemented (virtio 1.x, no legacy).
pub const MMIO_VERSION: u32 = 2;
/// The vendor ID reported to the guest ("SIE\0"); informational only.
pub const MMIO_VENDOR_ID: u32 = 0x0045_4953;
/// Size of the register window to put on the MMIO bus.
pub const MMIO_WINDOW_LEN: u64 = 0x1000;
/// Offset of QueueNotify, where the VMM registers its ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const CONFIG_START: u64 = VIRTIO_MMIO_CONFIG as u64;

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
}

struct State<D> {
    device: D,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    /// The driver's view of the queues; a copy goes to the device at
    /// activation, these stay behind for register reads.
    queues: Vec<Queue>,
    config_generation: u32,
}

/// A virtio device behind the virtio-MMIO register window.
pub struct VirtioMmioTransport<D> {
    state: Mutex<State<D>>,
    queue_events: Vec<EventFd>,
    interrupt_status: Arc<AtomicU32>,
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

impl<D: VirtioDevice> VirtioMmioTransport<D> {
    /// Wraps `device`, whose queues live in `mem` and whose interrupts go to
    /// `line` (an irqfd in sie). Creates one eventfd per queue.
    pub fn new(
        device: D,
        mem: GuestMemory,
        line: Arc<dyn Interrupt>,
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
        let interrupt_status = Arc::new(AtomicU32::new(0));
        let interrupt =
            VirtioInterrupt::new(Arc::clone(&interrupt_status), line, Arc::clone(&counters));
        Ok(Self {
            state: Mutex::new(State {
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
            interrupt_status,
            interrupt,
            counters,
            mem,
        })
    }

    /// One eventfd per queue, index = queue index. The VMM registers each as
    /// an ioeventfd at base + [`QUEUE_NOTIFY_OFFSET`] with datamatch = index;
    /// the [`crate::VirtioWorker`] waits on them.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device's counters right now.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// The registers and queues, for a snapshot (the VM paused).
    pub fn state(&self) -> TransportState {
        let state = self.lock();
        TransportState {
            device_type: state.device.device_type(),
            status: state.status,
            device_features_sel: state.device_features_sel,
            driver_features_sel: state.driver_features_sel,
            driver_features: state.driver_features,
            queue_sel: state.queue_sel,
            queues: state.queues.iter().map(SavedQueue::of).collect(),
            config_generation: state.config_generation,
            interrupt_status: self.interrupt_status.load(Ordering::SeqCst),
            device: state.device.save_state(),
        }
    }

    /// Puts saved registers and queues back (guest memory already restored,
    /// the vCPUs not yet running) and, for a device the driver had started,
    /// activates it as DRIVER_OK would. A state that does not fit this
    /// device is refused and the transport left as it was; one whose queues
    /// the device then refuses leaves it NEEDS_RESET, which the driver
    /// handles.
    pub fn restore(&self, saved: &TransportState) -> Result<(), TransportStateError> {
        let mut state = self.lock();
        let device = state.device.device_type();
        if saved.device_type != device {
            return Err(TransportStateError::DeviceType {
                saved: saved.device_type,
                device,
            });
        }
        let offered = state.device.queue_max_sizes();
        let shapes_match = saved.queues.len() == offered.len()
            && saved
                .queues
                .iter()
                .zip(offered)
                .all(|(queue, &max)| queue.max_size == max);
        if !shapes_match {
            return Err(TransportStateError::Queues(format!(
                "{} saved, {} offered",
                saved.queues.len(),
                offered.len()
            )));
        }
        let event_idx = saved.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let queues = saved
            .queues
            .iter()
            .enumerate()
            .map(|(index, queue)| queue.rebuild(index, &self.mem, event_idx))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(device_state) = &saved.device {
            state
                .device
                .load_state(device_state)
                .map_err(TransportStateError::Device)?;
        }
        state.queues = queues;
        state.status = saved.status;
        state.device_features_sel = saved.device_features_sel;
        state.driver_features_sel = saved.driver_features_sel;
        state.driver_features = saved.driver_features;
        state.queue_sel = saved.queue_sel;
        state.config_generation = saved.config_generation;
        self.interrupt_status
            .store(saved.interrupt_status, Ordering::SeqCst);
        let live = VIRTIO_CONFIG_S_DRIVER_OK;
        if saved.status & (live | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) == live {
            self.activate(&mut state);
            if state.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
                && let Err(fault) = state.device.restored()
            {
                tracing::debug!(%fault, "virtio device could not announce its restore");
                self.needs_reset(&mut state);
            }
        }
        Ok(())
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

    /// The device changed its configuration space: bump ConfigGeneration so
    /// a driver mid-read retries, and tell an active driver.
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

    /// Lets the device finish its work in flight into the used rings (see
    /// [`VirtioDevice::quiesce`]), if it is live: before a snapshot, with
    /// the vCPUs paused. A fault marks the device NEEDS_RESET.
    pub fn quiesce(&self) {
        let mut state = self.lock();
        let live = VIRTIO_CONFIG_S_DRIVER_OK;
        if state.status & (live | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != live {
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

    fn serve(&self, state: &mut State<D>, index: usize) {
        let live = VIRTIO_CONFIG_S_DRIVER_OK;
        if state.status & (live | VIRTIO_CONFIG_S_NEEDS_RESET | VIRTIO_CONFIG_S_FAILED) != live {
            return;
        }
        if let Err(fault) = state.device.process_queue(index) {
            // Guest-triggered and counted: debug, so a guest cannot flood the log.
            tracing::debug!(%fault, index, "virtio device needs reset");
            self.needs_reset(state);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<D>> {
        // Plain registers and queue indices: usable after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn needs_reset(&self, state: &mut State<D>) {
        state.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    fn reset(&self, state: &mut State<D>) {
        state.device.reset();
        state.status = 0;
        state.device_features_sel = 0;
        state.driver_features_sel = 0;
        state.driver_features = 0;
        state.queue_sel = 0;
        for queue in &mut state.queues {
            queue.reset();
        }
        self.interrupt_status.store(0, Ordering::SeqCst);
    }

    fn read_register(&self, offset: u32) -> Option<u32> {
        // Lock-free first: the guest's interrupt handler reads
        // InterruptStatus while the event thread may hold the lock through
        // a long request (a drive finishing its requests before a snapshot).
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => return Some(MMIO_MAGIC),
            VIRTIO_MMIO_VERSION => return Some(MMIO_VERSION),
            VIRTIO_MMIO_VENDOR_ID => return Some(MMIO_VENDOR_ID),
            VIRTIO_MMIO_INTERRUPT_STATUS => {
                return Some(self.interrupt_status.load(Ordering::SeqCst));
            }
            _ => {}
        }
        let state = self.lock();
        let queue = state.queues.get(state.queue_sel as usize);
        Some(match offset {
            VIRTIO_MMIO_DEVICE_ID => state.device.device_type(),
            VIRTIO_MMIO_DEVICE_FEATURES => match state.device_features_sel {
                0 => state.device.features() as u32,
                1 => (state.device.features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_STATUS => state.status,
            VIRTIO_MMIO_CONFIG_GENERATION => state.config_generation,
            _ => return None,
        })
    }

    fn write_register(&self, offset: u32, value: u32) -> bool {
        if offset == VIRTIO_MMIO_QUEUE_NOTIFY {
            return self.notify(value);
        }
        if offset == VIRTIO_MMIO_INTERRUPT_ACK {
            self.interrupt_status.fetch_and(!value, Ordering::SeqCst);
            return true;
        }
        let mut state = self.lock();
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => state.device_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => state.driver_features_sel = value,
            VIRTIO_MMIO_DRIVER_FEATURES => return write_driver_features(&mut state, value),
            VIRTIO_MMIO_QUEUE_SEL => state.queue_sel = value,
            VIRTIO_MMIO_STATUS => self.write_status(&mut state, value),
            _ => return write_queue(&mut state, offset, value),
        }
        true
    }

    /// A QueueNotify that reached the transport (no ioeventfd registered, or
    /// a width KVM did not match): forward it to the same eventfd.
    fn notify(&self, index: u32) -> bool {
        let Some(event) = self.queue_events.get(index as usize) else {
            return false;
        };
        if let Err(error) = event.write(1) {
            self.counters.error();
            tracing::warn!(%error, index, "virtio queue notification lost");
        }
        true
    }

    fn write_status(&self, state: &mut State<D>, value: u32) {
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
            // Left clear: the driver reads Status back and gives up.
            self.counters.invalid_status();
            return;
        }
        state.status |= added;
        if next == VIRTIO_CONFIG_S_DRIVER_OK {
            self.activate(state);
        }
    }

    fn activate(&self, state: &mut State<D>) {
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

    fn read_config(&self, offset: u64, data: &mut [u8]) -> bool {
        let state = self.lock();
        match config_range(offset, data.len(), state.device.config_len()) {
            Some(start) => {
                state.device.read_config(start, data);
                true
            }
            None => false,
        }
    }

    fn write_config(&self, offset: u64, data: &[u8]) -> bool {
        let mut state = self.lock();
        match config_range(offset, data.len(), state.device.config_len()) {
            Some(start) => state.device.write_config(start, data),
            None => false,
        }
    }
}

impl<D: VirtioDevice> TransportSnapshot for VirtioMmioTransport<D> {
    fn quiesce(&self) {
        VirtioMmioTransport::quiesce(self);
    }

    fn save(&self) -> TransportState {
        self.state()
    }

    fn load(&self, saved: &TransportState) -> Result<(), TransportStateError> {
        self.restore(saved)
    }
}

/// The config-space offset of an access at window `offset`, if it is a
/// byte/word/dword access entirely inside a config space of `len` bytes.
fn config_range(offset: u64, width: usize, len: usize) -> Option<usize> {
    if !matches!(width, 1 | 2 | 4) {
        return None;
    }
    let start = usize::try_from(offset.checked_sub(CONFIG_START)?).ok()?;
    (start.checked_add(width)? <= len).then_some(start)
}

/// VERSION_1 accepted (we have no legacy interface) and nothing the device
/// did not offer.
fn features_acceptable<D: VirtioDevice>(state: &State<D>) -> bool {
    let acked = state.driver_features;
    acked & (1 << VIRTIO_F_VERSION_1) != 0 && acked & !state.device.features() == 0
}

/// Feature bits may only be written between DRIVER and FEATURES_OK.
fn write_driver_features<D>(state: &mut State<D>, value: u32) -> bool {
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

/// Queue configuration: only before DRIVER_OK (the device then owns the
/// rings), and only values virtio-queue accepts (power-of-two sizes,
/// aligned rings). Before FEATURES_OK is allowed: Linux clears QueueReady
/// after a reset when it tears a device down.
fn write_queue<D>(state: &mut State<D>, offset: u32, value: u32) -> bool {
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
    match offset {
        VIRTIO_MMIO_QUEUE_NUM => u16::try_from(value)
            .ok()
            .is_some_and(|size| queue.try_set_size(size).is_ok()),
        VIRTIO_MMIO_QUEUE_READY if value <= 1 => {
            queue.set_ready(value == 1);
            true
        }
        VIRTIO_MMIO_QUEUE_DESC_LOW | VIRTIO_MMIO_QUEUE_DESC_HIGH => {
            let a = addr(queue.desc_table(), offset == VIRTIO_MMIO_QUEUE_DESC_HIGH);
            queue.try_set_desc_table_address(guest(a)).is_ok()
        }
        VIRTIO_MMIO_QUEUE_AVAIL_LOW | VIRTIO_MMIO_QUEUE_AVAIL_HIGH => {
            let a = addr(queue.avail_ring(), offset == VIRTIO_MMIO_QUEUE_AVAIL_HIGH);
            queue.try_set_avail_ring_address(guest(a)).is_ok()
        }
        VIRTIO_MMIO_QUEUE_USED_LOW | VIRTIO_MMIO_QUEUE_USED_HIGH => {
            let a = addr(queue.used_ring(), offset == VIRTIO_MMIO_QUEUE_USED_HIGH);
            queue.try_set_used_ring_address(guest(a)).is_ok()
        }
        _ => false,
    }
}

impl<D: VirtioDevice> BusDevice for VirtioMmioTransport<D> {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let ok = if offset >= CONFIG_START {
            self.read_config(offset, data)
        } else if data.len() == 4 && offset.is_multiple_of(4) {
            match self.read_register(offset as u32) {
                Some(value) => {
                    data.copy_from_slice(&value.to_le_bytes());
                    true
                }
                None => false,
            }
        } else {
            false
        };
        if !ok {
            data.fill(0);
            self.counters.invalid_access();
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let ok = if offset >= CONFIG_START {
            self.write_config(offset, data)
        } else if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset as u32, u32::from_le_bytes(bytes))
        } else {
            false
        };
        if !ok {
            self.counters.invalid_access();
        }
    }
}
