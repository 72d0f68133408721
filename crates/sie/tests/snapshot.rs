//! Snapshots through the binary on the real /dev/kvm: a guest that counts
//! in memory is paused and snapshotted through the API, and restored in a
//! new process (`sie run --restore`, and `PUT /snapshot/load`) where its
//! count goes on exactly where it stopped (with the memory file mapped,
//! served by an external userfaultfd handler, or served lazily by sie with
//! its working set recorded and prefetched); damaged files are refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::api::ApiVm;
use common::counter::{self, capture, wait_for};
use common::sie;

const LIMIT: u32 = 40;

/// "count 1\n" .. "count LIMIT\n".
fn full_count() -> String {
    counter::full_count(LIMIT)
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
    assert_eq!(
        paused.kvm_vms(),
        1,
        "the load built on the VM made while the API waited"
    );
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
    // A Uffd backend with no page-fault handler listening: a 400 naming
    // the socket, and the VMM stays up, still unconfigured.
    let no_handler = format!("{}/no-handler.sock", scratch.path());
    let load = serde_json::json!({"snapshot_path": snap, "mem_backend": {"backend_type": "Uffd", "backend_path": no_handler}});
    let answer = fresh.call("PUT", "/snapshot/load", Some(&load.to_string()));
    answer.expect_fault(&format!("the page-fault handler at {no_handler}"));
    assert!(
        !answer.json()["fault_message"]
            .as_str()
            .unwrap_or("")
            .contains('\n')
    );
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

/// A page-fault handler as Firecracker users write one: accepts sie on
/// `listener`, receives the JSON region list and the userfaultfd, and
/// serves every fault from the memory file `mem` until `stop`. Returns the
/// region list and how many faults it served.
fn serve_page_faults(
    listener: std::os::unix::net::UnixListener,
    mem: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<serde_json::Value>, usize)> {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    use sie_vmm::snapshot::uffd::{Event, Uffd};
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;

    std::thread::spawn(move || {
        let (stream, _) = listener.accept().expect("sie connects");
        let mut message = vec![0u8; 1 << 16];
        let (len, file) = stream.recv_with_fd(&mut message).expect("one message");
        let regions: Vec<serde_json::Value> =
            serde_json::from_slice(&message[..len]).expect("a JSON region list");
        let uffd = Uffd::from_fd(OwnedFd::from(file.expect("the userfaultfd")));
        let memory = std::fs::File::open(mem).expect("the memory file");
        let field =
            |region: &serde_json::Value, name: &str| region[name].as_u64().expect("a number field");
        let mut served = 0;
        while !stop.load(Ordering::Acquire) {
            let mut poll = libc::pollfd {
                fd: uffd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut poll, 1, 20) };
            while let Some(event) = uffd.read_event().expect("events") {
                let Event::PageFault(address, _) = event else {
                    continue;
                };
                let page = address & !4095;
                let region = regions
                    .iter()
                    .find(|r| {
                        let base = field(r, "base_host_virt_addr");
                        page >= base && page < base + field(r, "size")
                    })
                    .expect("a fault inside a region");
                let offset = field(region, "offset") + page - field(region, "base_host_virt_addr");
                let mut bytes = [0u8; 4096];
                memory.read_exact_at(&mut bytes, offset).expect("a page");
                uffd.copy(page, &bytes).expect("UFFDIO_COPY");
                served += 1;
            }
        }
        (regions, served)
    })
}

#[test]
fn a_guest_restored_through_a_uffd_handler_counts_on() {
    let keep = common::Scratch::new("snapshot-uffd-files");
    let (snap, mem, before) = snapshot_of_a_counting_guest("snapshot-uffd", &keep, false);
    let socket = format!("{}/uffd.sock", keep.path());
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = serve_page_faults(listener, mem.clone(), stop.clone());
    let restored = sie(&[
        "run",
        "--restore",
        &snap,
        "--mem",
        &socket,
        "--mem-backend",
        "uffd",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (regions, served) = handler.join().unwrap();
    restored.expect_code(0);
    assert_eq!(format!("{before}{}", restored.stdout), full_count());
    assert!(served > 0, "the guest's pages came through the handler");
    let region = &regions[0];
    assert_eq!(region["offset"], 0);
    assert_eq!(region["page_size"], 4096);
    assert_eq!(
        region["page_size_kib"], 4096,
        "Firecracker's name, in bytes"
    );
    assert!(region["base_host_virt_addr"].as_u64().unwrap() > 0);
}

/// Each sie thread's name and `Seccomp:` mode in process `pid`.
fn seccomp_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc") {
        let dir = task.expect("a task").path();
        let (Ok(name), Ok(status)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        if name.starts_with("kvm") {
            continue;
        }
        let mode = status
            .lines()
            .find_map(|line| line.strip_prefix("Seccomp:"))
            .expect("a Seccomp: line")
            .trim()
            .to_string();
        modes.push((name.trim().to_string(), mode));
    }
    modes.sort();
    modes
}

#[test]
fn a_lazy_restore_records_its_working_set_and_the_next_one_prefetches_it() {
    let keep = common::Scratch::new("snapshot-lazy-files");
    let (snap, mem, before) = snapshot_of_a_counting_guest("snapshot-lazy", &keep, false);
    let ws = format!("{mem}.ws");
    assert!(!std::path::Path::new(&ws).exists());

    // The first lazy load (through the API) records which pages the guest
    // touches, and writes them beside the memory file once faults pause.
    let mut first = ApiVm::start("snapshot-lazy-first", &[]);
    let out = capture(&mut first);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "Lazy", "backend_path": mem},
        "resume_vm": true,
    });
    first.ok("PUT", "/snapshot/load", &load.to_string());
    // The page-fault thread runs under its own filter, like every other.
    let modes = seccomp_modes(first.child.id());
    assert!(
        modes.iter().any(|(name, _)| name == "sie_uffd"),
        "{modes:?}"
    );
    for (name, mode) in &modes {
        assert_eq!(mode, "2", "thread {name}: {modes:?}");
    }
    wait_for("the working set", || std::path::Path::new(&ws).exists());
    let (code, stderr) = first.wait();
    assert_eq!(code, Some(0), "{stderr}");
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        format!("{before}{}", out.lock().expect("output lock")),
        full_count()
    );
    let recorded = std::fs::read(&ws).unwrap();
    assert_eq!(&recorded[..8], b"SIEWSET\x01");
    let pages = u64::from_le_bytes(recorded[24..32].try_into().unwrap());
    assert!(pages > 0, "the guest touched pages");
    assert_eq!(recorded.len() as u64, 32 + pages * (8 + 4096) + 8);

    // The next one installs that working set before the vCPUs run and says
    // how many pages; the count goes on all the same.
    let second = sie(&[
        "run",
        "--restore",
        &snap,
        "--mem",
        &mem,
        "--mem-backend",
        "lazy",
        "--log-level",
        "info",
    ]);
    second.expect_code(0);
    assert_eq!(format!("{before}{}", second.stdout), full_count());
    assert!(
        second.stderr.contains(&format!(
            "prefetched {pages} pages from the working set {ws}"
        )),
        "{}",
        second.stderr
    );

    // A damaged working set is ignored with a warning (and a new one is
    // recorded), never fatal.
    std::fs::write(&ws, &recorded[..recorded.len() / 2]).unwrap();
    let third = sie(&[
        "run",
        "--restore",
        &snap,
        "--mem",
        &mem,
        "--mem-backend",
        "lazy",
    ]);
    third.expect_code(0);
    assert_eq!(format!("{before}{}", third.stdout), full_count());
    assert!(
        third
            .stderr
            .contains(&format!("ignoring the working set {ws}: truncated")),
        "{}",
        third.stderr
    );

    // The page-fault thread's filter is really on: a system call outside it
    // (the debug build's test hook) ends sie with 148 and names the thread.
    let trapped = std::process::Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--restore", &snap, "--mem", &mem])
        .args(["--mem-backend", "lazy"])
        .env("SIE_TEST_FORBIDDEN_SYSCALL", "uffd")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(trapped.status.code(), Some(148));
    let stderr = String::from_utf8_lossy(&trapped.stderr);
    assert!(
        stderr.contains(&format!(
            "sie: seccomp: the uffd thread made system call {}, which its filter forbids",
            libc::SYS_getppid
        )),
        "{stderr}"
    );
}

#[test]
fn a_lazily_restored_guest_snapshots_again_whole_and_unrecorded() {
    let keep = common::Scratch::new("snapshot-lazy-again-files");
    let (snap, mem, before) = snapshot_of_a_counting_guest("snapshot-lazy-again", &keep, false);
    // Loaded lazily and left paused: none of its pages has been read yet.
    let paused = ApiVm::start("snapshot-lazy-again-load", &[]);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "Lazy", "backend_path": mem},
    });
    paused.ok("PUT", "/snapshot/load", &load.to_string());
    assert_eq!(paused.state(), "Paused");
    // A snapshot of it reads every page through sie's fault handler...
    let (again_snap, again_mem) = (
        format!("{}/again.snap", keep.path()),
        format!("{}/again.mem", keep.path()),
    );
    let create = serde_json::json!({"snapshot_path": again_snap, "mem_file_path": again_mem});
    paused.ok("PUT", "/snapshot/create", &create.to_string());
    // ...which are sie's reads, not the guest's working set: none is
    // recorded while the vCPUs have not run.
    std::thread::sleep(lazy_quiet() * 4);
    let ws = format!("{mem}.ws");
    assert!(
        !std::path::Path::new(&ws).exists(),
        "{ws} recorded sie's reads"
    );
    let writing = std::fs::read_dir(keep.path())
        .unwrap()
        .filter_map(|entry| entry.ok())
        .any(|entry| entry.file_name().to_string_lossy().contains(".ws.tmp"));
    assert!(!writing, "a working set is being written");
    let (code, stderr) = paused.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    // The new snapshot is whole: restored from its file, the count goes on.
    let restored = sie(&["run", "--restore", &again_snap, "--mem", &again_mem]);
    restored.expect_code(0);
    assert_eq!(format!("{before}{}", restored.stdout), full_count());
}

/// How long faults must pause before a lazy restore writes its working set.
fn lazy_quiet() -> Duration {
    sie_vmm::snapshot::lazy::QUIET
}

/// A lazily restored guest that ends at once (well within the quiet time
/// after which a working set is written) still leaves its working set: the
/// VMM has it written before the process exits.
#[test]
fn a_guest_that_ends_at_once_still_leaves_its_working_set() {
    let keep = common::Scratch::new("snapshot-lazy-short");
    let mut vm = ApiVm::start("snapshot-lazy-short-source", &[]);
    let out = capture(&mut vm);
    vm.boot(sie_guests::COUNTER.path, "limit=8 delay=20000");
    let stopped = counter::pause_after(&vm, &out, 6);
    assert!(stopped < 8, "paused before the end ({stopped})");
    let (snap, mem) = (
        format!("{}/vm.snap", keep.path()),
        format!("{}/vm.mem", keep.path()),
    );
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    vm.terminate();

    let started = std::time::Instant::now();
    let restored = sie(&[
        "run",
        "--restore",
        &snap,
        "--mem",
        &mem,
        "--mem-backend",
        "lazy",
    ]);
    restored.expect_code(0);
    assert!(
        restored.stdout.ends_with("count 8\n"),
        "{}",
        restored.stdout
    );
    let ws = std::fs::read(format!("{mem}.ws")).expect("the working set was written");
    let pages = u64::from_le_bytes(ws[24..32].try_into().unwrap());
    assert!(pages > 0, "it holds the pages the guest touched");
    eprintln!(
        "restored and ended in {:?}; {pages} pages recorded",
        started.elapsed()
    );
}
