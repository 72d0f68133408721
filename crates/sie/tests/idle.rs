//! An idle VM costs the host no wake-ups: sie's VMM thread (its main
//! thread, in `sie run` and with the API alike) sleeps in epoll with no
//! timeout while nothing is pending, and a partial line the guest prints (a
//! prompt) still reaches stdout by its flush deadline.
//!
//! Wake-ups are counted, not timed: each return from a sleep is one
//! voluntary context switch of the thread (`/proc/PID/task/TID/status`).
//! With the old 20 ms tick a second held about 50.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::api::ApiVm;
use sie_guests::{ECHO, SPIN};

/// Fewer than this many wake-ups in a second is "does not wake".
const FEW: u64 = 10;

/// The voluntary context switches of sie's VMM thread (its main thread).
fn vmm_thread_switches(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches in {status}"))
}

/// The VMM thread's wake-ups over one second.
fn wakeups_in_a_second(pid: u32) -> u64 {
    let before = vmm_thread_switches(pid);
    std::thread::sleep(Duration::from_secs(1));
    vmm_thread_switches(pid) - before
}

/// Reads `child`'s stdout on a thread; the receiver gets each chunk.
fn stdout_chunks(child: &mut Child) -> mpsc::Receiver<Vec<u8>> {
    let mut pipe = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 256];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 || tx.send(chunk[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects from `chunks` until `needle` was printed (a 30 s hang guard).
fn wait_for_output(chunks: &mpsc::Receiver<Vec<u8>>, seen: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(seen).contains(needle) {
        match chunks.recv_timeout(Duration::from_secs(30)) {
            Ok(chunk) => seen.extend_from_slice(&chunk),
            Err(_) => panic!(
                "never printed {needle:?}; got {:?}",
                String::from_utf8_lossy(seen)
            ),
        }
    }
}

fn sie_run(kernel: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", kernel, "--memory", "32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn the_vmm_thread_of_a_guest_that_makes_no_exits_does_not_wake() {
    // The guest loops in guest mode: its vCPU never leaves KVM_RUN, and
    // nothing is left for the VMM thread to do.
    let mut child = sie_run(SPIN.path);
    let chunks = stdout_chunks(&mut child);
    wait_for_output(&chunks, &mut Vec::new(), "spinning\n");
    let wakeups = wakeups_in_a_second(child.id());
    assert!(wakeups < FEW, "{wakeups} wake-ups in a second");
    stop(child);
}

#[test]
fn a_paused_vm_and_a_vmm_waiting_for_its_config_do_not_wake() {
    let vm = ApiVm::start("idle-paused", &[]);
    let pid = vm.child.id();
    let wakeups = wakeups_in_a_second(pid);
    assert!(wakeups < FEW, "not started: {wakeups} wake-ups in a second");

    vm.boot(ECHO.path, "console=ttyS0");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vm.state(), "Paused");
    let wakeups = wakeups_in_a_second(pid);
    assert!(wakeups < FEW, "paused: {wakeups} wake-ups in a second");

    // Requests still wake it.
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vm.state(), "Running");
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(128 + libc::SIGTERM), "{stderr}");
}

#[test]
fn a_partial_line_reaches_stdout_without_a_newline() {
    // The echo guest answers each byte of input with `<BYTE>` and no
    // newline: only the flush deadline can put it on stdout.
    let mut child = sie_run(ECHO.path);
    let chunks = stdout_chunks(&mut child);
    let mut seen = Vec::new();
    wait_for_output(&chunks, &mut seen, "echo ready\n");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"a").unwrap();
    stdin.flush().unwrap();
    wait_for_output(&chunks, &mut seen, "<a>");
    // And again, after the first deadline's timer went off.
    stdin.write_all(b"b").unwrap();
    stdin.flush().unwrap();
    wait_for_output(&chunks, &mut seen, "<b>");
    assert_eq!(String::from_utf8_lossy(&seen), "echo ready\n<a><b>");
    stop(child);
}
