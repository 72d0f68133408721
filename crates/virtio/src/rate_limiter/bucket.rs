//! Token buckets with Firecracker's semantics, as a pure state machine:
//! every call takes the current time, so tests drive a clock by hand.
//!
//! A bucket holds up to `size` tokens (bytes or operations) and starts
//! full; it refills continuously, `size` tokens per `refill_time_ms`. A
//! `one_time_burst` is spent before the budget and never refills. A size
//! or refill time of 0 means no limit (no bucket at all).
//!
//! A request that needs more tokens than are left waits until the refill
//! covers them. A request larger than the bucket could ever hold would
//! wait forever, so, as Firecracker does, it goes through at once (whatever
//! the bucket holds), empties the bucket, and blocks the [`Buckets`] for as
//! long as refilling the excess takes. Unlike Firecracker, whose bucket
//! also refills during that block (so each oversized request gets up to a
//! bucket more than the rate allows), the refill starts when the block
//! ends: the average rate holds whatever the request sizes.
//!
//! ```
//! # use std::time::{Duration, Instant};
//! use sie_virtio::rate_limiter::{Admission, BucketConfig, Buckets, LimiterConfig};
//!
//! let start = Instant::now();
//! // 1000 bytes per second.
//! let config = LimiterConfig {
//!     bandwidth: Some(BucketConfig { size: 1000, one_time_burst: 0, refill_time_ms: 1000 }),
//!     ops: None,
//! };
//! let mut buckets = Buckets::new(&config, start);
//! assert_eq!(buckets.admit(1, 1000, start), Admission::Now);
//! assert_eq!(buckets.admit(1, 100, start), Admission::After(Duration::from_millis(100)));
//! assert_eq!(buckets.admit(1, 100, start + Duration::from_millis(100)), Admission::Now);
//! ```

use std::time::{Duration, Instant};

const NANOS_PER_MILLI: u128 = 1_000_000;

/// One bucket's settings (Firecracker's `TokenBucket`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BucketConfig {
    /// Tokens the bucket holds when full (bytes or operations); 0: no limit.
    pub size: u64,
    /// Extra tokens spent first, once; they never refill.
    pub one_time_burst: u64,
    /// Milliseconds to refill an empty bucket to `size`; 0: no limit.
    pub refill_time_ms: u64,
}

impl BucketConfig {
    /// Whether this bucket limits anything.
    pub fn limits(&self) -> bool {
        self.size != 0 && self.refill_time_ms != 0
    }
}

/// A rate limiter's settings (Firecracker's `RateLimiter`). Building a
/// limiter, an absent bucket means no limit; updating one, it means "leave
/// that bucket as it is" (a bucket of size 0 removes a limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterConfig {
    /// Tokens are bytes.
    pub bandwidth: Option<BucketConfig>,
    /// Tokens are operations (requests, frames).
    pub ops: Option<BucketConfig>,
}

impl LimiterConfig {
    /// Whether either bucket limits anything.
    pub fn limits(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(BucketConfig::limits)
    }
}

/// Whether a request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; the tokens are spent.
    Now,
    /// Nothing was spent; ask again after this long.
    After(Duration),
}

/// One token bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    /// The configured one-time burst, the most `burst` may hold.
    initial_burst: u64,
    /// What is left of the one-time burst.
    burst: u64,
    /// Tokens in the bucket, at most `size`.
    budget: u64,
    /// The refill has been accounted up to here; the time since is a
    /// fraction of a token, kept for the next refill.
    refilled_at: Instant,
}

impl TokenBucket {
    /// A full bucket, or `None` if `config` limits nothing.
    pub fn new(config: &BucketConfig, now: Instant) -> Option<Self> {
        config.limits().then_some(Self {
            size: config.size,
            refill_time_ms: config.refill_time_ms,
            initial_burst: config.one_time_burst,
            burst: config.one_time_burst,
            budget: config.size,
            refilled_at: now,
        })
    }

    /// New settings for a bucket in use: what is left of the budget and
    /// of the burst carries over, capped at the new size and burst (what
    /// Firecracker documents for `PATCH`). `None` if `config` limits nothing.
    pub fn reconfigure(&self, config: &BucketConfig, now: Instant) -> Option<Self> {
        let mut next = Self::new(config, now)?;
        next.budget = next.budget.min(self.budget_at(now));
        next.burst = next.burst.min(self.burst);
        Some(next)
    }

    /// Tokens in the bucket (one-time burst apart) at `now`.
    pub fn budget_at(&self, now: Instant) -> u64 {
        let mut copy = self.clone();
        copy.refill(now);
        copy.budget
    }

    /// What is left of the one-time burst.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Nanoseconds to refill `tokens`, rounded up (saturating: the
    /// settings come from the user and may be absurd).
    fn refill_nanos(&self, tokens: u64) -> u128 {
        let total =
            (u128::from(tokens) * u128::from(self.refill_time_ms)).saturating_mul(NANOS_PER_MILLI);
        total.div_ceil(u128::from(self.size))
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_nanos();
        let full = u128::from(self.refill_time_ms) * NANOS_PER_MILLI;
        if elapsed >= full {
            self.budget = self.size;
            self.refilled_at = now;
            return;
        }
        // elapsed < full, so this is less than `size` and fits a u64.
        let tokens = (elapsed.saturating_mul(u128::from(self.size)) / full) as u64;
        if tokens == 0 {
            return;
        }
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            // A full bucket keeps no fraction of a token.
            self.refilled_at = now;
        } else {
            // Advance only by the time those whole tokens took, so the
            // fraction of the next one is not lost.
            let used = self.refill_nanos(tokens).min(elapsed);
            self.refilled_at += Duration::from_nanos(used as u64);
        }
    }

    /// How long until `tokens` can be taken, or `None` if they can now.
    fn shortfall(&mut self, tokens: u64, now: Instant) -> Option<Duration> {
        self.refill(now);
        let from_budget = tokens.saturating_sub(self.burst);
        if from_budget <= self.budget || from_budget > self.size {
            return None;
        }
        let missing = from_budget - self.budget;
        let since = now.saturating_duration_since(self.refilled_at).as_nanos();
        let wait = self.refill_nanos(missing).saturating_sub(since).max(1);
        Some(Duration::from_nanos(
            u64::try_from(wait).unwrap_or(u64::MAX),
        ))
    }

    /// Takes `tokens` (after [`Self::shortfall`] said yes); returns how long
    /// the limiter must then block: zero, or the refill time of what a
    /// request larger than the bucket took beyond the budget.
    fn take(&mut self, tokens: u64) -> Duration {
        let from_burst = tokens.min(self.burst);
        self.burst -= from_burst;
        let rest = tokens - from_burst;
        if rest <= self.budget {
            self.budget -= rest;
            return Duration::ZERO;
        }
        let excess = rest - self.budget;
        self.budget = 0;
        let nanos = self.refill_nanos(excess);
        let block = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        // The block is the refill of the excess, so the bucket refills from
        // its end: refilling during it too would let through `size` more
        // per oversized request than the rate allows.
        self.refilled_at = self
            .refilled_at
            .checked_add(block)
            .unwrap_or(self.refilled_at);
        block
    }
}

/// The two buckets of one rate limiter (each optional) and whether an
/// oversized request has blocked them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    blocked_until: Option<Instant>,
}

impl Buckets {
    /// Full buckets for `config` (absent buckets limit nothing).
    pub fn new(config: &LimiterConfig, now: Instant) -> Self {
        let make = |bucket: &Option<BucketConfig>| {
            bucket
                .as_ref()
                .and_then(|config| TokenBucket::new(config, now))
        };
        Self {
            bandwidth: make(&config.bandwidth),
            ops: make(&config.ops),
            blocked_until: None,
        }
    }

    /// Applies `update`: each bucket it names is reconfigured (or removed
    /// if it limits nothing; a new one starts full), the others stay. A
    /// block left by an oversized request is lifted: the new limits apply
    /// from now.
    pub fn update(&mut self, update: &LimiterConfig, now: Instant) {
        let apply = |slot: &mut Option<TokenBucket>, config: &Option<BucketConfig>| {
            let Some(config) = config else { return };
            *slot = match slot {
                Some(bucket) => bucket.reconfigure(config, now),
                None => TokenBucket::new(config, now),
            };
        };
        apply(&mut self.bandwidth, &update.bandwidth);
        apply(&mut self.ops, &update.ops);
        self.blocked_until = None;
    }

    /// Whether any bucket limits anything.
    pub fn limits(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// The bandwidth bucket, if bytes are limited.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The operations bucket, if operations are limited.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// A request of `ops` operations and `bytes` bytes at `now`: either
    /// both buckets pay for it, or neither does and the answer says how
    /// long until both could.
    pub fn admit(&mut self, ops: u64, bytes: u64, now: Instant) -> Admission {
        if let Some(until) = self.blocked_until {
            if now < until {
                return Admission::After(until - now);
            }
            self.blocked_until = None;
        }
        let wait = [(&mut self.ops, ops), (&mut self.bandwidth, bytes)]
            .into_iter()
            .filter_map(|(bucket, tokens)| bucket.as_mut()?.shortfall(tokens, now))
            .max();
        if let Some(wait) = wait {
            return Admission::After(wait);
        }
        let block = [(&mut self.ops, ops), (&mut self.bandwidth, bytes)]
            .into_iter()
            .filter_map(|(bucket, tokens)| Some(bucket.as_mut()?.take(tokens)))
            .max()
            .unwrap_or(Duration::ZERO);
        if !block.is_zero() {
            self.blocked_until = now.checked_add(block);
        }
        Admission::Now
    }
}

#[cfg(test)]
#[path = "bucket_tests.rs"]
mod tests;
