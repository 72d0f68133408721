//! Post-copy migration on the real /dev/kvm: a guest that counts and
//! dirties memory moves with none of its memory, runs on the destination
//! at once and fetches its pages there on demand while the source pushes
//! the rest; its count goes on exactly where it was. A page the guest
//! asks for is sent even when the push would never send it. A link cut
//! during post-copy loses the guest: the destination exits in one line and
//! the source stays paused. `auto` turns to post-copy when pre-copy runs
//! out of time, and the count goes on exactly.

mod common;

use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use common::api::ApiVm;
use common::counter::{self, capture, last_count, wait_for};
use sie_vmm::migration::wire::{self, Message};

const LIMIT: u32 = 60;

#[test]
fn a_dirtying_guest_moves_in_post_copy_and_counts_on_exactly() {
    let scratch = common::Scratch::new("postcopy");
    let url = format!("unix:{}/m.sock", scratch.path());
    let dest_metrics = format!("{}/dest-metrics.json", scratch.path());
    let mut dest = ApiVm::start("postcopy-dest", &["--metrics-path", &dest_metrics]);
    let dest_out = capture(&mut dest);
    let receive = serde_json::json!({ "receiver_url": url });
    dest.ok("PUT", "/migration/receive", &receive.to_string());

    let mut source = ApiVm::start("postcopy-source", &[]);
    let source_out = capture(&mut source);
    source.boot(
        sie_guests::COUNTER.path,
        &format!("limit={LIMIT} delay=20000 dirty=256"),
    );
    wait_for("a few counts", || last_count(&source_out) >= 5);
    let sock = source.sock.display().to_string();
    common::sie(&[
        "ctl", "--sock", &sock, "migrate", "send", &url, "--mode", "postcopy",
    ])
    .expect_code(0);
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("the VM migrated to {url} in post-copy (")),
        "{stderr}"
    );
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(0), "{stderr}");
    // Every page arrived after the state: the destination counted them.
    let text = std::fs::read_to_string(&dest_metrics).expect("the metrics file");
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next_back().expect("a line")).expect("JSON");
    let taken = &line["migration"];
    assert_eq!(taken["state"], "completed", "{taken}");
    assert!(taken["pages"].as_u64().is_some_and(|p| p > 0), "{taken}");
    std::thread::sleep(Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    assert!(!after.is_empty(), "the destination printed nothing");
    assert_eq!(format!("{before}{after}"), counter::full_count(LIMIT));
}

/// A page the tiny guest never touches (the last of its 32 MiB): zeros,
/// so the source's push skips it and only a request brings it.
const UNTOUCHED: u64 = (32 << 20) - 4096;

#[test]
fn the_source_answers_a_page_request_the_push_would_never_send() {
    let scratch = common::Scratch::new("postcopy-request");
    let path = format!("{}/m.sock", scratch.path());
    // A destination that takes the state, asks for one page after the go,
    // and reads everything until `Complete` and the answer.
    let fake = common::fake_peer::fake_destination(&path, move |mut conn| {
        wire::send_hello(&mut conn).expect("hello");
        assert!(matches!(
            wire::read_message(&mut conn),
            Ok(Message::Layout(_))
        ));
        assert_eq!(wire::read_message(&mut conn).ok(), Some(Message::Postcopy));
        assert!(matches!(
            wire::read_message(&mut conn),
            Ok(Message::State(_))
        ));
        wire::write_message(&mut conn, &Message::Ready).expect("ready");
        assert_eq!(wire::read_message(&mut conn).ok(), Some(Message::Go));
        wire::write_message(&mut conn, &Message::Request(UNTOUCHED)).expect("request");
        let mut answered = None;
        let mut pushed = 0;
        let mut complete = false;
        // The answer may come before `Complete` or after it (the source
        // answers requests until `Done`).
        while !complete || answered.is_none() {
            match wire::read_message(&mut conn).expect("pages") {
                Message::Pages(runs) => {
                    for run in runs {
                        if run.guest_addr == UNTOUCHED {
                            answered = Some(run.bytes);
                        } else {
                            pushed += 1;
                        }
                    }
                }
                Message::Complete => complete = true,
                other => panic!("unexpected {}", other.name()),
            }
        }
        wire::write_message(&mut conn, &Message::Done).expect("done");
        let zeros = answered.map(|page| page.len() == 4096 && page.iter().all(|b| *b == 0));
        (zeros, pushed)
    });
    let mut source = ApiVm::start("postcopy-request-source", &[]);
    let out = capture(&mut source);
    source.boot(
        sie_guests::COUNTER.path,
        "limit=1000000 delay=20000 dirty=16",
    );
    wait_for("a few counts", || last_count(&out) >= 5);
    let send = serde_json::json!({ "destination_url": format!("unix:{path}"), "mode": "postcopy" });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (answered, pushed) = fake.join().expect("the fake destination");
    assert_eq!(answered, Some(true), "the page asked for, as zeros");
    assert!(pushed > 0, "nothing was pushed");
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let asked: u64 = stderr
        .split("in post-copy (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .expect("the pages asked for in the source's last line");
    assert!(asked >= 1, "{stderr}");
}

#[test]
fn a_link_lost_during_post_copy_loses_the_guest_on_both_sides_in_one_line() {
    let scratch = common::Scratch::new("postcopy-cut");
    let mut dest = ApiVm::start("postcopy-cut-dest", &[]);
    let dest_path = format!("{}/dest.sock", scratch.path());
    let receive = serde_json::json!({ "receiver_url": format!("unix:{dest_path}") });
    dest.ok("PUT", "/migration/receive", &receive.to_string());
    let relay_path = format!("{}/relay.sock", scratch.path());
    let listener = UnixListener::bind(&relay_path).expect("bind the relay");
    // Faithful up to the go, then the link is cut: the destination's
    // guest runs with none of its memory.
    let relay = std::thread::spawn(move || {
        let (mut source, _) = listener.accept().expect("the source");
        let mut dest = UnixStream::connect(&dest_path).expect("the destination");
        let pass = |from: &mut UnixStream, to: &mut UnixStream| {
            let message = wire::read_message(from).expect("a message to relay");
            wire::write_message(to, &message).expect("relaying");
            message
        };
        assert!(matches!(pass(&mut source, &mut dest), Message::Hello(..)));
        assert!(matches!(pass(&mut dest, &mut source), Message::Hello(..)));
        while !matches!(pass(&mut source, &mut dest), Message::State(_)) {}
        // Requests may come before the ready (sie touching guest RAM).
        while pass(&mut dest, &mut source) != Message::Ready {}
        while pass(&mut source, &mut dest) != Message::Go {}
    });
    let mut source = ApiVm::start("postcopy-cut-source", &[]);
    let out = capture(&mut source);
    source.boot(
        sie_guests::COUNTER.path,
        "limit=1000000 delay=20000 dirty=16",
    );
    wait_for("a few counts", || last_count(&out) >= 5);
    let send =
        serde_json::json!({ "destination_url": format!("unix:{relay_path}"), "mode": "postcopy" });
    source.ok("PUT", "/migration/send", &send.to_string());
    relay.join().expect("the relay");
    let (code, stderr) = dest.wait();
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("lost during post-copy, the guest is lost"),
        "{stderr}"
    );
    wait_for("the send to fail", || {
        source.get("/migration").json()["state"] == "failed"
    });
    let status = source.get("/migration").json();
    assert!(
        status["error"]
            .as_str()
            .is_some_and(|e| e.contains("the destination may be running the VM")),
        "{status}"
    );
    assert_eq!(source.state(), "Paused");
    let (code, _) = source.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn auto_turns_to_post_copy_when_pre_copy_runs_out_of_time_and_the_count_goes_on() {
    let scratch = common::Scratch::new("postcopy-auto");
    let url = format!("unix:{}/m.sock", scratch.path());
    let mut dest = ApiVm::start("postcopy-auto-dest", &[]);
    let dest_out = capture(&mut dest);
    let receive = serde_json::json!({ "receiver_url": url });
    dest.ok("PUT", "/migration/receive", &receive.to_string());

    // 4 MiB dirtied over and over, a link of 1 MiB/s and a timeout of 1 s:
    // the first pass alone outlasts the timeout, so the first round turns
    // to post-copy (the pages dirtied meanwhile are dropped there and
    // pushed again after the go).
    let mut source = ApiVm::start("postcopy-auto-source", &[]);
    let source_out = capture(&mut source);
    source.boot(
        sie_guests::COUNTER.path,
        "limit=100000000 delay=20000 dirty=1024",
    );
    wait_for("a few counts", || last_count(&source_out) >= 5);
    let send = serde_json::json!({
        "destination_url": url,
        "mode": "auto",
        "timeout_s": 1,
        "max_bandwidth_mib_s": 1,
        "auto_converge": false,
    });
    source.ok("PUT", "/migration/send", &send.to_string());
    let (code, stderr) = source.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the VM migrated to {url} after 0 pre-copy rounds, then in post-copy ("
        )),
        "{stderr}"
    );
    let moved_at = last_count(&source_out);
    wait_for("the guest to count on there", || {
        last_count(&dest_out) > moved_at + 5
    });
    let (code, _) = dest.terminate();
    assert_eq!(code, Some(143));
    std::thread::sleep(Duration::from_millis(50));
    let before = source_out.lock().expect("output lock").clone();
    let after = dest_out.lock().expect("output lock").clone();
    let both = format!("{before}{after}");
    // Up to the last whole line: the guest may have been stopped mid-line.
    let whole = &both[..both.rfind('\n').map_or(0, |at| at + 1)];
    assert_eq!(whole, counter::full_count(last_count(&dest_out)));
}
