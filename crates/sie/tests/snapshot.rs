//! Snapshots through the binary on the real /dev/kvm: a guest that counts
//! in memory is paused and snapshotted through the API, and restored in a
//! new process (`sie run --restore`, and `PUT /snapshot/load`) where its
//! count goes on exactly where it stopped; damaged files are refused.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::sie;

const LIMIT: u32 = 40;

/// "count 1\n" .. "count LIMIT\n".
fn full_count() -> String {
    (1..=LIMIT).map(|n| format!("count {n}\n")).collect()
}

/// Collects a child's stdout on a thread.
fn capture(vm: &mut ApiVm) -> Arc<Mutex<String>> {
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

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Boots the counter in a new sie, pauses it after a few counts,
/// snapshots it into `keep`, and stops that sie. Returns (snapshot, memory
/// file, what the first process printed).
fn snapshot_of_a_counting_guest(
    name: &str,
    keep: &common::Scratch,
    via_ctl: bool,
) -> (String, String, String) {
    let mut vm = ApiVm::start(name, &[]);
    let out = capture(&mut vm);
    vm.boot(
        sie_guests::COUNTER.path,
        &format!("limit={LIMIT} delay=20000"),
    );
    wait_for("a few counts", || {
        out.lock().expect("output lock").contains("count 5\n")
    });
    vm.call(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_path": "/nonexistent/dir/s", "mem_file_path": "/tmp/m"}"#),
    )
    .expect_fault("paused");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snap = format!("{}/vm.snap", keep.path());
    let mem = format!("{}/vm.mem", keep.path());
    vm.call(
        "PUT",
        "/snapshot/create",
        Some(r#"{"snapshot_type": "Diff", "snapshot_path": "a", "mem_file_path": "b"}"#),
    )
    .expect_fault("Diff snapshots need dirty page tracking: set track_dirty_pages");
    if via_ctl {
        let sock = vm.sock.display().to_string();
        sie(&["ctl", "--sock", &sock, "snapshot", "create", &snap, &mem]).expect_code(0);
    } else {
        let body = serde_json::json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem});
        vm.ok("PUT", "/snapshot/create", &body.to_string());
    }
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    // The console is flushed on exit; give the reader thread its last bytes.
    std::thread::sleep(Duration::from_millis(50));
    let printed = out.lock().expect("output lock").clone();
    assert!(printed.starts_with("count 1\n"), "{printed}");
    assert!(!printed.contains(&format!("count {LIMIT}\n")), "{printed}");
    (snap, mem, printed)
}

#[test]
fn a_restored_guest_counts_on_exactly_where_it_stopped() {
    let keep = common::Scratch::new("snapshot-files");
    let (snap, mem, before) = snapshot_of_a_counting_guest("snapshot-source", &keep, false);

    // In a new process, from the command line.
    let restored = sie(&["run", "--restore", &snap, "--mem", &mem]);
    restored.expect_code(0);
    assert_eq!(format!("{before}{}", restored.stdout), full_count());

    // And through the API of a fresh sie, as Firecracker clients load.
    let mut fresh = ApiVm::start("snapshot-load", &[]);
    let out = capture(&mut fresh);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    fresh.ok("PUT", "/snapshot/load", &load.to_string());
    let (code, stderr) = fresh.wait();
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        format!("{before}{}", out.lock().expect("output lock")),
        full_count()
    );

    // Loaded by `sie ctl` without --resume, it waits paused until resumed.
    let mut paused = ApiVm::start("snapshot-paused", &[]);
    let sock = paused.sock.display().to_string();
    let loaded = sie(&["ctl", "--sock", &sock, "snapshot", "load", &snap, &mem]);
    loaded.expect_code(0);
    assert!(loaded.stdout.contains("paused"), "{}", loaded.stdout);
    assert_eq!(paused.state(), "Paused");
    sie(&["ctl", "--sock", &sock, "resume"]).expect_code(0);
    let (code, _) = paused.wait();
    assert_eq!(code, Some(0));
}

#[test]
fn damaged_and_mismatched_snapshot_files_are_refused_in_one_line() {
    let keep = common::Scratch::new("snapshot-damage-files");
    let (snap, mem, _) = snapshot_of_a_counting_guest("snapshot-damage", &keep, true);
    let bytes = std::fs::read(&snap).unwrap();
    let scratch = common::Scratch::new("snapshot-damaged");

    let mut flipped = bytes.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let flipped = scratch.file("flipped.snap", &flipped);
    sie(&["run", "--restore", &flipped, "--mem", &mem]).expect_one_line_error("damaged");

    let truncated = scratch.file("truncated.snap", &bytes[..bytes.len() - 100]);
    sie(&["run", "--restore", &truncated, "--mem", &mem]).expect_one_line_error("truncated");

    let short_mem = scratch.file("short.mem", &[0u8; 4096]);
    sie(&["run", "--restore", &snap, "--mem", &short_mem]).expect_one_line_error("has 4096 bytes");

    sie(&["run", "--restore", "/nonexistent.snap", "--mem", &mem])
        .expect_one_line_error("/nonexistent.snap");
    let not_a_snapshot = scratch.file("elf.snap", sie_guests::COUNTER.bytes);
    sie(&["run", "--restore", &not_a_snapshot, "--mem", &mem])
        .expect_one_line_error("not a sie snapshot");

    // The API answers the same refusals with a 400, and the VMM stays up.
    let fresh = ApiVm::start("snapshot-load-damaged", &[]);
    let load = serde_json::json!({"snapshot_path": flipped, "mem_file_path": mem});
    fresh
        .call("PUT", "/snapshot/load", Some(&load.to_string()))
        .expect_fault("damaged");
    let load = serde_json::json!({"snapshot_path": snap, "mem_backend": {"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}});
    fresh
        .call("PUT", "/snapshot/load", Some(&load.to_string()))
        .expect_fault("Uffd is not supported yet");
    assert_eq!(fresh.state(), "Not started");
    let (code, _) = fresh.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn snapshot_version_flags_print_the_format() {
    let written = sie(&["--snapshot-version"]);
    written.expect_code(0);
    assert_eq!(written.stdout.trim(), "v1.0.0");
    let scratch = common::Scratch::new("snapshot-describe");
    let fake = scratch.file("v1.snap", b"SIESNAP\n\x01\x00\x00\x00");
    let described = sie(&["--describe-snapshot", &fake]);
    described.expect_code(0);
    assert_eq!(described.stdout.trim(), "v1.0.0");
    let other = scratch.file("other.snap", b"not a snapshot");
    sie(&["--describe-snapshot", &other]).expect_one_line_error("not a sie snapshot");
}
