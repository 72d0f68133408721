//! The guest's console off the terminal: `--console-socket` (attach later,
//! see what the guest wrote while nobody was attached, type into COM1,
//! detach, take over), `sie ctl console`, and Firecracker's `PUT /serial`
//! output file.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::counter::wait_for;
use sie_guests::{ECHO, HELLO};

/// COM1 writes so far (`GET /stats`).
fn com1_writes(vm: &ApiVm) -> u64 {
    vm.get("/stats").json()["devices"]["com1"]["writes"]
        .as_u64()
        .unwrap_or(0)
}

/// Boots the echo guest with its console on a socket and waits until it
/// has printed its first line, nobody attached.
fn echo_vm(name: &str) -> (ApiVm, PathBuf) {
    let dir = common::Scratch::new(&format!("{name}-sock"));
    let console = PathBuf::from(dir.path()).join("console.sock");
    std::mem::forget(dir);
    let vm = ApiVm::start(name, &["--console-socket", console.to_str().unwrap()]);
    vm.boot(ECHO.path, "console=ttyS0");
    // "echo ready\n": 11 bytes written to COM1 while nobody listens.
    wait_for("the guest's first line", || com1_writes(&vm) >= 11);
    (vm, console)
}

/// Attaches to the console socket at `path` once sie listens on it: the
/// socket file appears at `bind`, a moment before `listen`, and a connect
/// in between is refused.
fn attach(path: &Path) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return stream,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("attaching to {}: {e}", path.display()),
        }
    }
}

/// Reads from `stream` until what was read contains `needle`; returns it.
fn read_until(stream: &mut UnixStream, needle: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let mut chunk = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?}; got {:?}",
            String::from_utf8_lossy(&seen)
        );
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "the console closed before {needle:?}; got {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_late_client_sees_the_boot_output_and_types_into_the_guest() {
    let (vm, console) = echo_vm("console-late");
    let mut client = UnixStream::connect(&console).unwrap();
    let replayed = read_until(&mut client, "echo ready\n");
    assert!(replayed.starts_with("echo ready\n"), "{replayed:?}");
    client.write_all(b"hi").unwrap();
    read_until(&mut client, "<h><i>");

    // Detached, the guest runs on; output meanwhile waits for the next
    // client, and what was already delivered is not sent twice.
    drop(client);
    let mut again = UnixStream::connect(&console).unwrap();
    again.write_all(b"z").unwrap();
    let seen = read_until(&mut again, "<z>");
    assert!(!seen.contains("echo ready"), "{seen:?}");

    // A second client takes the console over; the first is told and let go.
    let mut third = UnixStream::connect(&console).unwrap();
    let mut told = String::new();
    again
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    again.read_to_string(&mut told).unwrap();
    assert!(told.contains("another client attached"), "{told:?}");
    third.write_all(b"!").unwrap();
    read_until(&mut third, "<!>");

    assert_eq!(vm.state(), "Running");
    let mut vm = vm;
    let stdout = vm.child.stdout.take().unwrap();
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(128 + libc::SIGTERM));
    let mut printed = String::new();
    { stdout }.read_to_string(&mut printed).unwrap();
    assert!(
        !printed.contains("echo ready"),
        "the console is on the socket, not stdout: {printed:?}"
    );
    assert!(!console.exists(), "the console socket is removed at exit");
}

/// `sie ctl ARGS` with a piped stdin; its stdout collected on a thread.
struct Ctl {
    child: std::process::Child,
    out: Arc<Mutex<String>>,
}

impl Ctl {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
            .arg("ctl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let mut pipe = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 256];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Self { child, out }
    }

    fn type_in(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn wait_for(&self, needle: &str) {
        wait_for(needle, || self.out.lock().unwrap().contains(needle));
    }

    /// Waits for the client to leave; returns its status and stderr.
    fn finish(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "sie ctl console did not leave");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (self.child.wait().unwrap().code(), stderr)
    }
}

#[test]
fn sie_ctl_console_attaches_types_and_leaves_with_its_escape() {
    let (vm, console) = echo_vm("console-ctl");
    // Found through the API: the socket the VM was configured with.
    let mut ctl = Ctl::start(&["--sock", vm.sock.to_str().unwrap(), "console"]);
    ctl.wait_for("echo ready\n");
    ctl.type_in(b"ok");
    ctl.wait_for("<o><k>");
    // Ctrl-] Ctrl-] sends one Ctrl-]; Ctrl-] q leaves.
    ctl.type_in(b"\x1d\x1d");
    ctl.wait_for("<\x1d>");
    ctl.type_in(b"\x1dq");
    let (code, stderr) = ctl.finish();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("detached"), "{stderr}");
    assert_eq!(
        vm.state(),
        "Running",
        "leaving the console leaves the VM be"
    );

    // By path, without the API.
    let mut ctl = Ctl::start(&["console", console.to_str().unwrap()]);
    ctl.type_in(b"p");
    ctl.wait_for("<p>");
    ctl.type_in(b"\x1d.");
    assert_eq!(ctl.finish().0, Some(0));
}

#[test]
fn sie_run_puts_the_console_on_a_socket() {
    let dir = common::Scratch::new("console-run");
    let console = Path::new(&dir.path()).join("c.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", ECHO.path, "--memory", "32"])
        .args(["--console-socket", console.to_str().unwrap()])
        .args(["--console-buffer-bytes", "4"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the console socket", || console.exists());
    // Give the guest time to print its line into a 4-byte ring.
    std::thread::sleep(Duration::from_millis(500));
    let mut client = UnixStream::connect(&console).unwrap();
    client.write_all(b"w").unwrap();
    let seen = read_until(&mut client, "<w>");
    assert!(
        seen.starts_with("ady\n<w>"),
        "only the ring's last 4 bytes are kept: {seen:?}"
    );
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
}

#[test]
fn put_serial_writes_the_guests_output_to_a_file_before_boot_only() {
    let mut vm = ApiVm::start("console-serial-out", &[]);
    let out = PathBuf::from(vm.dir.path()).join("serial.log");
    let body = serde_json::json!({ "serial_out_path": out }).to_string();
    vm.ok("PUT", "/serial", &body);
    let limited = serde_json::json!({
        "serial_out_path": out, "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}
    });
    vm.call("PUT", "/serial", Some(&limited.to_string()))
        .expect_fault("rate_limiter");
    assert_eq!(
        vm.get("/vm/config").json()["serial"]["serial_out_path"],
        out.to_str().unwrap()
    );
    vm.boot(HELLO.path, "console=ttyS0");
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(
        written.contains("hello from sie guest\n") && written.ends_with("bye\n"),
        "{written:?}"
    );
}

#[test]
fn put_serial_after_boot_is_refused() {
    let (vm, _) = echo_vm("console-serial-late");
    vm.call("PUT", "/serial", Some(r#"{"serial_out_path": "/tmp/x"}"#))
        .expect_fault("after starting");
}

/// `sie run` with the counter guest counting to `limit` as fast as it can,
/// COM1 on the socket `console`.
fn counter_on_console_socket(console: &Path, limit: u32) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_sie"))
        .args([
            "run",
            "--kernel",
            sie_guests::COUNTER.path,
            "--memory",
            "32",
        ])
        .args(["--cmdline", &format!("limit={limit} delay=1")])
        .args(["--console-socket", console.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_client_that_never_reads_does_not_stall_the_guest() {
    let dir = common::Scratch::new("console-stuck");
    let console = Path::new(&dir.path()).join("c.sock");
    let mut child = counter_on_console_socket(&console, 5000);
    wait_for("the console socket", || console.exists());
    // Attached, and never reading: the socket's buffer fills at once.
    let client = attach(&console);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the guest stalled on its console"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "the counter reached its limit");
    let mut got = String::new();
    { client }.read_to_string(&mut got).unwrap();
    assert!(got.contains("count "), "{got:?}");
    assert!(
        !got.contains("count 5000\n"),
        "a client that never reads loses output, not the guest its time"
    );
}

#[test]
fn a_restored_guest_prints_on_the_console_socket_of_the_sie_that_loads_it() {
    // A counter, paused and snapshotted in one sie (its console on stdout).
    let mut source = ApiVm::start("console-restore-source", &[]);
    let out = common::counter::capture(&mut source);
    source.boot(sie_guests::COUNTER.path, "limit=100000 delay=200000");
    let count = common::counter::pause_after(&source, &out, 2);
    let snap = format!("{}/vm.snap", source.dir.path());
    let mem = format!("{}/vm.mem", source.dir.path());
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    source.ok("PUT", "/snapshot/create", &body.to_string());

    // Loaded by a sie whose console is a socket (the console is the host's
    // choice, not the snapshot's).
    let dir = common::Scratch::new("console-restore-sock");
    let console = Path::new(&dir.path()).join("c.sock");
    let fresh = ApiVm::start(
        "console-restore",
        &["--console-socket", console.to_str().unwrap()],
    );
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    fresh.ok("PUT", "/snapshot/load", &load.to_string());
    let mut client = UnixStream::connect(&console).unwrap();
    read_until(&mut client, &format!("count {}\n", count + 1));
    let (code, stderr) = source.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn a_client_that_leaves_while_the_guest_writes_costs_nothing() {
    let dir = common::Scratch::new("console-leave");
    let console = Path::new(&dir.path()).join("c.sock");
    let mut child = counter_on_console_socket(&console, 3000);
    wait_for("the console socket", || console.exists());
    // Clients come, read a little, and vanish mid-stream: sie writes to a
    // closed socket (EPIPE) and must neither die of SIGPIPE nor stall.
    for _ in 0..3 {
        let Ok(mut client) = UnixStream::connect(&console) else {
            break;
        };
        read_until(&mut client, "count ");
        drop(client);
        std::thread::sleep(Duration::from_millis(30));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the guest stalled");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
}
