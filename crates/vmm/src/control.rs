//! The one place a VM's end is decided: the first outcome wins, every vCPU
//! is kicked out of the guest and the event loop is woken. Pausing goes
//! through here too: a pause is a flag every vCPU checks after each exit,
//! a kick so that each one exits promptly, and a condition variable the
//! vCPUs sleep on (no busy waiting) until resumed or stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use sie_devices::VmRequests;
use sie_hv::VcpuKicker;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::outcome::VmOutcome;

/// Shared by the vCPU threads, the devices and the event loop.
pub struct VmControl {
    outcome: Mutex<Option<VmOutcome>>,
    stopping: AtomicBool,
    /// Written once the VM is stopping, so the event loop wakes up.
    wake: EventFd,
    kickers: OnceLock<Vec<Arc<dyn VcpuKicker>>>,
    /// Set while a pause is requested; read by every vCPU after each exit.
    pause_requested: AtomicBool,
    /// How many vCPUs are parked, guarded for the condition variables.
    parked: Mutex<usize>,
    /// vCPUs wait here while paused.
    resumed: Condvar,
    /// The pausing thread waits here for every vCPU to park.
    all_parked: Condvar,
}

/// Why a pause did not complete.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// The VM is stopping; there is nothing to pause.
    #[error("the VM is stopping")]
    Stopping,
    /// Some vCPUs did not leave the guest in time.
    #[error("{parked} of {total} vCPUs paused within {waited_ms} ms")]
    Timeout {
        /// vCPUs that did park.
        parked: usize,
        /// All vCPUs.
        total: usize,
        /// How long the pause waited.
        waited_ms: u64,
    },
}

impl VmControl {
    /// A control for a VM that is running.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            outcome: Mutex::new(None),
            stopping: AtomicBool::new(false),
            wake: EventFd::new(EFD_NONBLOCK)?,
            kickers: OnceLock::new(),
            pause_requested: AtomicBool::new(false),
            parked: Mutex::new(0),
            resumed: Condvar::new(),
            all_parked: Condvar::new(),
        })
    }

    fn kick_all(&self) {
        for kicker in self.kickers.get().into_iter().flatten() {
            kicker.kick();
        }
    }

    fn parked_count(&self) -> std::sync::MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops every vCPU and returns once all of them have left the guest
    /// (or after `timeout`). Pausing a paused VM succeeds at once.
    pub fn pause(&self, timeout: Duration) -> Result<(), PauseError> {
        if self.is_stopping() {
            return Err(PauseError::Stopping);
        }
        let total = self.kickers.get().map_or(0, Vec::len);
        let deadline = Instant::now() + timeout;
        let mut parked = self.parked_count();
        self.pause_requested.store(true, Ordering::Release);
        self.kick_all();
        while *parked < total && !self.is_stopping() {
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout {
                    parked: *parked,
                    total,
                    waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                });
            }
            parked = self
                .all_parked
                .wait_timeout(parked, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if self.is_stopping() {
            return Err(PauseError::Stopping);
        }
        Ok(())
    }

    /// Lets paused vCPUs run again; resuming a running VM does nothing.
    pub fn resume(&self) {
        let _parked = self.parked_count();
        self.pause_requested.store(false, Ordering::Release);
        self.resumed.notify_all();
    }

    /// True while a pause is requested (from `pause` until `resume`).
    #[inline]
    pub fn is_paused(&self) -> bool {
        self.pause_requested.load(Ordering::Acquire)
    }

    /// Called by a vCPU thread between exits: sleeps while the VM is paused.
    /// Returns at once when no pause is requested.
    pub fn park_while_paused(&self) {
        if !self.is_paused() {
            return;
        }
        let mut parked = self.parked_count();
        *parked += 1;
        self.all_parked.notify_all();
        while self.is_paused() && !self.is_stopping() {
            parked = self.resumed.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
    }

    /// Records the vCPUs' kickers, once they exist.
    pub fn set_kickers(&self, kickers: Vec<Arc<dyn VcpuKicker>>) {
        // A second call would be a builder bug; the first set stays.
        let _ = self.kickers.set(kickers);
    }

    /// Ends the VM with `outcome` unless an outcome was already recorded.
    pub fn finish(&self, outcome: VmOutcome) {
        {
            let mut slot = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if slot.is_none() {
                *slot = Some(outcome);
            }
        }
        self.stopping.store(true, Ordering::Release);
        self.kick_all();
        {
            // Wake parked vCPUs and a waiting pause under the lock they
            // check `stopping` under, so neither misses it.
            let _parked = self.parked_count();
            self.resumed.notify_all();
            self.all_parked.notify_all();
        }
        // A full eventfd counter still wakes the loop; nothing to handle.
        let _ = self.wake.write(1);
    }

    /// True once any outcome was recorded.
    #[inline]
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The eventfd the event loop waits on.
    pub fn wake_fd(&self) -> &EventFd {
        &self.wake
    }

    /// The recorded outcome, if any.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl VmRequests for VmControl {
    fn request_reset(&self) {
        self.finish(VmOutcome::Reset);
    }

    fn report_panic(&self) {
        self.finish(VmOutcome::GuestPanic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingKicker(AtomicUsize);

    impl VcpuKicker for CountingKicker {
        fn kick(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn first_outcome_wins_and_everyone_is_told() {
        let control = VmControl::new().unwrap();
        let kicker = Arc::new(CountingKicker(AtomicUsize::new(0)));
        control.set_kickers(vec![kicker.clone(), kicker.clone()]);
        assert!(!control.is_stopping());
        control.report_panic();
        control.request_reset();
        assert!(control.is_stopping());
        assert_eq!(control.outcome(), Some(VmOutcome::GuestPanic));
        assert_eq!(kicker.0.load(Ordering::Relaxed), 4);
        assert_eq!(control.wake_fd().read().unwrap(), 2);
    }

    fn control_with_vcpus(count: usize) -> (Arc<VmControl>, Arc<CountingKicker>) {
        let control = Arc::new(VmControl::new().unwrap());
        let kicker = Arc::new(CountingKicker(AtomicUsize::new(0)));
        let kickers: Vec<Arc<dyn VcpuKicker>> = (0..count)
            .map(|_| kicker.clone() as Arc<dyn VcpuKicker>)
            .collect();
        control.set_kickers(kickers);
        (control, kicker)
    }

    /// Stands in for a vCPU thread: parks between "exits" until stopped.
    fn fake_vcpu(control: Arc<VmControl>, ran: Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            while !control.is_stopping() {
                control.park_while_paused();
                ran.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    }

    #[test]
    fn pause_waits_for_every_vcpu_and_resume_releases_them() {
        let (control, kicker) = control_with_vcpus(2);
        let ran = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| fake_vcpu(control.clone(), ran.clone()))
            .collect();
        control.pause(Duration::from_secs(5)).unwrap();
        assert!(control.is_paused());
        assert_eq!(*control.parked_count(), 2);
        assert_eq!(kicker.0.load(Ordering::Relaxed), 2, "each vCPU kicked once");
        let before = ran.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            ran.load(Ordering::Relaxed),
            before,
            "no progress while paused"
        );
        // Pausing again is harmless.
        control.pause(Duration::from_secs(5)).unwrap();
        control.resume();
        control.resume();
        let resumed_at = ran.load(Ordering::Relaxed);
        while ran.load(Ordering::Relaxed) < resumed_at + 4 {
            std::thread::yield_now();
        }
        control.request_reset();
        threads.into_iter().for_each(|t| t.join().unwrap());
    }

    #[test]
    fn stopping_releases_parked_vcpus() {
        let (control, _) = control_with_vcpus(1);
        let ran = Arc::new(AtomicUsize::new(0));
        let thread = fake_vcpu(control.clone(), ran);
        control.pause(Duration::from_secs(5)).unwrap();
        control.request_reset();
        thread.join().unwrap();
        assert_eq!(
            control.pause(Duration::from_secs(1)),
            Err(PauseError::Stopping)
        );
    }

    #[test]
    fn a_vcpu_that_never_parks_times_the_pause_out() {
        let (control, _) = control_with_vcpus(1);
        let error = control.pause(Duration::from_millis(20)).unwrap_err();
        assert!(matches!(
            error,
            PauseError::Timeout {
                parked: 0,
                total: 1,
                ..
            }
        ));
    }
}
