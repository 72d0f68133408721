//! Rate limiters for virtio queues (Firecracker's `rate_limiter` settings
//! on drives, network interfaces and the entropy device).
//!
//! [`Buckets`] decides, from two token buckets and the time, whether a
//! request may go. A [`RateLimiter`] adds what a device needs on the event
//! thread: a clock and a timerfd. A device asks [`RateLimiter::admit`]
//! before each request; a `false` means the queue stops (the request stays
//! on the ring) and the timer is armed for when the buckets will have
//! refilled. The device returns the timer from
//! [`crate::VirtioDevice::timer_fds`], the worker watches it, and when it
//! fires the transport calls [`crate::VirtioDevice::timer_fired`], which
//! calls [`RateLimiter::timer_fired`] and names the queue to serve again.
//! Nothing spins: a throttled queue sleeps in the kernel until its timer.
//!
//! The timerfd exists from the start even when nothing is limited, because
//! the worker registers a device's timers once and `PATCH` may add a limit
//! to a running device later.
//!
//! ```
//! use sie_virtio::rate_limiter::{BucketConfig, LimiterConfig, RateLimiter};
//! use sie_virtio::VirtioCounters;
//!
//! let counters = VirtioCounters::default();
//! // Two operations per second, none spent yet.
//! let ops = BucketConfig { size: 2, one_time_burst: 0, refill_time_ms: 1000 };
//! let mut limiter = RateLimiter::new(&LimiterConfig { bandwidth: None, ops: Some(ops) })?;
//! assert!(limiter.admit(1, 4096, &counters));
//! assert!(limiter.admit(1, 4096, &counters));
//! assert!(!limiter.admit(1, 4096, &counters)); // timer armed for ~500 ms
//! assert!(limiter.is_throttled());
//! assert_eq!(counters.snapshot().throttled, 1);
//! # Ok::<(), std::io::Error>(())
//! ```

mod bucket;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

pub use bucket::{Admission, BucketConfig, Buckets, LimiterConfig, TokenBucket};

use crate::counters::VirtioCounters;

/// Where a [`RateLimiter`] reads the time: the monotonic clock in a VMM
/// (the one timerfds count on), a hand-driven one in tests.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Instant;
}

/// `Instant::now()`, i.e. CLOCK_MONOTONIC.
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Why a limiter could not take new settings.
#[derive(Debug, thiserror::Error)]
pub enum RateLimiterError {
    /// The device was built without a timer, so it can never limit.
    #[error("this device takes no rate limiter after it is built")]
    NoTimer,
}

/// A device's rate limiter: [`Buckets`], a clock, and the timer that wakes
/// a throttled queue.
pub struct RateLimiter {
    buckets: Buckets,
    timer: Option<TimerFd>,
    /// The timer is armed: every request waits for it.
    armed: bool,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("buckets", &self.buckets)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::unlimited()
    }
}

/// A non-blocking timerfd on CLOCK_MONOTONIC: the event thread reads it
/// only after it fired, but a spurious wakeup must not block.
pub(crate) fn nonblocking_timer() -> io::Result<TimerFd> {
    let timer = TimerFd::new()?;
    let fd = timer.as_raw_fd();
    // SAFETY: `fd` is the timerfd just created and owned by `timer`;
    // F_GETFL/F_SETFL only read and set its status flags.
    let set = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !set {
        return Err(io::Error::last_os_error());
    }
    Ok(timer)
}

impl RateLimiter {
    /// A limiter that never limits and has no timer (a device whose
    /// limits cannot change at run time).
    pub fn unlimited() -> Self {
        Self {
            buckets: Buckets::default(),
            timer: None,
            armed: false,
            clock: Arc::new(MonotonicClock),
        }
    }

    /// A limiter for `config` (absent buckets: no limit), with its timer.
    pub fn new(config: &LimiterConfig) -> io::Result<Self> {
        Self::with_clock(config, Arc::new(MonotonicClock))
    }

    /// [`Self::new`] reading the time from `clock`.
    pub fn with_clock(config: &LimiterConfig, clock: Arc<dyn Clock>) -> io::Result<Self> {
        Ok(Self {
            buckets: Buckets::new(config, clock.now()),
            timer: Some(nonblocking_timer()?),
            armed: false,
            clock,
        })
    }

    /// Applies `update` (see [`Buckets::update`]). A throttled queue is
    /// released: the caller serves it again, under the new limits.
    pub fn update(&mut self, update: &LimiterConfig) -> Result<(), RateLimiterError> {
        let Some(timer) = self.timer.as_mut() else {
            if update.limits() {
                return Err(RateLimiterError::NoTimer);
            }
            return Ok(());
        };
        self.buckets.update(update, self.clock.now());
        if self.armed {
            if let Err(error) = timer.clear() {
                // It fires later and finds nothing to do: harmless.
                tracing::debug!(%error, "cannot disarm a rate limiter timer");
            }
            self.armed = false;
        }
        Ok(())
    }

    /// The buckets as they are now.
    pub fn buckets(&self) -> &Buckets {
        &self.buckets
    }

    /// The timer to watch, if the limiter has one.
    pub fn timer_fd(&self) -> Option<RawFd> {
        self.timer.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Whether requests are held until the timer fires.
    pub fn is_throttled(&self) -> bool {
        self.armed
    }

    /// May a request of `ops` operations and `bytes` bytes go now? If so
    /// its tokens are spent. If not, the timer is armed for when it could
    /// and the throttling is counted in `counters`; until the timer fires
    /// every request is refused (so a guest's notifications cost nothing).
    pub fn admit(&mut self, ops: u64, bytes: u64, counters: &VirtioCounters) -> bool {
        if self.armed {
            return false;
        }
        let wait = match self.buckets.admit(ops, bytes, self.clock.now()) {
            Admission::Now => return true,
            Admission::After(wait) => wait,
        };
        let Some(timer) = self.timer.as_mut() else {
            return true;
        };
        // A zero duration would disarm the timer instead.
        match timer.reset(wait.max(Duration::from_micros(1)), None) {
            Ok(()) => {
                self.armed = true;
                counters.throttled();
                false
            }
            Err(error) => {
                // Never stall the queue for good: let the request go.
                counters.error();
                tracing::warn!(%error, "cannot arm a rate limiter timer");
                true
            }
        }
    }

    /// The timer fired (or the event loop says so): consume the expiry
    /// and let requests be asked for again.
    pub fn timer_fired(&mut self) {
        if let Some(timer) = self.timer.as_mut() {
            // EAGAIN: nothing pending (a spurious wakeup, or a test).
            let _ = timer.wait();
        }
        self.armed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_limiter_arms_its_timer_and_resumes_when_it_fires() {
        let counters = VirtioCounters::default();
        let ops = BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: 20,
        };
        let config = LimiterConfig {
            bandwidth: None,
            ops: Some(ops),
        };
        let mut limiter = RateLimiter::new(&config).unwrap();
        assert!(limiter.admit(1, 0, &counters));
        assert!(!limiter.admit(1, 0, &counters));
        // Refused again without re-arming or counting again.
        assert!(!limiter.admit(1, 0, &counters));
        assert_eq!(counters.snapshot().throttled, 1);
        let fd = limiter.timer_fd().unwrap();
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 2000) };
        assert_eq!(ready, 1, "the timer fires within the refill time");
        limiter.timer_fired();
        assert!(!limiter.is_throttled());
        assert!(limiter.admit(1, 0, &counters));
        // Consumed: a spurious call does not block.
        limiter.timer_fired();
    }

    #[test]
    fn an_update_releases_a_throttled_limiter_and_a_timerless_one_refuses_limits() {
        let counters = VirtioCounters::default();
        let slow = LimiterConfig {
            bandwidth: Some(BucketConfig {
                size: 10,
                one_time_burst: 0,
                refill_time_ms: 100_000,
            }),
            ops: None,
        };
        let mut limiter = RateLimiter::new(&slow).unwrap();
        assert!(limiter.admit(1, 10, &counters));
        assert!(!limiter.admit(1, 10, &counters));
        let off = LimiterConfig {
            bandwidth: Some(BucketConfig::default()),
            ops: None,
        };
        limiter.update(&off).unwrap();
        assert!(!limiter.is_throttled());
        assert!(limiter.admit(1, 1 << 30, &counters));

        let mut fixed = RateLimiter::unlimited();
        assert!(fixed.timer_fd().is_none());
        assert!(fixed.update(&off).is_ok());
        assert!(matches!(
            fixed.update(&slow),
            Err(RateLimiterError::NoTimer)
        ));
    }
}
