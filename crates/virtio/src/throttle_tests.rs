//! Rate limiters in the devices: a throttled queue stops with its requests
//! still on the ring, waits for the limiter's timer, and resumes when it
//! fires; new limits at run time release it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN};
use vm_memory::{Bytes, GuestAddress};

use crate::block::{Block, BlockOptions};
use crate::net::test_rig::{Rig as NetRig, frame};
use crate::net::{RX_QUEUE, TX_QUEUE};
use crate::rate_limiter::{BucketConfig, Clock, LimiterConfig, RateLimiter};
use crate::rng::Rng;
use crate::testing::{CountingIrq, DATA, Driver, ManualClock, Ring, transport};
use crate::{GuestMemory, VirtioMmioTransport, VirtioWorker};

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

fn bandwidth(size: u64, refill_time_ms: u64) -> LimiterConfig {
    LimiterConfig {
        bandwidth: Some(BucketConfig {
            size,
            one_time_burst: 0,
            refill_time_ms,
        }),
        ops: None,
    }
}

fn limiter(config: LimiterConfig, clock: &Arc<ManualClock>) -> RateLimiter {
    let clock: Arc<dyn Clock> = clock.clone();
    RateLimiter::with_clock(&config, clock).expect("rate limiter")
}

fn disk() -> std::fs::File {
    crate::testing::disk_image(64 * 1024, true)
}

struct BlockRig {
    t: Arc<VirtioMmioTransport<Block>>,
    mem: GuestMemory,
    irq: Arc<CountingIrq>,
    ring: Ring,
}

impl BlockRig {
    fn new(limiter: RateLimiter) -> Self {
        let mut block = Block::new(disk(), "d", BlockOptions::default()).expect("block");
        block.set_rate_limiter(limiter);
        block
            .start_worker("test-blk".into(), Box::new(|| Ok(())))
            .expect("worker");
        let (t, mem, irq) = transport(block);
        let ring = Ring::new(0x1000, 32);
        Driver::new(&t).start(&[ring]);
        Self {
            t: Arc::new(t),
            mem,
            irq,
            ring,
        }
    }

    /// Offers `count` reads of `len` bytes (chains at heads 0, 3, 6, …)
    /// and notifies once.
    fn offer_reads(&self, count: u16, len: u32) {
        let mut heads = Vec::new();
        for i in 0..count {
            let base = DATA + u64::from(i) * 0x2_0000;
            let mut header = [0u8; 16];
            header[..4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
            self.mem
                .write_slice(&header, GuestAddress(base))
                .expect("header");
            let chain = [
                (base, 16, false),
                (base + 0x100, len, true),
                (base + 0x80, 1, true),
            ];
            self.ring.set_chain(&self.mem, 3 * i, &chain);
            heads.push(3 * i);
        }
        self.ring.publish(&self.mem, &heads);
        Driver::new(&self.t).notify(0);
    }

    /// Chains used once the engine has finished what it was given.
    fn used(&self) -> u16 {
        self.t.quiesce();
        self.ring.used_idx(&self.mem)
    }

    fn status(&self, i: u64) -> u8 {
        let at = GuestAddress(DATA + i * 0x2_0000 + 0x80);
        self.mem.read_obj(at).expect("status")
    }
}

#[test]
fn a_throttled_block_queue_defers_and_resumes_when_the_timer_fires() {
    let clock = Arc::new(ManualClock::default());
    // Two requests per second.
    let rig = BlockRig::new(limiter(ops(2, 1000), &clock));
    rig.offer_reads(3, 512);
    // Two go; the third stays on the ring and the queue waits.
    assert_eq!(rig.used(), 2);
    let c = rig.t.counters();
    assert_eq!((c.requests, c.throttled, c.bytes_read), (2, 1, 1024));
    assert_eq!(rig.irq.count(), 1);
    // The driver kicking again changes nothing while the timer runs.
    Driver::new(&rig.t).notify(0);
    assert_eq!(rig.used(), 2);
    assert_eq!(rig.t.counters().throttled, 1);
    // The timer fires once the bucket has refilled one request's worth.
    clock.advance(Duration::from_millis(500));
    rig.t.timer_event(0);
    assert_eq!(rig.used(), 3);
    assert_eq!(rig.status(2), VIRTIO_BLK_S_OK as u8);
    let c = rig.t.counters();
    assert_eq!((c.requests, c.throttled, c.bytes_read), (3, 1, 1536));
    assert_eq!(rig.irq.count(), 2);
}

#[test]
fn a_timer_that_fires_early_leaves_the_queue_waiting() {
    let clock = Arc::new(ManualClock::default());
    // 1024 bytes per second: a 1024-byte read empties it.
    let rig = BlockRig::new(limiter(bandwidth(1024, 1000), &clock));
    rig.offer_reads(2, 1024);
    assert_eq!(rig.used(), 1);
    clock.advance(Duration::from_millis(600));
    rig.t.timer_event(0);
    // 614 bytes are not enough: still waiting, timer armed again.
    assert_eq!(rig.used(), 1);
    assert_eq!(rig.t.counters().throttled, 2);
    clock.advance(Duration::from_millis(400));
    rig.t.timer_event(0);
    assert_eq!(rig.used(), 2);
}

#[test]
fn the_worker_sleeps_on_the_timer_and_resumes_the_queue() {
    // Real time: one request per 50 ms.
    let rig = BlockRig::new(RateLimiter::new(&ops(1, 50)).expect("rate limiter"));
    let mut manager =
        EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().expect("event manager");
    manager.add_subscriber(Arc::new(Mutex::new(VirtioWorker::new(rig.t.clone()))));
    let start = Instant::now();
    rig.offer_reads(3, 512);
    assert_eq!(rig.used(), 1);
    // The notification was consumed by the direct call above: the only
    // things left to wake the loop are the timer, twice, and the engine's
    // completions; each wake-up has a cause (none times out).
    let mut wakeups = 0;
    while rig.ring.used_idx(&rig.mem) < 3 {
        assert!(manager.run_with_timeout(2000).expect("run") >= 1);
        wakeups += 1;
        assert!(wakeups <= 6, "the loop woke {wakeups} times for 2 requests");
    }
    assert!(
        start.elapsed() >= Duration::from_millis(90),
        "{:?}",
        start.elapsed()
    );
    // Nothing throttled any more: the loop stays quiet.
    assert_eq!(manager.run_with_timeout(100).expect("run"), 0);
}

#[test]
fn new_limits_at_run_time_release_a_throttled_queue() {
    let clock = Arc::new(ManualClock::default());
    let rig = BlockRig::new(limiter(ops(1, 60_000), &clock));
    rig.offer_reads(3, 512);
    assert_eq!(rig.used(), 1);
    // PATCH with a zero-size bucket: no limit, the queue drains at once.
    rig.t
        .update_rate_limiter(&ops(0, 0))
        .expect("update rate limiter");
    assert_eq!(rig.used(), 3);
    assert!(!rig.t.with_device(|b| b.rate_limiter().buckets().limits()));
    // And back: a limit added at run time applies from now.
    rig.t
        .update_rate_limiter(&ops(1, 60_000))
        .expect("update rate limiter");
    rig.offer_reads(2, 512);
    assert_eq!(rig.used(), 4);
}

#[test]
fn a_throttled_rng_serves_the_held_request_when_the_timer_fires() {
    let clock = Arc::new(ManualClock::default());
    let (t, mem, _irq) = transport(Rng::with_rate_limiter(limiter(bandwidth(64, 1000), &clock)));
    let ring = Ring::new(0x1000, 16);
    Driver::new(&t).start(&[ring]);
    ring.set_chain(&mem, 0, &[(DATA, 64, true)]);
    ring.set_chain(&mem, 1, &[(DATA + 0x100, 32, true)]);
    ring.publish(&mem, &[0, 1]);
    Driver::new(&t).notify(0);
    assert_eq!(ring.used_idx(&mem), 1);
    assert_eq!(t.counters().throttled, 1);
    clock.advance(Duration::from_millis(500));
    t.timer_event(0);
    assert_eq!(ring.used(&mem, 1), (1, 32));
    assert_eq!(t.counters().bytes_read, 96);
}

#[test]
fn a_throttled_transmit_queue_sends_the_rest_when_its_timer_fires() {
    let clock = Arc::new(ManualClock::default());
    // Without a timer, the receive side takes no timer index: the
    // transmit side's is 0.
    let rig = NetRig::with_rate_limiters(RateLimiter::unlimited(), limiter(ops(1, 100), &clock));
    assert_eq!(rig.t.timer_fds().len(), 1);
    let mut frames = Vec::new();
    for i in 0..2u16 {
        let mut datagram = vec![0u8; 12];
        datagram.extend(frame(60, i as u8));
        let at = DATA + u64::from(i) * 0x1000;
        rig.write(at, &datagram);
        rig.tx.set_chain(&rig.mem, i, &[(at, 72, false)]);
        frames.push(datagram);
    }
    rig.tx.publish(&rig.mem, &[0, 1]);
    rig.driver().notify(TX_QUEUE as u32);
    assert_eq!(rig.peer.recv().as_ref(), Some(&frames[0]));
    assert_eq!(rig.peer.recv(), None);
    assert_eq!(rig.tx.used_idx(&rig.mem), 1);
    clock.advance(Duration::from_millis(100));
    rig.t.timer_event(0);
    assert_eq!(rig.peer.recv().as_ref(), Some(&frames[1]));
    assert_eq!(rig.tx.used_idx(&rig.mem), 2);
    assert_eq!(rig.stats().tx_frames, 2);
}

#[test]
fn a_throttled_receive_side_stops_listening_until_its_timer_fires() {
    let clock = Arc::new(ManualClock::default());
    let rig = NetRig::with_rate_limiters(limiter(ops(1, 100), &clock), RateLimiter::unlimited());
    rig.rx.set_chain(&rig.mem, 0, &[(DATA, 2048, true)]);
    rig.rx
        .set_chain(&rig.mem, 1, &[(DATA + 0x1000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[0, 1]);
    rig.driver().notify(RX_QUEUE as u32);
    rig.peer.send(&frame(60, 1));
    rig.peer.send(&frame(61, 2));
    rig.t.backend_event();
    assert_eq!(rig.rx.used_idx(&rig.mem), 1);
    // The second frame is held; the tap no longer wakes the event loop.
    assert!(!rig.backend_wakes());
    assert_eq!(rig.counters().throttled, 1);
    clock.advance(Duration::from_millis(100));
    rig.t.timer_event(0);
    assert_eq!(rig.rx.used(&rig.mem, 1), (1, 73));
    assert_eq!(rig.read(DATA + 0x1000 + 12, 61), frame(61, 2));
    assert_eq!(rig.stats().rx_frames, 2);
    assert_eq!(rig.stats().rx_dropped, 0);
}

#[test]
fn runtime_updates_reach_only_the_net_side_they_name() {
    let clock = Arc::new(ManualClock::default());
    let rig = NetRig::with_rate_limiters(
        limiter(LimiterConfig::default(), &clock),
        limiter(LimiterConfig::default(), &clock),
    );
    assert_eq!(rig.t.timer_fds().len(), 2);
    rig.t
        .update_rate_limiters(None, Some(&ops(5, 1000)))
        .expect("update");
    rig.t.with_device(|net| {
        assert!(!net.rx_rate_limiter().buckets().limits());
        assert!(net.tx_rate_limiter().buckets().limits());
    });
}
