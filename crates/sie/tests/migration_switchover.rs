//! The two-phase switch-over on the real /dev/kvm: a real source and a
//! real destination talk through a relay written here that cuts the link
//! at one point of the switch-over. Whatever is cut, the counting guest
//! runs on one host at most: cut before the destination's `Ready` reaches
//! the source (or before the source's `Go` can leave), it counts on at the
//! source; cut after `Go` left, it stays paused at the source, which says
//! the destination may run it. A destination that never sees `Go` never
//! runs the guest and ends in one line.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use common::api::ApiVm;
use common::counter::{capture, last_count, wait_for};
use sie_vmm::migration::wire::{self, Message};

/// Where the relay cuts the link.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The destination's `Ready` is dropped: the source never gets it.
    BeforeReady,
    /// The source's side stops reading, then gets `Ready`: its `Go`
    /// cannot leave.
    GoCannotLeave,
    /// `Go` left the source but is dropped: neither side runs the guest.
    AfterGo,
}

/// Reads one message from `from`, passes it to `to`, returns it.
fn pass(from: &mut UnixStream, to: &mut UnixStream) -> Message {
    let message = wire::read_message(from).expect("a message to relay");
    wire::write_message(to, &message).expect("relaying a message");
    message
}

/// A relay between a source (on `listener`) and the destination at
/// `destination`, faithful until `cut`; it returns what it saw last.
fn relay(listener: UnixListener, destination: String, cut: Cut) -> JoinHandle<Message> {
    std::thread::spawn(move || {
        let (mut source, _) = listener.accept().expect("the source");
        let mut dest = UnixStream::connect(&destination).expect("the destination");
        assert!(matches!(pass(&mut source, &mut dest), Message::Hello(..)));
        assert!(matches!(pass(&mut dest, &mut source), Message::Hello(..)));
        while !matches!(pass(&mut source, &mut dest), Message::State(_)) {}
        let ready = wire::read_message(&mut dest).expect("the destination's answer");
        assert_eq!(ready, Message::Ready);
        match cut {
            Cut::BeforeReady => ready,
            Cut::GoCannotLeave => {
                source.shutdown(std::net::Shutdown::Read).expect("shutdown");
                wire::write_message(&mut source, &ready).expect("ready");
                ready
            }
            Cut::AfterGo => {
                wire::write_message(&mut source, &ready).expect("ready");
                wire::read_message(&mut source).expect("the source's go")
            }
        }
        // Both links close here.
    })
}

/// What a cut switch-over left.
struct AfterCut {
    /// The source sie, still up.
    source: ApiVm,
    /// Its console.
    source_out: Arc<Mutex<String>>,
    /// The destination's exit code and stderr.
    dest_end: (Option<i32>, String),
    /// Everything the destination's console printed.
    dest_console: String,
}

/// A counting source, a receiving destination and a relay cutting at
/// `cut`, run until the destination exits.
fn switch_over_cut(name: &str, cut: Cut) -> AfterCut {
    let scratch = common::Scratch::new(name);
    let mut dest = ApiVm::start(&format!("{name}-dest"), &[]);
    let dest_out = capture(&mut dest);
    let dest_path = format!("{}/dest.sock", scratch.path());
    let receive = serde_json::json!({ "receiver_url": format!("unix:{dest_path}") });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let relay_path = format!("{}/relay.sock", scratch.path());
    let listener = UnixListener::bind(&relay_path).expect("bind the relay");
    let relay = relay(listener, dest_path, cut);

    let mut source = ApiVm::start(&format!("{name}-source"), &[]);
    let source_out = capture(&mut source);
    source.boot(
        sie_guests::COUNTER.path,
        "limit=1000000 delay=20000 dirty=16",
    );
    wait_for("a few counts", || last_count(&source_out) >= 5);
    let send = serde_json::json!({ "destination_url": format!("unix:{relay_path}") });
    source.ok("PUT", "/migration/send", &send.to_string());
    let last = relay.join().expect("the relay");
    match cut {
        Cut::AfterGo => assert_eq!(last, Message::Go),
        _ => assert_eq!(last, Message::Ready),
    }
    let dest_end = dest.wait();
    std::thread::sleep(std::time::Duration::from_millis(50));
    let dest_console = dest_out.lock().expect("output lock").clone();
    AfterCut {
        source,
        source_out,
        dest_end,
        dest_console,
    }
}

/// The destination never ran the guest and said why in one line.
fn destination_never_ran((code, stderr): &(Option<i32>, String), console: &str) {
    assert_eq!(*code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no go from the source (the VM never ran here)"),
        "{stderr}"
    );
    assert_eq!(console, "", "the destination ran the guest");
}

/// The source failed the send (saying `why`), and the guest counts on
/// there.
fn source_runs_on(source: ApiVm, out: &Mutex<String>, why: &str) {
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains(why) && !e.contains('\n') && !e.contains("may be running")),
        "{status}"
    );
    assert_eq!(source.state(), "Running");
    let at = last_count(out);
    wait_for("the guest to count on", || last_count(out) > at + 2);
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn a_ready_that_never_arrives_leaves_the_guest_running_at_the_source_only() {
    let after = switch_over_cut("switchover-no-ready", Cut::BeforeReady);
    destination_never_ran(&after.dest_end, &after.dest_console);
    source_runs_on(
        after.source,
        &after.source_out,
        "waiting for the destination",
    );
}

#[test]
fn a_go_that_cannot_leave_leaves_the_guest_running_at_the_source_only() {
    let after = switch_over_cut("switchover-go-stuck", Cut::GoCannotLeave);
    destination_never_ran(&after.dest_end, &after.dest_console);
    source_runs_on(after.source, &after.source_out, "sending the go to");
}

#[test]
fn a_link_lost_after_the_go_keeps_the_guest_paused_at_the_source() {
    let after = switch_over_cut("switchover-after-go", Cut::AfterGo);
    destination_never_ran(&after.dest_end, &after.dest_console);
    let source = after.source;
    wait_for("the migration to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    let error = status["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("lost after the go")
            && error.contains("the destination may be running the VM"),
        "{status}"
    );
    assert!(!error.contains('\n'), "{status}");
    assert_eq!(source.state(), "Paused");
    // Neither a resume nor another send may run a second copy.
    source
        .call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
        .expect_fault("the destination may be running the VM");
    source
        .call(
            "PUT",
            "/migration/send",
            Some(r#"{"destination_url": "unix:/nowhere"}"#),
        )
        .expect_fault("the destination may be running the VM");
    assert_eq!(source.state(), "Paused");
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    // Said once when it happened, and the exit line after it.
    assert!(
        stderr.contains("migration failed after the go:")
            && stderr.contains("the destination may be running the VM"),
        "{stderr}"
    );
}
