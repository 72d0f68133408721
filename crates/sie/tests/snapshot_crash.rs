//! Crash safety of `PUT /snapshot/create` on the real /dev/kvm: sie is
//! killed with SIGKILL at moments spread over a create that replaces an
//! earlier snapshot at the same paths. What is left at those paths must
//! always restore into a guest that counts on correctly, from the earlier
//! snapshot or the new one; the one moment between the two files' renames
//! leaves a pair that a restore refuses in one line (the memory file's pair
//! id), never a guest that runs on the wrong memory.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::counter::{capture, pause_after};
use common::sie;

const LIMIT: u32 = 60;
const KILLS: u32 = 10;

/// What a restore of the pair at (`snap`, `mem`) shows: the first count the
/// restored guest prints, or the one-line refusal.
fn restore(snap: &str, mem: &str) -> Result<u32, String> {
    let run = sie(&["run", "--restore", snap, "--mem", mem]);
    if run.code != Some(0) {
        return Err(run.stderr.trim().to_string());
    }
    let counts: Vec<u32> = run
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("count ")?.parse().ok())
        .collect();
    let first = *counts.first().ok_or("the restored guest printed nothing")?;
    let expected: Vec<u32> = (first..=LIMIT).collect();
    assert_eq!(
        counts, expected,
        "the restored guest counts on without a gap"
    );
    Ok(first)
}

#[test]
fn a_create_killed_at_any_moment_leaves_a_snapshot_that_restores() {
    let keep = common::Scratch::new("snapshot-crash-files");
    let snap = format!("{}/vm.snap", keep.path());
    let mem = format!("{}/vm.mem", keep.path());
    let create =
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})
            .to_string();
    let mut create_time = Duration::ZERO;
    let (mut saw_old, mut saw_new) = (0, 0);
    for kill in 0..=KILLS {
        let mut vm = ApiVm::start("snapshot-crash", &[]);
        let out = capture(&mut vm);
        vm.boot(
            sie_guests::COUNTER.path,
            &format!("limit={LIMIT} delay=5000"),
        );
        // The earlier snapshot, complete.
        let old = pause_after(&vm, &out, 3);
        let started = Instant::now();
        vm.ok("PUT", "/snapshot/create", &create);
        if kill == 0 {
            create_time = started.elapsed();
        }
        vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
        let new = pause_after(&vm, &out, old + 3);
        assert!(new > old);
        // The new create, killed partway: moments spread from its start to
        // its measured length, and once after it answered.
        let delay = create_time * kill / KILLS;
        let mut stream = UnixStream::connect(&vm.sock).expect("connect");
        write!(
            stream,
            "PUT /snapshot/create HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{create}",
            create.len()
        )
        .expect("send");
        if kill == KILLS {
            // The last one is killed right after the create answered.
            let answer = common::api::read_answer(&mut std::io::BufReader::new(&stream));
            assert_eq!(answer.status, 204, "{}", answer.body);
        } else {
            std::thread::sleep(delay);
        }
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(vm.child.id() as i32, libc::SIGKILL) };
        let (code, _) = vm.wait();
        assert_eq!(code, None, "killed by a signal");

        match restore(&snap, &mem) {
            Ok(first) if first == old + 1 => saw_old += 1,
            Ok(first) if first == new + 1 => saw_new += 1,
            Ok(first) => panic!(
                "kill {kill} after {delay:?}: the restored guest went on from {first}, neither {old} nor {new}"
            ),
            Err(refusal) => {
                eprintln!("kill {kill} after {delay:?}: refused: {refusal}");
                assert!(
                    refusal.contains("belongs to another snapshot") && !refusal.contains('\n'),
                    "kill {kill} after {delay:?}: {refusal}"
                );
            }
        }
    }
    // Killed before it began, the earlier snapshot survives; killed after
    // the create answered, the new one is there.
    assert!(
        saw_old >= 1,
        "no kill left the earlier snapshot ({saw_new} new)"
    );
    assert!(
        saw_new >= 1,
        "no kill left the new snapshot ({saw_old} earlier)"
    );
    eprintln!("create takes {create_time:?}; restored: {saw_old} earlier, {saw_new} new");
}
