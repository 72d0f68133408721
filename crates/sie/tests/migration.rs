//! Live migration through the binary on the real /dev/kvm: a guest that
//! counts and dirties memory moves between two sie processes (over a Unix
//! socket and over TCP on localhost) and its count goes on exactly where
//! it was; a destination that dies mid-transfer leaves the guest running
//! on the source, and so does a receive whose network override names no
//! interface of the VM; a stream of another protocol version, or a damaged
//! one, is refused in one line.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::api::ApiVm;
use common::counter::{self, capture, last_count, wait_for};
use common::sie;
use sie_vmm::migration::wire::{self, Message};

const LIMIT: u32 = 60;

/// Boots the counter (dirtying `dirty` pages a tick) in a new sie.
fn counting_source(name: &str, dirty: u32) -> (ApiVm, std::sync::Arc<std::sync::Mutex<String>>) {
    counting_source_to(name, dirty, LIMIT)
}

/// [`counting_source`] counting up to `limit`: a guest that outlives a
/// slow test (one that must still be running at its end) counts far.
fn counting_source_to(
    name: &str,
    dirty: u32,
    limit: u32,
) -> (ApiVm, std::sync::Arc<std::sync::Mutex<String>>) {
    counting_source_with(name, dirty, limit, &[])
}

/// [`counting_source_to`] with more flags for sie.
fn counting_source_with(
    name: &str,
    dirty: u32,
    limit: u32,
    flags: &[&str],
) -> (ApiVm, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut vm = ApiVm::start(name, flags);
    let out = capture(&mut vm);
    vm.boot(
        sie_guests::COUNTER.path,
        &format!("limit={limit} delay=20000 dirty={dirty}"),
    );
    wait_for("a few counts", || last_count(&out) >= 5);
    (vm, out)
}

/// The last line of the metrics file at `path`, parsed.
fn last_metrics_line(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the metrics file");
    let line = text.lines().next_back().expect("a metrics line");
    serde_json::from_str(line).expect("a JSON metrics line")
}

/// Moves a counting guest to a fresh sie listening at `url` (through the
/// API, or `sie ctl migrate`); the two consoles together must show every
/// count once, in order, and the source's last metrics line the figures
/// of the move.
fn migrates_and_counts_on(name: &str, url: &str, dirty: u32, via_ctl: bool) {
    let outputs = common::Scratch::new(&format!("{name}-metrics"));
    let metrics = format!("{}/metrics.json", outputs.path());
    let dest_metrics = format!("{}/dest-metrics.json", outputs.path());
    let mut dest = ApiVm::start(&format!("{name}-dest"), &["--metrics-path", &dest_metrics]);
    let dest_out = capture(&mut dest);
    let dest_sock = dest.sock.display().to_string();
    if via_ctl {
        sie(&["ctl", "--sock", &dest_sock, "migrate", "receive", url]).expect_code(0);
    } else {
        let receive = serde_json::json!({ "receiver_url": url });
        dest.ok("PUT", "/migration/receive", &receive.to_string());
    }
    assert_eq!(dest.get("/migration").json()["state"], "receiving");

    let (mut source, source_out) = counting_source_with(
        &format!("{name}-source"),
        dirty,
        LIMIT,
        &["--metrics-path", &metrics],
    );
    source.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    assert_eq!(last_metrics_line(&metrics)["migration"]["state"], "idle");
    if via_ctl {
        let sock = source.sock.display().to_string();
        sie(&["ctl", "--sock", &sock, "migrate", "send", url]).expect_code(0);
    } else {
        let send = serde_json::json!({ "destination_url": url, "downtime_ms": 300 });
        source.ok("PUT", "/migration/send", &send.to_string());
    }
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("the VM migrated to {url} after ")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let downtime_ms: u64 = stderr
        .split(" ms of downtime")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse().ok())
        .expect("the downtime in the source's last line");
    // Generous for a debug build on a shared host: the switch-over sends
    // a few pages and the state, and the destination builds the VM.
    assert!(downtime_ms < 2000, "{stderr}");
    // The last metrics line (written as the source exits) has the figures
    // the last line of its log has.
    let figures = &last_metrics_line(&metrics)["migration"];
    assert_eq!(figures["state"], "completed", "{figures}");
    assert_eq!(figures["downtime_ms"], downtime_ms, "{figures}");
    assert!(
        stderr.contains(&format!("after {} pre-copy rounds", figures["round"])),
        "{figures} {stderr}"
    );
    for positive in ["bytes", "pages", "bandwidth_bytes_per_s", "total_ms"] {
        assert!(
            figures[positive].as_u64().is_some_and(|n| n > 0),
            "{positive}: {figures}"
        );
    }
    assert!(
        figures["total_ms"].as_u64() >= Some(downtime_ms),
        "{figures}"
    );
    // It ran there: the receiver's figures say what arrived.
    let status = sie(&["ctl", "--sock", &dest_sock, "migrate", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["state"], "completed", "{status}");
    assert!(status["pages"].as_u64().is_some_and(|p| p > 0), "{status}");
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
    // The destination's last line: what it took in.
    let taken = &last_metrics_line(&dest_metrics)["migration"];
    assert_eq!(taken["state"], "completed", "{taken}");
    assert_eq!(taken["pages"], status["pages"], "{taken}");
    assert!(taken["bytes"].as_u64().is_some_and(|b| b > 0), "{taken}");
    std::thread::sleep(Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    assert!(!after.is_empty(), "the destination printed nothing");
    assert_eq!(format!("{before}{after}"), counter::full_count(LIMIT));
}

#[test]
fn a_dirtying_guest_moves_over_a_unix_socket_and_counts_on_exactly() {
    let scratch = common::Scratch::new("migrate-unix");
    let url = format!("unix:{}/m.sock", scratch.path());
    migrates_and_counts_on("migrate-unix", &url, 256, false);
}

#[test]
fn a_dirtying_guest_moves_over_tcp_and_counts_on_exactly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    migrates_and_counts_on("migrate-tcp", &format!("tcp:127.0.0.1:{port}"), 256, true);
}

#[test]
fn a_destination_that_dies_mid_transfer_leaves_the_guest_running_here() {
    let scratch = common::Scratch::new("migrate-dies");
    let path = format!("{}/m.sock", scratch.path());
    // A destination that answers the hello, takes some memory, then dies.
    let fake = common::fake_peer::fake_destination(&path, move |mut conn| {
        wire::send_hello(&mut conn).expect("hello");
        let mut some = vec![0u8; 64 << 10];
        conn.read_exact(&mut some).expect("some memory");
    });
    let (source, out) = counting_source_to("migrate-dies-source", 64, 1_000_000);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}") });
    source.ok("PUT", "/migration/send", &send.to_string());
    fake.join().expect("the fake destination");
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    assert!(
        status["error"].as_str().is_some_and(|e| !e.contains('\n')),
        "{status}"
    );
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn a_cancelled_send_leaves_the_guest_running_here() {
    let scratch = common::Scratch::new("migrate-cancel");
    let path = format!("{}/m.sock", scratch.path());
    // A destination on a slow link: it takes memory a little at a time
    // until the source gives up on it.
    let fake = common::fake_peer::fake_destination(&path, move |mut conn| {
        wire::send_hello(&mut conn).expect("hello");
        let mut last = None;
        loop {
            match wire::read_message(&mut conn) {
                Ok(message) => last = Some(message),
                Err(_) => return last,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    });
    let (source, out) = counting_source_to("migrate-cancel-source", 64, 1_000_000);
    let sock = source.sock.display().to_string();
    // Downtime 0 never fits while the guest dirties pages: it goes round
    // after round until cancelled.
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "downtime_ms": 0 });
    source.ok("PUT", "/migration/send", &send.to_string());
    wait_for("a round or two", || {
        source.get("/migration").json()["pages"].as_u64() > Some(0)
    });
    // Rounds that do not shrink slow the guest down (auto-converge is on
    // unless asked otherwise).
    wait_for("the throttle", || {
        source.get("/migration").json()["throttle_percent"].as_u64() >= Some(20)
    });
    let status = sie(&["ctl", "--sock", &sock, "migrate", "status"]);
    assert!(
        status.stdout.contains("vCPUs throttled"),
        "{}",
        status.stdout
    );
    // Nobody pauses or resumes the guest under the switch-over's feet.
    source
        .call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect_fault("a migration is under way");
    sie(&["ctl", "--sock", &sock, "migrate", "cancel"]).expect_code(0);
    wait_for("the cancel", || {
        source.get("/migration").json()["state"] == "cancelled"
    });
    let last = fake.join().expect("the fake destination");
    assert_eq!(last, Some(Message::Abort("migration cancelled".into())));
    // The cancel lifted the throttle.
    assert_eq!(source.get("/migration").json()["throttle_percent"], 0);
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    source
        .call("PUT", "/migration/cancel", None)
        .expect_fault("no migration is being sent");
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn what_sie_cannot_do_yet_is_refused_in_one_line() {
    let (source, _) = counting_source("migrate-refusals", 0);
    for (body, needle) in [
        (
            r#"{"destination_url": "tcp:127.0.0.1:9", "local": true}"#,
            "local migration passes guest memory over a Unix socket",
        ),
        (
            r#"{"destination_url": "unix:/x", "local": true, "mode": "postcopy"}"#,
            "mode postcopy does not apply",
        ),
        (
            r#"{"destination_url": "http://x"}"#,
            "expected unix:PATH or tcp:HOST:PORT",
        ),
        (
            r#"{"destination_url": "unix:/x", "auto_converge": "yes"}"#,
            "expected a boolean",
        ),
        (
            r#"{"destination_url": "unix:/x", "max_bandwidth_mib_s": 0}"#,
            "max_bandwidth_mib_s must be at least 1",
        ),
    ] {
        source
            .call("PUT", "/migration/send", Some(body))
            .expect_fault(needle);
    }
    source
        .call(
            "PUT",
            "/migration/receive",
            Some(r#"{"receiver_url": "unix:/tmp/x"}"#),
        )
        .expect_fault("receive into a fresh sie");
    assert_eq!(source.get("/migration").json()["state"], "idle");
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn a_source_that_dies_mid_transfer_ends_the_destination_in_one_line() {
    let mut frames = Vec::new();
    wire::send_hello(&mut frames).unwrap();
    let layout = Message::Layout(vec![sie_vmm::snapshot::memory_file::RegionEntry {
        guest_addr: 0,
        len: 32 << 20,
    }]);
    wire::write_message(&mut frames, &layout).unwrap();
    let run = wire::PageRun {
        guest_addr: 0x10000,
        bytes: vec![0x5a; 4096],
    };
    wire::write_message(&mut frames, &Message::Pages(vec![run])).unwrap();
    // Half a frame, then the connection closes.
    let mut cut = Vec::new();
    wire::write_message(&mut cut, &Message::Pages(vec![])).unwrap();
    frames.extend_from_slice(&cut[..cut.len() / 2]);
    let (code, stderr) = receiver_fed("migrate-source-dies", &frames);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "sie: migration failed: the source closed the stream mid-transfer"
    );
}

/// Sends `frames` to a fresh receiving sie and returns its exit code and
/// stderr.
fn receiver_fed(name: &str, frames: &[u8]) -> (Option<i32>, String) {
    let mut dest = ApiVm::start(name, &[]);
    let path = format!("{}/m.sock", dest.dir.path());
    let receive = serde_json::json!({ "receiver_url": format!("unix:{path}") });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let mut conn = UnixStream::connect(&path).expect("connect");
    conn.write_all(frames).expect("frames");
    conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    dest.wait()
}

#[test]
fn another_protocol_version_is_refused_before_any_memory_moves() {
    // Version 1 ran the VM on the state alone (no two-phase switch-over).
    for major in [wire::PROTOCOL_MAJOR + 1, 1] {
        let mut frames = Vec::new();
        wire::write_message(&mut frames, &Message::Hello(major, 0)).unwrap();
        let (code, stderr) = receiver_fed("migrate-version", &frames);
        assert_eq!(code, Some(1), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(&format!("peer speaks migration protocol {major}.0")),
            "{stderr}"
        );
    }
}

#[test]
fn a_damaged_stream_is_refused_in_one_line() {
    let mut frames = Vec::new();
    wire::send_hello(&mut frames).unwrap();
    let layout = Message::Layout(vec![sie_vmm::snapshot::memory_file::RegionEntry {
        guest_addr: 0,
        len: 32 << 20,
    }]);
    wire::write_message(&mut frames, &layout).unwrap();
    let mut pages = Vec::new();
    let run = wire::PageRun {
        guest_addr: 0x10000,
        bytes: vec![0x5a; 4096],
    };
    wire::write_message(&mut pages, &Message::Pages(vec![run])).unwrap();
    let last = pages.len() - 1;
    pages[last] ^= 1;
    frames.extend_from_slice(&pages);
    let (code, stderr) = receiver_fed("migrate-damaged", &frames);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("damaged (frame checksum mismatch)"),
        "{stderr}"
    );
}

#[test]
fn a_network_override_naming_no_interface_fails_the_move_and_the_guest_runs_here() {
    let mut dest = ApiVm::start("migrate-override-dest", &[]);
    let path = format!("{}/m.sock", dest.dir.path());
    let url = format!("unix:{path}");
    let dest_sock = dest.sock.display().to_string();
    let receive = sie(&[
        "ctl",
        "--sock",
        &dest_sock,
        "migrate",
        "receive",
        &url,
        "--net-override",
        "eth9=tap9",
    ]);
    receive.expect_code(0);
    let (source, out) = counting_source_to("migrate-override-source", 16, 1_000_000);
    let send = serde_json::json!({ "destination_url": url });
    source.ok("PUT", "/migration/send", &send.to_string());
    // The destination refuses the state before it builds anything, so the
    // guest never ran there and the source takes it back.
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("network_overrides") && stderr.contains("\"eth9\""),
        "{stderr}"
    );
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}
