//! Recording doubles of the traits the VMM implements (feature
//! `test-util`): [`RecordingMsi`] for [`MsiInterrupts`] and
//! [`RecordingBarMapper`] for [`BarMapper`], so devices are tested without
//! KVM.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{AddressSpace, BarMapper};
use crate::msix::{MsiInterrupts, MsiMessage};

/// Calls a double saw, in order.
struct CallLog<T>(Mutex<Vec<T>>);

impl<T> Default for CallLog<T> {
    fn default() -> Self {
        Self(Mutex::new(Vec::new()))
    }
}

impl<T> CallLog<T> {
    fn push(&self, call: T) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    fn take(&self) -> Vec<T> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// One call an [`RecordingMsi`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsiCall {
    /// [`MsiInterrupts::configure`].
    Configure(u16, Option<MsiMessage>),
    /// [`MsiInterrupts::trigger`].
    Trigger(u16),
}

/// An [`MsiInterrupts`] that records its calls and can be told to fail.
pub struct RecordingMsi {
    notifiers: Vec<EventFd>,
    calls: CallLog<MsiCall>,
    failing: AtomicBool,
}

impl RecordingMsi {
    /// `vectors` vectors, each with an eventfd notifier.
    pub fn new(vectors: u16) -> Self {
        Self {
            notifiers: (0..vectors)
                .filter_map(|_| EventFd::new(EFD_NONBLOCK).ok())
                .collect(),
            calls: CallLog::default(),
            failing: AtomicBool::new(false),
        }
    }

    /// Makes every later call fail (`true`) or succeed.
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::Relaxed);
    }

    /// The calls so far, oldest first, and forgets them.
    pub fn take_calls(&self) -> Vec<MsiCall> {
        self.calls.take()
    }

    /// How many times `vector` was triggered (without forgetting calls).
    pub fn triggers(&self, vector: u16) -> usize {
        let calls = self.calls.0.lock().unwrap_or_else(PoisonError::into_inner);
        calls
            .iter()
            .filter(|c| **c == MsiCall::Trigger(vector))
            .count()
    }

    fn record(&self, call: MsiCall) -> io::Result<()> {
        self.calls.push(call);
        if self.failing.load(Ordering::Relaxed) {
            return Err(io::Error::other("recording double told to fail"));
        }
        Ok(())
    }
}

impl MsiInterrupts for RecordingMsi {
    fn vector_count(&self) -> u16 {
        self.notifiers.len() as u16
    }

    fn configure(&self, vector: u16, message: Option<MsiMessage>) -> io::Result<()> {
        self.record(MsiCall::Configure(vector, message))
    }

    fn trigger(&self, vector: u16) -> io::Result<()> {
        self.record(MsiCall::Trigger(vector))
    }

    fn notifier(&self, vector: u16) -> Option<&EventFd> {
        self.notifiers.get(usize::from(vector))
    }

    /// Like an outlet that detaches unrouted notifiers: a signal waits in
    /// the eventfd (this double attaches none).
    fn take_unrouted_signal(&self, vector: u16) -> bool {
        self.notifier(vector).is_some_and(|fd| fd.read().is_ok())
    }
}

/// An ioeventfd as a [`RecordingBarMapper`] saw it (by descriptor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoEvent {
    /// The eventfd's descriptor.
    pub fd: RawFd,
    /// Address space.
    pub space: AddressSpace,
    /// Guest address.
    pub addr: u64,
    /// Access length (0: any).
    pub len: u32,
}

/// One call a [`RecordingBarMapper`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapperCall {
    /// [`BarMapper::register_ioevent`].
    Register(IoEvent),
    /// [`BarMapper::unregister_ioevent`].
    Unregister(IoEvent),
}

/// A [`BarMapper`] that records ioeventfd calls.
#[derive(Default)]
pub struct RecordingBarMapper {
    calls: CallLog<MapperCall>,
}

impl RecordingBarMapper {
    /// The calls so far, oldest first, and forgets them.
    pub fn take_calls(&self) -> Vec<MapperCall> {
        self.calls.take()
    }

    fn record(&self, call: MapperCall) -> io::Result<()> {
        self.calls.push(call);
        Ok(())
    }
}

impl IoEvent {
    fn of(fd: &EventFd, space: AddressSpace, addr: u64, len: u32) -> Self {
        let fd = fd.as_raw_fd();
        Self {
            fd,
            space,
            addr,
            len,
        }
    }
}

impl BarMapper for RecordingBarMapper {
    fn register_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        len: u32,
    ) -> io::Result<()> {
        self.record(MapperCall::Register(IoEvent::of(fd, space, addr, len)))
    }

    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        len: u32,
    ) -> io::Result<()> {
        self.record(MapperCall::Unregister(IoEvent::of(fd, space, addr, len)))
    }
}
