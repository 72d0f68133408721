//! The token bucket's rules, on a clock driven by hand.

use std::time::{Duration, Instant};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bytes(size: u64, one_time_burst: u64, refill_time_ms: u64) -> LimiterConfig {
    LimiterConfig {
        bandwidth: Some(BucketConfig {
            size,
            one_time_burst,
            refill_time_ms,
        }),
        ops: None,
    }
}

fn ops(size: u64, refill_time_ms: u64) -> LimiterConfig {
    LimiterConfig {
        bandwidth: None,
        ops: Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }),
    }
}

#[test]
fn a_bucket_starts_full_and_refills_at_its_rate() {
    let t0 = Instant::now();
    let mut b = Buckets::new(&bytes(1000, 0, 1000), t0);
    assert_eq!(b.admit(1, 600, t0), Admission::Now);
    assert_eq!(b.admit(1, 400, t0), Admission::Now);
    // Empty: 250 bytes take 250 ms at 1000 bytes/s.
    assert_eq!(b.admit(1, 250, t0), Admission::After(ms(250)));
    assert_eq!(b.admit(1, 250, t0 + ms(100)), Admission::After(ms(150)));
    assert_eq!(b.admit(1, 250, t0 + ms(250)), Admission::Now);
    // Never beyond its size, however long it rested.
    let later = t0 + Duration::from_secs(60);
    assert_eq!(b.bandwidth().unwrap().budget_at(later), 1000);
    assert_eq!(b.admit(1, 1000, later), Admission::Now);
    assert_eq!(b.admit(1, 1, later), Admission::After(ms(1)));
}

#[test]
fn fractions_of_a_token_are_not_lost_between_refills() {
    let t0 = Instant::now();
    // One token every 3 ms; empty it first.
    let mut b = Buckets::new(&ops(10, 30), t0);
    for _ in 0..10 {
        assert_eq!(b.admit(1, 0, t0), Admission::Now);
    }
    let mut admitted = 0;
    // Asking every 2 ms for 300 ms: a bucket that dropped the leftover
    // 1 ms of each refill would let only one request in every 4 ms.
    for step in 1..=150 {
        if b.admit(1, 0, t0 + ms(2 * step)) == Admission::Now {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 100);
}

#[test]
fn the_one_time_burst_is_spent_first_and_never_refills() {
    let t0 = Instant::now();
    let mut b = Buckets::new(&bytes(100, 500, 1000), t0);
    // 500 from the burst, 100 from the budget.
    assert_eq!(b.admit(1, 450, t0), Admission::Now);
    assert_eq!(b.admit(1, 150, t0), Admission::Now);
    assert_eq!(b.bandwidth().unwrap().burst(), 0);
    assert_eq!(b.admit(1, 1, t0), Admission::After(ms(10)));
    // A second later the budget is back, the burst is not.
    let later = t0 + Duration::from_secs(1);
    assert_eq!(b.admit(1, 100, later), Admission::Now);
    assert_eq!(b.admit(1, 1, later), Admission::After(ms(10)));
}

#[test]
fn an_oversized_request_goes_through_and_blocks_for_its_excess() {
    let t0 = Instant::now();
    let mut b = Buckets::new(&bytes(1000, 0, 1000), t0);
    assert_eq!(b.admit(1, 500, t0), Admission::Now);
    // 3000 bytes never fit a 1000-byte bucket: they go at once, take the
    // 500 left and block for the 2500 beyond (2.5 s at 1000 bytes/s).
    assert_eq!(b.admit(1, 3000, t0), Admission::Now);
    assert_eq!(b.admit(1, 1, t0), Admission::After(ms(2500)));
    assert_eq!(b.admit(1, 1, t0 + ms(2000)), Admission::After(ms(500)));
    // The block paid for the excess: the bucket is empty when it ends
    // (3500 bytes in 2.5 s would exceed 1000 bytes/s) and refills after.
    assert_eq!(b.admit(1, 1, t0 + ms(2500)), Admission::After(ms(1)));
    assert_eq!(b.admit(1, 1000, t0 + ms(3500)), Admission::Now);
}

#[test]
fn a_request_waits_for_both_buckets_and_pays_both_or_neither() {
    let t0 = Instant::now();
    let config = LimiterConfig {
        bandwidth: Some(BucketConfig {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
        ops: Some(BucketConfig {
            size: 10,
            one_time_burst: 0,
            refill_time_ms: 1000,
        }),
    };
    let mut b = Buckets::new(&config, t0);
    assert_eq!(b.admit(1, 1000, t0), Admission::Now);
    // Bytes are short: the operation is not spent either.
    assert_eq!(b.admit(1, 500, t0), Admission::After(ms(500)));
    assert_eq!(b.ops().unwrap().budget_at(t0), 9);
    for _ in 0..9 {
        assert_eq!(b.admit(1, 0, t0), Admission::Now);
    }
    // Operations short (100 ms each), bytes short too: the longer wait.
    assert_eq!(b.admit(1, 200, t0), Admission::After(ms(200)));
    assert_eq!(b.admit(1, 50, t0), Admission::After(ms(100)));
}

#[test]
fn a_zero_size_or_zero_refill_time_means_no_limit() {
    let t0 = Instant::now();
    for config in [
        bytes(0, 0, 1000),
        bytes(1000, 0, 0),
        LimiterConfig::default(),
    ] {
        assert!(!config.limits());
        let mut b = Buckets::new(&config, t0);
        assert!(!b.limits());
        for _ in 0..1000 {
            assert_eq!(b.admit(1, u64::MAX, t0), Admission::Now);
        }
    }
}

#[test]
fn an_update_keeps_what_is_left_and_only_touches_named_buckets() {
    let t0 = Instant::now();
    let mut b = Buckets::new(&bytes(1000, 0, 1000), t0);
    assert_eq!(b.admit(1, 800, t0), Admission::Now);
    // A bigger bucket: the 200 left carry over, it does not start full.
    b.update(&bytes(2000, 0, 1000), t0);
    assert_eq!(b.bandwidth().unwrap().budget_at(t0), 200);
    // Adding an ops bucket leaves the bandwidth one as it is.
    b.update(&ops(1, 1000), t0);
    assert_eq!(b.bandwidth().unwrap().budget_at(t0), 200);
    assert_eq!(b.admit(1, 100, t0), Admission::Now);
    assert_eq!(b.admit(1, 0, t0), Admission::After(ms(1000)));
    // A zero-size bucket removes that limit.
    b.update(&ops(0, 0), t0);
    assert!(b.ops().is_none());
    assert_eq!(b.admit(1, 100, t0), Admission::Now);
}

#[test]
fn an_update_lifts_a_block_left_by_an_oversized_request() {
    let t0 = Instant::now();
    let mut b = Buckets::new(&bytes(100, 0, 1000), t0);
    assert_eq!(b.admit(1, 10_000, t0), Admission::Now);
    assert!(matches!(b.admit(1, 1, t0), Admission::After(_)));
    b.update(&bytes(0, 0, 0), t0);
    assert_eq!(b.admit(1, 1, t0), Admission::Now);
}

#[test]
fn absurd_settings_neither_overflow_nor_panic() {
    let t0 = Instant::now();
    let huge = BucketConfig {
        size: u64::MAX,
        one_time_burst: u64::MAX,
        refill_time_ms: u64::MAX,
    };
    let config = LimiterConfig {
        bandwidth: Some(huge),
        ops: Some(BucketConfig {
            size: 1,
            one_time_burst: 0,
            refill_time_ms: u64::MAX,
        }),
    };
    let mut b = Buckets::new(&config, t0);
    assert_eq!(b.admit(1, u64::MAX, t0), Admission::Now);
    // One operation per 584 million years: the next one waits as long as a
    // Duration of u64::MAX nanoseconds (584 years) says.
    let Admission::After(wait) = b.admit(1, 1, t0 + Duration::from_secs(3600)) else {
        panic!("the second operation went through");
    };
    assert_eq!(wait, Duration::from_nanos(u64::MAX));
    // An oversized request whose excess would take longer than u128
    // nanoseconds can count to refill.
    let tiny = BucketConfig {
        size: 1,
        one_time_burst: 0,
        refill_time_ms: u64::MAX,
    };
    let mut b = Buckets::new(
        &LimiterConfig {
            bandwidth: Some(tiny),
            ops: None,
        },
        t0,
    );
    assert_eq!(b.admit(1, u64::MAX, t0), Admission::Now);
    assert!(matches!(b.admit(1, 1, t0), Admission::After(_)));
}
