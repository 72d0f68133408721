//! Local-mode live migration through the binary on the real /dev/kvm: a
//! counting guest whose RAM is shared memory moves to a second sie on the
//! same host with its memfds passed over the Unix socket (no page copied)
//! and counts on exactly; what cannot go local is refused in one line; a
//! receiver that does not know local mode, a damaged local layout and one
//! without its descriptors are refused before the guest stops here. The
//! switch-over is the two-phase one: a receiver that refuses the state or
//! hangs up before its `Ready` leaves the guest running here; one that
//! hangs up after the source's `Go` leaves it paused here for good (it
//! may run there, on the same memory). Through a relay to a real
//! destination: one whose `Ready` never reaches the source never runs the
//! guest; one whose `Done` is lost after the `Go` runs it on while the
//! source stays paused, the count exact across the two.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

use common::api::ApiVm;
use common::counter::{self, capture, last_count, wait_for};
use common::sie;
use sie_vmm::migration::wire::{self, Message};
use sie_vmm::snapshot::memory_file::RegionEntry;

const LIMIT: u32 = 60;
const GUEST_MIB: u64 = 256;

/// Boots the counter (dirtying `dirty` pages a tick, up to `limit`) with
/// `GUEST_MIB` of RAM, shared or not, in a new sie.
fn counting(name: &str, shared: bool, limit: u32, flags: &[&str]) -> (ApiVm, Arc<Mutex<String>>) {
    let mut vm = ApiVm::start(name, flags);
    let out = capture(&mut vm);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": format!("limit={limit} delay=20000 dirty=64"),
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    let machine = serde_json::json!({
        "vcpu_count": 1, "mem_size_mib": GUEST_MIB, "shared_memory": shared,
    });
    vm.ok("PUT", "/machine-config", &machine.to_string());
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for("a few counts", || last_count(&out) >= 5);
    (vm, out)
}

fn last_metrics_line(path: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the metrics file");
    let line = text.lines().next_back().expect("a metrics line");
    serde_json::from_str(line).expect("a JSON metrics line")
}

#[test]
fn a_shared_memory_guest_moves_locally_without_its_pages_and_counts_on_exactly() {
    let scratch = common::Scratch::new("migrate-local");
    let url = format!("unix:{}/m.sock", scratch.path());
    let metrics = format!("{}/metrics.json", scratch.path());
    let mut dest = ApiVm::start("migrate-local-dest", &[]);
    let dest_out = capture(&mut dest);
    let dest_sock = dest.sock.display().to_string();
    sie(&["ctl", "--sock", &dest_sock, "migrate", "receive", &url]).expect_code(0);

    let (mut source, source_out) = counting(
        "migrate-local-source",
        true,
        LIMIT,
        &["--metrics-path", &metrics],
    );
    let sock = source.sock.display().to_string();
    sie(&["ctl", "--sock", &sock, "migrate", "send", &url, "--local"]).expect_code(0);
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the VM migrated to {url} in local mode: {GUEST_MIB}.0 MiB of guest RAM handed over"
        )),
        "{stderr}"
    );
    let downtime_ms: u64 = stderr
        .split(" ms of downtime")
        .next()
        .and_then(|head| head.rsplit(' ').next()?.parse().ok())
        .expect("the downtime in the source's last line");
    // Not a timing claim: the figure is there and is the metrics' one.
    let figures = &last_metrics_line(&metrics)["migration"];
    assert_eq!(figures["state"], "completed", "{figures}");
    assert_eq!(figures["downtime_ms"], downtime_ms, "{figures}");
    // No page was sent: only the layout, the descriptors' byte and the
    // device and vCPU state, a sliver of the guest's RAM.
    assert_eq!(figures["pages"], 0, "{figures}");
    eprintln!("local move of {GUEST_MIB} MiB: {figures}");
    let bytes = figures["bytes"].as_u64().expect("bytes");
    assert!(bytes > 0 && bytes < (GUEST_MIB << 20) / 100, "{figures}");

    let status = sie(&["ctl", "--sock", &dest_sock, "migrate", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).expect("status JSON");
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["pages"], 0, "{status}");
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    assert!(!after.is_empty(), "the destination printed nothing");
    assert_eq!(format!("{before}{after}"), counter::full_count(LIMIT));
}

#[test]
fn local_mode_over_tcp_or_on_private_memory_is_refused_in_one_line() {
    let (source, out) = counting("migrate-local-refusals", false, 1_000_000, &[]);
    source
        .call(
            "PUT",
            "/migration/send",
            Some(r#"{"destination_url": "tcp:127.0.0.1:4000", "local": true}"#),
        )
        .expect_fault("local migration passes guest memory over a Unix socket");
    source
        .call(
            "PUT",
            "/migration/send",
            Some(r#"{"destination_url": "unix:/tmp/nobody.sock", "local": true}"#),
        )
        .expect_fault("start sie with --memory-shared");
    let sock = source.sock.display().to_string();
    let refused = sie(&[
        "ctl",
        "--sock",
        &sock,
        "migrate",
        "send",
        "unix:/tmp/nobody.sock",
        "--local",
    ]);
    assert_ne!(refused.code, Some(0));
    assert_eq!(
        refused.stderr.trim().lines().count(),
        1,
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--memory-shared"),
        "{}",
        refused.stderr
    );
    assert_eq!(source.get("/migration").json()["state"], "idle");
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn a_receiver_without_local_mode_is_refused_and_the_guest_runs_on() {
    let scratch = common::Scratch::new("migrate-local-old");
    let path = format!("{}/m.sock", scratch.path());
    // A sie of protocol 2.0: it answers the hello and would take pages,
    // but knows no local layout.
    let old = common::fake_peer::fake_destination(&path, move |mut conn| {
        wire::write_message(&mut conn, &Message::Hello(wire::PROTOCOL_MAJOR, 0)).expect("hello");
        wire::read_message(&mut conn)
    });
    let (source, out) = counting("migrate-local-old-source", true, 1_000_000, &[]);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    let next = old.join().expect("the old receiver");
    // What reached it was the reason, not a layout.
    assert!(
        matches!(&next, Ok(Message::Abort(reason)) if reason.contains("has no local mode")),
        "{next:?}"
    );
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "speaks migration protocol {}.0, which has no local mode",
            wire::PROTOCOL_MAJOR
        )) && !error.contains('\n'),
        "{status}"
    );
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

/// Sends `frames` (then one byte without descriptors) to a fresh
/// receiving sie and returns its exit code and stderr.
fn receiver_fed(name: &str, frames: &[u8]) -> (Option<i32>, String) {
    let mut dest = ApiVm::start(name, &[]);
    let path = format!("{}/m.sock", dest.dir.path());
    let receive = serde_json::json!({ "receiver_url": format!("unix:{path}") });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let mut conn = UnixStream::connect(&path).expect("connect");
    conn.write_all(frames).expect("frames");
    // The byte the descriptors would ride on, with none.
    let _ = conn.write_all(b"M");
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    dest.wait()
}

fn local_layout() -> Vec<u8> {
    let mut frames = Vec::new();
    wire::send_hello(&mut frames).expect("hello");
    let layout = Message::LocalLayout(vec![RegionEntry {
        guest_addr: 0,
        len: 32 << 20,
    }]);
    wire::write_message(&mut frames, &layout).expect("layout");
    frames
}

#[test]
fn a_local_layout_without_its_descriptors_is_refused_in_one_line() {
    let (code, stderr) = receiver_fed("migrate-local-nofds", &local_layout());
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("expected 1 guest memory descriptors, the source passed 0"),
        "{stderr}"
    );
}

#[test]
fn a_damaged_or_unknown_local_message_is_refused_in_one_line() {
    let mut damaged = local_layout();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let (code, stderr) = receiver_fed("migrate-local-damaged", &damaged);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("damaged (frame checksum mismatch)"),
        "{stderr}"
    );

    // A frame type no sie knows where the layout belongs: a newer
    // source's message this sie cannot honour.
    let mut unknown = Vec::new();
    wire::send_hello(&mut unknown).unwrap();
    let mut frame = vec![0x42u8, 0, 0, 0, 0];
    frame.extend_from_slice(&xxh3_seeded(&frame, &[]).to_le_bytes());
    unknown.extend_from_slice(&frame);
    let (code, stderr) = receiver_fed("migrate-local-unknown", &unknown);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unknown migration message type 66"),
        "{stderr}"
    );
}

/// A receiver makes its VM on the handed-over RAM while the source's guest
/// still runs: it says `Prepared` (protocol 2.2) to a source that knows the
/// message, which pauses only then, and stays silent to a 2.1 source.
#[test]
fn a_receiver_says_prepared_only_to_a_source_that_knows_it() {
    for (minor, prepared) in [(1, false), (wire::PROTOCOL_MINOR, true)] {
        let mut dest = ApiVm::start(&format!("migrate-local-prepared-{minor}"), &[]);
        let path = format!("{}/m.sock", dest.dir.path());
        let receive = serde_json::json!({ "receiver_url": format!("unix:{path}") });
        dest.ok("PUT", "/migration/receive", &receive.to_string());
        let mut conn = UnixStream::connect(&path).expect("connect");
        let hello = Message::Hello(wire::PROTOCOL_MAJOR, minor);
        wire::write_message(&mut conn, &hello).expect("hello");
        assert!(matches!(
            wire::read_message(&mut conn),
            Ok(Message::Hello(..))
        ));
        // Guest RAM as a sharing source makes it: a sealed memfd.
        let ram = sie_vmm::shared_memory::create(&[(vm_memory::GuestAddress(0), 32 << 20)])
            .expect("shared memory");
        let shared = sie_vmm::shared_memory::memfds(&ram).expect("its memfd");
        let layout = Message::LocalLayout(shared.iter().map(|(entry, _)| *entry).collect());
        wire::write_message(&mut conn, &layout).expect("layout");
        let fds: Vec<_> = shared
            .iter()
            .map(|(_, file)| std::os::fd::AsRawFd::as_raw_fd(*file))
            .collect();
        sie_vmm::migration::local::send_fds(&conn, &fds).expect("the memory");
        conn.set_read_timeout(Some(std::time::Duration::from_secs(if prepared {
            30
        } else {
            2
        })))
        .expect("timeout");
        let answer = wire::read_message(&mut conn);
        if prepared {
            assert!(matches!(answer, Ok(Message::Prepared)), "{answer:?}");
        } else {
            assert!(
                matches!(&answer, Err(wire::WireError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock),
                "a 2.1 source got {answer:?}"
            );
        }
        wire::write_message(&mut conn, &Message::Abort("only a test".into())).expect("abort");
        let (code, stderr) = dest.wait();
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains("the source aborted: only a test"),
            "{stderr}"
        );
    }
}

/// The frame checksum (see `wire`): the payload's xxh3, seeded with the
/// header's first five bytes.
fn xxh3_seeded(header: &[u8], payload: &[u8]) -> u64 {
    let mut seed = [0u8; 8];
    seed[..5].copy_from_slice(&header[..5]);
    twox_hash::XxHash3_64::oneshot_with_seed(u64::from_le_bytes(seed), payload)
}

#[test]
fn a_snapshot_of_shared_memory_restores_shared_and_moves_locally() {
    let scratch = common::Scratch::new("migrate-local-snap");
    let snap = format!("{}/vm.snap", scratch.path());
    let mem = format!("{}/vm.mem", scratch.path());
    let url = format!("unix:{}/m.sock", scratch.path());
    // Far enough that the restored guest is still counting when it moves.
    const FAR: u32 = 300;
    let (first, first_out) = counting("migrate-local-snap-first", true, FAR, &[]);
    counter::pause_after(&first, &first_out, 8);
    let body =
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem});
    first.ok("PUT", "/snapshot/create", &body.to_string());
    let (code, stderr) = first.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let counted_first = first_out.lock().expect("output lock").clone();

    // Another backend cannot give shared memory: refused in one line.
    let lazy = ApiVm::start("migrate-local-snap-lazy", &[]);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "Lazy", "backend_path": mem},
    });
    lazy.call("PUT", "/snapshot/load", Some(&load.to_string()))
        .expect_fault("load it with the File backend");
    let _ = lazy.terminate();

    let mut dest = ApiVm::start("migrate-local-snap-dest", &[]);
    let dest_out = capture(&mut dest);
    let receive = serde_json::json!({ "receiver_url": url });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let mut restored = ApiVm::start("migrate-local-snap-restored", &[]);
    let restored_out = capture(&mut restored);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    restored.ok("PUT", "/snapshot/load", &load.to_string());
    let at = last_count(&first_out);
    wait_for("the restored guest to count", || {
        last_count(&restored_out) > at + 2
    });
    moves_locally(&mut restored, &url, &mut dest);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let middle = restored_out.lock().expect("output lock").clone();
    let last = dest_out.lock().expect("output lock").clone();
    assert_eq!(
        format!("{counted_first}{middle}{last}"),
        counter::full_count(FAR)
    );
}

#[test]
fn a_shared_memory_guest_also_moves_by_copy_and_arrives_in_private_memory() {
    let scratch = common::Scratch::new("migrate-shared-copy");
    let url = format!("unix:{}/m.sock", scratch.path());
    let mut dest = ApiVm::start("migrate-shared-copy-dest", &[]);
    let dest_out = capture(&mut dest);
    let receive = serde_json::json!({ "receiver_url": url });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let (mut source, source_out) = counting("migrate-shared-copy-source", true, 300, &[]);
    let config = source.get("/vm/config").json();
    assert_eq!(config["machine-config"]["shared_memory"], true, "{config}");
    let send = serde_json::json!({ "destination_url": url });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("pre-copy rounds"), "{stderr}");
    // Its pages were copied: the receiver's RAM is its own, and its
    // configuration no longer claims shared memory.
    let pages = dest.get("/migration").json()["pages"].as_u64();
    assert!(pages > Some(0), "{pages:?}");
    let config = dest.get("/vm/config").json();
    assert_eq!(
        config["machine-config"]["mem_size_mib"], GUEST_MIB,
        "{config}"
    );
    assert_eq!(
        config["machine-config"].get("shared_memory"),
        None,
        "{config}"
    );
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    assert_eq!(format!("{before}{after}"), counter::full_count(300));
}

#[test]
fn sie_run_memory_shared_boots_and_refuses_huge_pages_in_one_line() {
    let run = sie(&[
        "run",
        "--kernel",
        sie_guests::COUNTER.path,
        "--cmdline",
        "limit=5 delay=1000",
        "--memory-shared",
    ]);
    run.expect_code(0);
    assert_eq!(run.stdout, counter::full_count(5));

    let scratch = common::Scratch::new("memory-shared-huge");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": sie_guests::COUNTER.path},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32, "huge_pages": "2M"},
    });
    let path = scratch.file("vm.json", config.to_string().as_bytes());
    sie(&["run", "--config-file", &path, "--memory-shared"])
        .expect_one_line_error("shared_memory is for base pages only");
}

/// How a fake receiver ends once it has the state.
#[derive(Clone, Copy)]
enum FakeEnd {
    /// It refuses the state (`Abort`).
    Refuse,
    /// It hangs up without a `Ready`.
    HangUpBeforeReady,
    /// It answers `Ready`, takes the source's `Go`, and hangs up without
    /// a `Done`.
    HangUpAfterGo,
}

/// A receiver of protocol 2.1 that takes the layout, the memfds and the
/// state, then ends as `end` says; it returns how many memfds it took and
/// the last message it read.
fn fake_local_receiver(path: &str, end: FakeEnd) -> std::thread::JoinHandle<(usize, Message)> {
    common::fake_peer::fake_destination(path, move |mut conn| {
        // 2.1: the source must not wait for a `Prepared` it never sends.
        let hello = Message::Hello(wire::PROTOCOL_MAJOR, 1);
        wire::write_message(&mut conn, &hello).expect("hello");
        let Ok(Message::LocalLayout(layout)) = wire::read_message(&mut conn) else {
            panic!("no local layout");
        };
        let files = sie_vmm::migration::local::recv_fds(&conn, layout.len()).expect("the memfds");
        let state = wire::read_message(&mut conn).expect("the state");
        assert!(matches!(state, Message::State(_)), "{}", state.name());
        let last = match end {
            FakeEnd::Refuse => {
                wire::write_message(&mut conn, &Message::Abort("no room".into())).expect("abort");
                state
            }
            FakeEnd::HangUpBeforeReady => state,
            FakeEnd::HangUpAfterGo => {
                wire::write_message(&mut conn, &Message::Ready).expect("ready");
                wire::read_message(&mut conn).expect("the source's go")
            }
        };
        (files.len(), last)
    })
}

#[test]
fn a_receiver_that_refuses_after_the_state_leaves_the_guest_running_here() {
    let scratch = common::Scratch::new("migrate-local-refused");
    let path = format!("{}/m.sock", scratch.path());
    let fake = fake_local_receiver(&path, FakeEnd::Refuse);
    let (source, out) = counting("migrate-local-refused-source", true, 1_000_000, &[]);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    assert!(fake.join().expect("the fake receiver").0 >= 1);
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    assert_eq!(
        status["error"], "the destination refused: no room",
        "{status}"
    );
    assert_eq!(source.state(), "Running");
    let at = last_count(&out);
    wait_for("the guest to count on", || last_count(&out) > at + 2);
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn a_receiver_that_hangs_up_before_ready_leaves_the_guest_running_here() {
    let scratch = common::Scratch::new("migrate-local-hangup");
    let path = format!("{}/m.sock", scratch.path());
    let fake = fake_local_receiver(&path, FakeEnd::HangUpBeforeReady);
    let (source, out) = counting("migrate-local-hangup-source", true, 1_000_000, &[]);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    assert!(fake.join().expect("the fake receiver").0 >= 1);
    // No `Go` left: the receiver never runs the guest, so it runs on here.
    fails_before_the_go_and_counts_on(source, &out);
}

#[test]
fn a_receiver_that_hangs_up_after_the_go_leaves_the_guest_paused_here_for_good() {
    let scratch = common::Scratch::new("migrate-local-aftergo");
    let path = format!("{}/m.sock", scratch.path());
    let fake = fake_local_receiver(&path, FakeEnd::HangUpAfterGo);
    let (source, out) = counting("migrate-local-aftergo-source", true, 1_000_000, &[]);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (files, last) = fake.join().expect("the fake receiver");
    assert!(files >= 1);
    assert_eq!(last, Message::Go);
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    // It may run there on the same memory: it must not run here too.
    assert_eq!(source.state(), "Paused");
    let status = source.get("/migration").json();
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("lost after the go")
            && error.contains("the destination may be running the VM")
            && !error.contains('\n'),
        "{status}"
    );
    let at = last_count(&out);
    // Neither a resume nor another send may run a second copy.
    source
        .call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
        .expect_fault("the destination may be running the VM");
    let again = serde_json::json!({ "destination_url": format!("unix:{path}"), "local": true });
    source
        .call("PUT", "/migration/send", Some(&again.to_string()))
        .expect_fault("the destination may be running the VM");
    assert_eq!(source.state(), "Paused");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(last_count(&out), at, "the guest counted on here");
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

/// Where a local relay cuts the link.
#[derive(Clone, Copy, Debug, PartialEq)]
enum LocalCut {
    /// The destination's `Ready` is dropped: the source never sends `Go`.
    DropReady,
    /// `Go` reaches the destination, its `Done` is dropped.
    DropDone,
}

/// A relay between a local-mode source (on `listener`) and a real
/// destination at `destination` that passes the memfds on, faithful
/// until `cut`.
fn local_relay(
    listener: UnixListener,
    destination: String,
    cut: LocalCut,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (mut source, _) = listener.accept().expect("the source");
        let mut dest = UnixStream::connect(&destination).expect("the destination");
        let pass = |from: &mut UnixStream, to: &mut UnixStream| {
            let message = wire::read_message(from).expect("a message to relay");
            wire::write_message(to, &message).expect("relaying a message");
            message
        };
        assert!(matches!(pass(&mut source, &mut dest), Message::Hello(..)));
        assert!(matches!(pass(&mut dest, &mut source), Message::Hello(..)));
        let Message::LocalLayout(layout) = pass(&mut source, &mut dest) else {
            panic!("no local layout");
        };
        let files = sie_vmm::migration::local::recv_fds(&source, layout.len()).expect("memfds");
        let fds: Vec<_> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
        sie_vmm::migration::local::send_fds(&dest, &fds).expect("passing the memfds on");
        // 2.2: the destination made its VM on them before the pause.
        assert_eq!(pass(&mut dest, &mut source), Message::Prepared);
        assert!(matches!(pass(&mut source, &mut dest), Message::State(_)));
        if cut == LocalCut::DropReady {
            let ready = wire::read_message(&mut dest).expect("the destination's answer");
            assert_eq!(ready, Message::Ready);
            return;
        }
        assert_eq!(pass(&mut dest, &mut source), Message::Ready);
        assert_eq!(pass(&mut source, &mut dest), Message::Go);
        let done = wire::read_message(&mut dest).expect("the destination's done");
        assert_eq!(done, Message::Done);
        // Both links close here, the `Done` dropped.
    })
}

/// A receiving sie, a relay cutting at `cut` and the URL a source sends to.
fn relayed_destination(
    scratch: &common::Scratch,
    name: &str,
    cut: LocalCut,
) -> (
    ApiVm,
    Arc<Mutex<String>>,
    std::thread::JoinHandle<()>,
    String,
) {
    let mut dest = ApiVm::start(name, &[]);
    let dest_out = capture(&mut dest);
    let dest_path = format!("{}/dest.sock", scratch.path());
    let receive = serde_json::json!({ "receiver_url": format!("unix:{dest_path}") });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let relay_path = format!("{}/relay.sock", scratch.path());
    let listener = UnixListener::bind(&relay_path).expect("bind the relay");
    let relay = local_relay(listener, dest_path, cut);
    (dest, dest_out, relay, format!("unix:{relay_path}"))
}

#[test]
fn a_done_lost_after_the_go_leaves_the_guest_running_at_the_destination_only() {
    const FAR: u32 = 300;
    let scratch = common::Scratch::new("migrate-local-nodone");
    let (mut dest, dest_out, relay, url) =
        relayed_destination(&scratch, "migrate-local-nodone-dest", LocalCut::DropDone);
    let (source, source_out) = counting("migrate-local-nodone-source", true, FAR, &[]);
    let send = serde_json::json!({ "destination_url": url, "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    relay.join().expect("the relay");
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    // The go left: the guest runs on at the destination, on the same
    // memory, and never again here.
    assert_eq!(source.state(), "Paused");
    let error = source.get("/migration").json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("lost after the go")
            && error.contains("the destination may be running the VM"),
        "{error}"
    );
    source
        .call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
        .expect_fault("the destination may be running the VM");
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(source.state(), "Paused");
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    assert!(!after.is_empty(), "the destination printed nothing");
    assert_eq!(format!("{before}{after}"), counter::full_count(FAR));
}

#[test]
fn a_destination_whose_ready_is_lost_never_runs_the_guest_and_the_source_runs_on() {
    let scratch = common::Scratch::new("migrate-local-noready");
    let (mut dest, dest_out, relay, url) =
        relayed_destination(&scratch, "migrate-local-noready-dest", LocalCut::DropReady);
    let (source, out) = counting("migrate-local-noready-source", true, 1_000_000, &[]);
    let send = serde_json::json!({ "destination_url": url, "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    relay.join().expect("the relay");
    // The destination built the guest on the shared memory but, without a
    // `Go`, never ran it.
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no go from the source (the VM never ran here)"),
        "{stderr}"
    );
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        dest_out.lock().expect("output lock").as_str(),
        "",
        "the destination ran the guest"
    );
    fails_before_the_go_and_counts_on(source, &out);
}

#[test]
fn a_locally_moved_guest_moves_locally_again() {
    const FAR: u32 = 300;
    let scratch = common::Scratch::new("migrate-local-twice");
    let first_url = format!("unix:{}/a.sock", scratch.path());
    let second_url = format!("unix:{}/b.sock", scratch.path());
    let mut middle = ApiVm::start("migrate-local-twice-middle", &[]);
    let middle_out = capture(&mut middle);
    let receive = serde_json::json!({ "receiver_url": first_url });
    middle.ok("PUT", "/migration/receive", &receive.to_string());
    let mut last = ApiVm::start("migrate-local-twice-last", &[]);
    let last_out = capture(&mut last);
    let receive = serde_json::json!({ "receiver_url": second_url });
    last.ok("PUT", "/migration/receive", &receive.to_string());

    let (mut source, source_out) = counting("migrate-local-twice-source", true, FAR, &[]);
    let send = serde_json::json!({ "destination_url": first_url, "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    // The RAM it runs on is still the first sie's memfds: shared.
    let config = middle.get("/vm/config").json();
    assert_eq!(config["machine-config"]["shared_memory"], true, "{config}");
    let at = last_count(&source_out);
    wait_for("the guest to count in the middle", || {
        last_count(&middle_out) > at + 2
    });
    moves_locally(&mut middle, &second_url, &mut last);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let counted = [&source_out, &middle_out, &last_out]
        .map(|out| out.lock().expect("output lock").clone())
        .concat();
    assert_eq!(counted, counter::full_count(FAR));
}

/// The send failed while waiting for the destination, before any `Go`
/// left: the source says so (not "may be running"), runs the guest on, and
/// its count goes on.
fn fails_before_the_go_and_counts_on(source: ApiVm, out: &Mutex<String>) {
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("waiting for the destination") && !error.contains("may be running"),
        "{status}"
    );
    assert_eq!(source.state(), "Running");
    let at = last_count(out);
    wait_for("the guest to count on", || last_count(out) > at + 2);
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

/// `source` hands its VM to `dest` (listening on `url`) in local mode:
/// the source exits 0 saying so, and the destination, its guest at the
/// end of its count, exits 0 too.
fn moves_locally(source: &mut ApiVm, url: &str, dest: &mut ApiVm) {
    let send = serde_json::json!({ "destination_url": url, "local": true });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("in local mode"), "{stderr}");
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
}
