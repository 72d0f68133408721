//! Diff snapshots through the binary on the real /dev/kvm: a counting guest
//! with `track_dirty_pages` gets a Full snapshot, counts on, and gets a Diff
//! that holds only the few pages it wrote; `sie snapshot rebase` merges the
//! Diff onto a copy of the Full memory, and the guest restored from the
//! Diff's state and the merged memory counts on exactly where it stopped.
//! A create over an earlier pair frees that pair after it answers.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use common::api::ApiVm;
use common::counter::{self, capture, wait_for};
use common::sie;

const LIMIT: u32 = 40;

/// "count 1\n" .. "count LIMIT\n".
fn full_count() -> String {
    counter::full_count(LIMIT)
}

fn wait_for_output(out: &Mutex<String>, needle: &str) {
    wait_for(&format!("{needle:?}"), || {
        out.lock().expect("output lock").contains(needle)
    });
}

/// Bytes of `path` that hold data (SEEK_DATA/SEEK_HOLE), and its size.
fn data_bytes(path: &str) -> (u64, u64) {
    let file = std::fs::File::open(path).expect("open memory file");
    let len = file.metadata().expect("metadata").len();
    let fd = file.as_raw_fd();
    let (mut at, mut data) = (0i64, 0u64);
    loop {
        // SAFETY: lseek on a descriptor `file` owns; it moves only the offset.
        let start = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if start < 0 {
            break;
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        data += (end - start) as u64;
        at = end;
    }
    (data, len)
}

fn full_snapshot(vm: &ApiVm, snap: &str, mem: &str) {
    let body =
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
}

#[test]
fn a_diff_rebased_onto_its_full_snapshot_restores_the_guest_where_it_stopped() {
    let keep = common::Scratch::new("diff-files");
    let file = |name: &str| format!("{}/{name}", keep.path());
    let (full_snap, full_mem) = (file("full.snap"), file("full.mem"));
    let (diff_snap, diff_mem) = (file("diff.snap"), file("diff.mem"));

    let mut vm = ApiVm::start("diff-source", &[]);
    let out = capture(&mut vm);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": format!("limit={LIMIT} delay=20000"),
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32, "track_dirty_pages": true}"#,
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for_output(&out, "count 5\n");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    full_snapshot(&vm, &full_snap, &full_mem);
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_for_output(&out, "count 10\n");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    // The Diff through `sie ctl snapshot create --diff`.
    let sock = vm.sock.display().to_string();
    let diff = ["ctl", "--sock", &sock, "snapshot", "create", "--diff"];
    sie(&[&diff[..], &[&diff_snap, &diff_mem]].concat()).expect_code(0);
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    std::thread::sleep(Duration::from_millis(50));
    let before = out.lock().expect("output lock").clone();
    assert!(before.contains("count 10\n"), "{before}");
    assert!(!before.contains(&format!("count {LIMIT}\n")), "{before}");

    // The Diff is RAM-sized but holds only the pages the guest wrote while
    // it counted from 5 to 10: its count, its stack, a few more.
    let (full_data, full_len) = data_bytes(&full_mem);
    let (diff_data, diff_len) = data_bytes(&diff_mem);
    assert_eq!(diff_len, full_len);
    assert!(diff_data > 0, "the guest wrote its count");
    assert!(
        diff_data <= 16 * 4096,
        "a Diff of {diff_data} bytes (the Full one holds {full_data})"
    );
    assert!(diff_data < full_data);

    // Restoring the Diff needs its base: merge it onto a copy of the Full
    // memory, as a user keeps their base.
    let merged = file("merged.mem");
    std::fs::copy(&full_mem, &merged).expect("copy the Full memory");
    let rebased = sie(&["snapshot", "rebase", &diff_mem, &merged]);
    rebased.expect_code(0);
    let restored = sie(&["run", "--restore", &diff_snap, "--mem", &merged]);
    restored.expect_code(0);
    assert_eq!(format!("{before}{}", restored.stdout), full_count());

    // Loaded with track_dirty_pages, the restored VM can take a Diff at
    // once: only what changed since the load (its new generation id, little
    // else). Loaded without it, a Diff is refused by name.
    for track in [true, false] {
        let fresh = ApiVm::start(&format!("diff-load-{track}"), &[]);
        let load = serde_json::json!({
            "snapshot_path": diff_snap,
            "mem_backend": {"backend_type": "File", "backend_path": merged},
            "track_dirty_pages": track,
        });
        fresh.ok("PUT", "/snapshot/load", &load.to_string());
        let (again_snap, again_mem) = (file("again.snap"), file("again.mem"));
        let body = serde_json::json!({"snapshot_type": "Diff", "snapshot_path": again_snap, "mem_file_path": again_mem});
        if track {
            fresh.ok("PUT", "/snapshot/create", &body.to_string());
            let (data, _) = data_bytes(&again_mem);
            assert!(data > 0 && data <= 4 * 4096, "{data} bytes");
        } else {
            fresh
                .call("PUT", "/snapshot/create", Some(&body.to_string()))
                .expect_fault("Diff snapshots need dirty page tracking");
        }
        let (code, _) = fresh.terminate();
        assert_eq!(code, Some(143));
    }
}

#[test]
fn rebase_refuses_files_that_do_not_match_in_one_line() {
    let scratch = common::Scratch::new("rebase-refusals");
    let small = scratch.sparse("small.mem", 1 << 20);
    let large = scratch.sparse("large.mem", 2 << 20);
    sie(&["snapshot", "rebase", &small, &large]).expect_one_line_error("not the same VM's memory");
    sie(&["snapshot", "rebase", "/nonexistent.mem", &large])
        .expect_one_line_error("diff memory file /nonexistent.mem");
    sie(&["snapshot", "rebase", &small, "/nonexistent.mem"])
        .expect_one_line_error("base memory file /nonexistent.mem");
}

/// The hidden names a create keeps the replaced pair under until it frees
/// them (`.NAME.old-PID`).
fn old_files(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("scratch directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".old-"))
        .collect()
}

#[test]
fn the_pair_a_snapshot_replaces_is_freed_after_the_create_once_the_vm_runs_or_waited() {
    let keep = common::Scratch::new("diff-old-files");
    let (snap, mem) = (
        format!("{}/vm.snap", keep.path()),
        format!("{}/vm.mem", keep.path()),
    );
    let mut vm = ApiVm::start("diff-old-files", &[]);
    let out = capture(&mut vm);
    vm.boot(sie_guests::COUNTER.path, "limit=1000 delay=20000");
    wait_for_output(&out, "count 2\n");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    full_snapshot(&vm, &snap, &mem);
    assert!(old_files(&keep.path()).is_empty(), "nothing was replaced");
    full_snapshot(&vm, &snap, &mem);
    // Freeing the old memory file's blocks is left out of the create: the
    // paused VM does not wait for it.
    let mut kept = old_files(&keep.path());
    kept.sort();
    assert_eq!(kept.len(), 2, "the old pair, still named: {kept:?}");
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_for("the old pair freed after the resume", || {
        old_files(&keep.path()).is_empty()
    });
    // Left paused, the next replaced pair goes after a short grace.
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    full_snapshot(&vm, &snap, &mem);
    assert_eq!(old_files(&keep.path()).len(), 2);
    wait_for("the old pair freed while paused", || {
        old_files(&keep.path()).is_empty()
    });
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}
