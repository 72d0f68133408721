//! Stop signals end sie cleanly: exit status 128+N with a message, and a
//! terminal on stdin is put in raw mode while the guest runs and restored
//! afterwards.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sie_guests::SPIN;

/// Reads the child's stdout until `needle` appears (or 30 s pass).
fn wait_for_output(child: &mut Child, needle: &str) -> String {
    let stdout = child.stdout.as_mut().expect("stdout piped");
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut byte = [0u8; 1];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in {seen:?}");
        if stdout.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        seen.push(byte[0]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

fn terminate(child: &Child) {
    // SAFETY: kill only sends a signal to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

#[test]
fn sigterm_stops_the_vm_with_status_143() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", SPIN.path])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sie");
    wait_for_output(&mut child, "spinning");
    terminate(&child);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(143));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
}

fn termios_of(fd: i32) -> libc::termios {
    // SAFETY: termios is plain data, filled by tcgetattr below.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal and `termios` is valid for writes.
    assert_eq!(unsafe { libc::tcgetattr(fd, &mut termios) }, 0);
    termios
}

/// A new pseudo-terminal: (master, slave).
fn pty() -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors; null name/termios/winsize are allowed.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: openpty returned two fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

#[test]
fn a_terminal_is_raw_while_the_guest_runs_and_restored_after_a_signal() {
    let (master, slave) = pty();
    let before = termios_of(slave.as_raw_fd());
    assert_ne!(
        before.c_lflag & libc::ICANON,
        0,
        "a new pty starts canonical"
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", SPIN.path])
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sie");
    wait_for_output(&mut child, "spinning");
    let during = termios_of(slave.as_raw_fd());
    assert_eq!(
        during.c_lflag & (libc::ICANON | libc::ECHO),
        0,
        "raw while running"
    );

    terminate(&child);
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(143));
    let after = termios_of(slave.as_raw_fd());
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    drop(master);
}

/// A vCPU thread killed by its seccomp filter ends sie from the SIGSYS
/// handler, where nothing unwinds: the handler itself gives the terminal
/// back.
#[test]
fn a_forbidden_system_call_leaves_the_terminal_as_it_was() {
    let (master, slave) = pty();
    let before = termios_of(slave.as_raw_fd());
    let child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", SPIN.path])
        .env("SIE_TEST_FORBIDDEN_SYSCALL", "vcpu")
        .stdin(Stdio::from(slave.try_clone().expect("dup")))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sie");
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(148));
    assert!(String::from_utf8_lossy(&output.stderr).contains("the vcpu thread made system call"));
    let after = termios_of(slave.as_raw_fd());
    assert_eq!(after.c_lflag, before.c_lflag, "local modes restored");
    assert_eq!(after.c_iflag, before.c_iflag, "input modes restored");
    drop(master);
}
