//! The counter guest (`sie_guests::COUNTER`) through the API: its console
//! captured, waited on, and what it printed read back.

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::api::ApiVm;

/// "count 1\n" .. "count LIMIT\n".
pub fn full_count(limit: u32) -> String {
    (1..=limit).map(|n| format!("count {n}\n")).collect()
}

/// Collects a child's stdout on a thread.
pub fn capture(vm: &mut ApiVm) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let mut pipe = vm.child.stdout.take().expect("stdout");
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 256];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("output lock")
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    out
}

/// Waits (at most 30 s) until `done`.
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The last count the guest printed (0 before the first).
pub fn last_count(out: &Mutex<String>) -> u32 {
    out.lock()
        .expect("output lock")
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Pauses the guest once it has printed `at_least` counts; returns the
/// count it stopped at, once its console has stood still.
pub fn pause_after(vm: &ApiVm, out: &Mutex<String>, at_least: u32) -> u32 {
    wait_for("counts", || last_count(out) >= at_least);
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let mut seen = last_count(out);
    loop {
        std::thread::sleep(Duration::from_millis(60));
        let now = last_count(out);
        if now == seen {
            return now;
        }
        seen = now;
    }
}
