//! Auto-converge on the real /dev/kvm: a guest that dirties memory faster
//! than a capped link carries it never converges without a throttle (the
//! send times out and the guest runs on here), and with one it does: its
//! vCPUs are slowed step by step, the move completes and the count goes on
//! exactly where it was. The assertions are on the figures sie reports
//! (rounds, throttle, estimated downtime), not on wall time; the guest's
//! tick is calibrated first (its delay loop runs a hundred times slower
//! under nested virtualization than on bare metal), so that a round at
//! the capped link spans about ten ticks unthrottled and a tenth of one
//! at the highest throttle.

mod common;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::counter::{capture, last_count, wait_for};
use common::sie;

/// Pages the guest writes every tick (512 KiB): one round of them takes
/// half a second at [`CAP_MIB_S`], a few of the guest's ticks.
const DIRTY: u32 = 128;
/// The link, MiB/s.
const CAP_MIB_S: u64 = 1;
/// Far below what a round of [`DIRTY`] pages takes at the cap.
const DOWNTIME_MS: u64 = 50;
/// The guest's tick wanted: a tenth of a round at the cap.
const TICK: Duration = Duration::from_millis(50);

/// Boots the counter, dirtying [`DIRTY`] pages every tick of `delay`
/// loop turns, in a new sie.
fn counter(name: &str, flags: &[&str], delay: u64) -> (ApiVm, Arc<Mutex<String>>) {
    let mut vm = ApiVm::start(name, flags);
    let out = capture(&mut vm);
    vm.boot(
        sie_guests::COUNTER.path,
        &format!("limit=100000000 delay={delay} dirty={DIRTY}"),
    );
    wait_for("a first count", || last_count(&out) >= 1);
    (vm, out)
}

/// How long a tick of `delay` takes on this host (a measurement, not a
/// check): at least 300 ms and 3 ticks of counting.
fn tick_of(delay: u64) -> Duration {
    let (vm, out) = counter("converge-calibrate", &[], delay);
    let (from, since) = (last_count(&out), Instant::now());
    wait_for("ticks to time", || {
        last_count(&out) >= from + 3 && since.elapsed() >= Duration::from_millis(300)
    });
    let ticks = last_count(&out) - from;
    let tick = since.elapsed() / ticks;
    let _ = vm.terminate();
    tick
}

/// The `delay=` that makes a tick of about [`TICK`] here, found once.
fn calibrated_delay() -> u64 {
    static DELAY: OnceLock<u64> = OnceLock::new();
    *DELAY.get_or_init(|| {
        let mut delay: u64 = 20_000;
        // Twice: the console's share of a tick does not scale with delay.
        for _ in 0..2 {
            let tick = tick_of(delay).max(Duration::from_micros(1));
            let scaled = delay as f64 * TICK.as_secs_f64() / tick.as_secs_f64();
            delay = (scaled as u64).clamp(1, 1 << 40);
        }
        eprintln!("delay={delay} makes a tick of about {TICK:?}");
        delay
    })
}

/// The counter, at the calibrated tick, in a new sie.
fn dirtying_source(name: &str, flags: &[&str]) -> (ApiVm, Arc<Mutex<String>>) {
    let (vm, out) = counter(name, flags, calibrated_delay());
    wait_for("a few counts", || last_count(&out) >= 3);
    (vm, out)
}

/// A fresh sie receiving at `url`.
fn receiving(name: &str, url: &str) -> (ApiVm, Arc<Mutex<String>>) {
    let mut dest = ApiVm::start(name, &[]);
    let out = capture(&mut dest);
    let receive = serde_json::json!({ "receiver_url": url });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    (dest, out)
}

/// The counts a console printed, in order.
fn counts(out: &Mutex<String>) -> Vec<u64> {
    out.lock()
        .expect("output lock")
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect()
}

#[test]
fn without_auto_converge_a_guest_dirtying_faster_than_the_link_never_converges() {
    let scratch = common::Scratch::new("converge-off");
    let url = format!("unix:{}/m.sock", scratch.path());
    let (mut dest, _) = receiving("converge-off-dest", &url);
    let (source, out) = dirtying_source("converge-off-source", &[]);
    let sock = source.sock.display().to_string();
    let (downtime, cap) = (DOWNTIME_MS.to_string(), CAP_MIB_S.to_string());
    sie(&[
        "ctl",
        "--sock",
        &sock,
        "migrate",
        "send",
        &url,
        "--downtime-ms",
        &downtime,
        "--timeout-s",
        "5",
        "--no-auto-converge",
        "--max-bandwidth-mib-s",
        &cap,
    ])
    .expect_code(0);
    wait_for("the send to give up", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    eprintln!("without auto-converge: {status}");
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("timed out")),
        "{status}"
    );
    // Round after round, and the rest never fitted the downtime.
    assert!(status["round"].as_u64() >= Some(3), "{status}");
    assert!(
        status["estimated_downtime_ms"].as_u64() > Some(DOWNTIME_MS),
        "{status}"
    );
    assert_eq!(status["throttle_percent"], 0, "{status}");
    // The guest runs on here; the destination heard why and ended.
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the source aborted"), "{stderr}");
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn with_auto_converge_the_same_guest_moves_and_counts_on_exactly() {
    let scratch = common::Scratch::new("converge-on");
    let url = format!("unix:{}/m.sock", scratch.path());
    let metrics = format!("{}/metrics.json", scratch.path());
    let (dest, dest_out) = receiving("converge-on-dest", &url);
    let (mut source, source_out) =
        dirtying_source("converge-on-source", &["--metrics-path", &metrics]);
    // auto_converge is on unless asked otherwise.
    let send = serde_json::json!({
        "destination_url": url,
        "downtime_ms": DOWNTIME_MS,
        "timeout_s": 120,
        "max_bandwidth_mib_s": CAP_MIB_S,
    });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("the VM migrated to"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The source's last metrics line: it throttled, and the rest fitted
    // the downtime (rather than the switch-over coming after the most
    // rounds).
    let text = std::fs::read_to_string(&metrics).expect("the metrics file");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next_back().expect("a line")).expect("JSON");
    let figures = &line["migration"];
    eprintln!("with auto-converge: {figures}");
    assert!(
        stderr.contains(&format!(
            ", the vCPUs throttled {}% at the end; it runs there now",
            figures["throttle_percent"]
        )),
        "{stderr}"
    );
    assert_eq!(figures["state"], "completed", "{figures}");
    assert!(
        figures["throttle_percent"].as_u64() >= Some(20),
        "{figures}"
    );
    assert!(figures["round"].as_u64() >= Some(2), "{figures}");
    assert!(
        figures["estimated_downtime_ms"].as_u64() <= Some(DOWNTIME_MS),
        "{figures}"
    );
    // The count goes on from the source's last, at the destination.
    let before = counts(&source_out);
    let last = *before.last().expect("the source counted");
    assert_eq!(before, (1..=last).collect::<Vec<_>>());
    wait_for("the destination to count on", || {
        counts(&dest_out).last() >= Some(&(last + 3))
    });
    let after = counts(&dest_out);
    assert_eq!(
        after,
        (last + 1..=last + after.len() as u64).collect::<Vec<_>>()
    );
    let (code, stderr) = dest.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}
