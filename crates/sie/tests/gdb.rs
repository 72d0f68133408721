//! `sie run --gdb-socket` as a user runs it, with its seccomp filters on:
//! sie waits for gdb before the guest's first instruction, and a GDB remote
//! protocol client (written here: packets, acks, run-length decoding) steps
//! the `loop` guest, stops it at gdb's `break`, reads and writes the
//! control registers through `monitor` and kills it; Debian's gdb, when it
//! is installed, reads and writes cr0, cr3, efer and fs_base by name.
//! Through the API,
//! machine-config's `gdb_socket_path` does the same, and `PATCH /vm` cannot
//! resume a VM gdb holds stopped.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{Scratch, sie};

const TIMEOUT: Duration = Duration::from_secs(20);

struct Client(UnixStream);

impl Client {
    fn connect(path: &str) -> Self {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(stream) = UnixStream::connect(path) {
                stream.set_read_timeout(Some(TIMEOUT)).unwrap();
                return Self(stream);
            }
            assert!(Instant::now() < deadline, "sie never listened for gdb");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn send(&mut self, data: &str) {
        let sum = data.bytes().fold(0u8, |s, b| s.wrapping_add(b));
        self.0
            .write_all(format!("${data}#{sum:02x}").as_bytes())
            .unwrap();
    }

    fn byte(&mut self) -> u8 {
        let mut b = [0u8];
        self.0.read_exact(&mut b).expect("an answer from the stub");
        b[0]
    }

    /// The next packet, acknowledged and run-length decoded.
    fn receive(&mut self) -> String {
        while self.byte() != b'$' {}
        let mut text = Vec::new();
        loop {
            match self.byte() {
                b'#' => break,
                b'*' => {
                    let count = self.byte() - 29;
                    let last = *text.last().unwrap();
                    text.extend(std::iter::repeat_n(last, usize::from(count)));
                }
                b => text.push(b),
            }
        }
        self.byte();
        self.byte();
        self.0.write_all(b"+").unwrap();
        String::from_utf8(text).unwrap()
    }

    fn ask(&mut self, data: &str) -> String {
        self.send(data);
        self.receive()
    }

    /// `monitor CMD`: its console output (packets `O` + hex), then OK.
    fn monitor(&mut self, cmd: &str) -> String {
        self.send(&format!("qRcmd,{}", hex(cmd)));
        let mut console = String::new();
        loop {
            let packet = self.receive();
            if packet == "OK" {
                return console;
            }
            let bytes: Vec<u8> = (0..(packet.len() - 1) / 2)
                .map(|i| u8::from_str_radix(&packet[1 + 2 * i..3 + 2 * i], 16).unwrap())
                .collect();
            console.push_str(&String::from_utf8(bytes).unwrap());
        }
    }

    fn rip(&mut self) -> u64 {
        let hex = self.ask("g");
        let bytes: Vec<u8> = (16 * 8..17 * 8)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        u64::from_le_bytes(bytes.try_into().unwrap())
    }
}

/// `sie run` of the loop guest (counting for ages, 32 MiB) waiting for gdb
/// on `socket`, on a thread; join it for the run's result.
fn loop_guest_behind_gdb(socket: &str) -> std::thread::JoinHandle<common::Run> {
    let args = [
        "run".to_string(),
        "--kernel".to_string(),
        sie_guests::LOOP.path.to_string(),
        "--cmdline".to_string(),
        "iterations=1000000000000".to_string(),
        "--memory".to_string(),
        "32M".to_string(),
        "--gdb-socket".to_string(),
        socket.to_string(),
    ];
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sie(&args)
    })
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn gdb_drives_the_loop_guest_through_sie_run_under_seccomp() {
    let scratch = Scratch::new("gdb");
    let socket = format!("{}/gdb.sock", scratch.path());
    let guest = sie_guests::LOOP;
    let entry = u64::from_le_bytes(guest.bytes[24..32].try_into().unwrap());
    let run = loop_guest_behind_gdb(&socket);
    let mut gdb = Client::connect(&socket);
    gdb.ask("qSupported:swbreak+;hwbreak+;vContSupported+");
    assert!(gdb.ask("?").starts_with('T'));
    assert_eq!(gdb.ask("Hg1"), "OK");
    assert_eq!(gdb.rip(), entry, "stopped before the first instruction");
    assert!(gdb.ask("vCont;s:1;c").starts_with('T'));
    assert_eq!(gdb.rip(), entry + 7, "one instruction stepped");

    // gdb's `break` on the loop's `dec`.
    let dec = entry + 35;
    assert_eq!(gdb.ask(&format!("Z0,{dec:x},1")), "OK");
    let stop = gdb.ask("vCont;c");
    assert!(stop.contains("swbreak"), "breakpoint stop: {stop}");
    assert_eq!(gdb.rip(), dec);

    // `monitor sregs` shows the control registers; `monitor set` writes one.
    let console = gdb.monitor("sregs");
    assert!(console.contains("cr0=0x8"), "paging on: {console}");
    assert!(console.contains("efer=0x5"), "long mode: {console}");
    assert!(console.contains("cr2=0x0 "), "{console}");
    gdb.monitor("set cr2 0x1234");
    let console = gdb.monitor("sregs");
    assert!(console.contains("cr2=0x1234 "), "cr2 written: {console}");

    gdb.send("k");
    let run = run.join().unwrap();
    run.expect_code(0);
    assert!(!run.stderr.contains("seccomp"), "{}", run.stderr);
}

/// The value gdb printed for `p/x $NAME` (`$n = 0x…` after `name:`).
fn printed(output: &str, name: &str) -> u64 {
    let line = output
        .lines()
        .skip_while(|line| *line != format!("{name}:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in gdb's output:\n{output}"));
    let hex = line
        .split("= 0x")
        .nth(1)
        .unwrap_or_else(|| panic!("{line}"));
    u64::from_str_radix(hex.trim(), 16).unwrap()
}

#[test]
fn debian_gdb_reads_and_writes_the_control_registers_and_fs_base() {
    if std::process::Command::new("gdb")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: no gdb on this machine");
        return;
    }
    let scratch = Scratch::new("gdb-regs");
    let socket = format!("{}/gdb.sock", scratch.path());
    let run = loop_guest_behind_gdb(&socket);
    // gdb's `target remote` does not retry: wait for the socket (a
    // connection made here would be the session).
    let deadline = Instant::now() + TIMEOUT;
    while !std::path::Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "sie never listened for gdb");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut gdb = std::process::Command::new("gdb");
    gdb.args(["-nx", "-batch", "-ex", "set confirm off"])
        .args(["-ex", &format!("target remote {socket}")]);
    let commands = [
        "echo cr0:\\n",
        "p/x $cr0",
        "echo cr3:\\n",
        "p/x $cr3",
        "echo efer:\\n",
        "p/x $efer",
        "echo fs_base:\\n",
        "p/x $fs_base",
        "info registers cr0 cr3",
        "set $fs_base = 0x7f0012345000",
        "set $cr2 = 0x1234",
        "monitor sregs",
        "echo written:\\n",
        "p/x $fs_base",
        "set $gdtr_limit = 0x10000",
        "kill",
    ];
    for command in commands {
        gdb.args(["-ex", command]);
    }
    let output = gdb.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let cr0 = printed(&text, "cr0");
    assert_eq!(cr0 & 0x8000_0001, 0x8000_0001, "paging on: {text}");
    let cr3 = printed(&text, "cr3");
    assert!(cr3 != 0 && cr3.is_multiple_of(4096), "{text}");
    assert_eq!(printed(&text, "efer") & 0x500, 0x500, "long mode: {text}");
    assert_eq!(printed(&text, "fs_base"), 0, "{text}");
    assert!(
        text.lines()
            .any(|line| line.starts_with("cr3") && line.contains(&format!("{cr3:#x}"))),
        "info registers: {text}"
    );
    // gdb's writes went to the vCPU: `monitor sregs` reads it back.
    assert!(text.contains("cr2=0x1234 "), "{text}");
    assert!(text.contains("base=0x7f0012345000"), "{text}");
    assert_eq!(printed(&text, "written"), 0x7f00_1234_5000, "{text}");
    // A limit wider than the register is refused; the session went on.
    assert!(text.contains("Could not write register"), "{text}");
    let run = run.join().unwrap();
    run.expect_code(0);
}

#[test]
fn machine_config_gdb_socket_path_waits_for_gdb_and_gdb_alone_resumes() {
    let vm = ApiVm::start("gdb-api", &[]);
    let socket = format!("{}/gdb.sock", vm.dir.path());
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::LOOP.path,
        "boot_args": "iterations=1000000000000",
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    let machine = serde_json::json!({
        "vcpu_count": 1,
        "mem_size_mib": 32,
        "gdb_socket_path": socket,
    });
    vm.ok("PUT", "/machine-config", &machine.to_string());
    let config = vm.get("/vm/config").json();
    assert_eq!(config["machine-config"]["gdb_socket_path"], socket.as_str());
    std::thread::scope(|scope| {
        // InstanceStart is answered once gdb is attached.
        let start = scope.spawn(|| {
            vm.call(
                "PUT",
                "/actions",
                Some(r#"{"action_type": "InstanceStart"}"#),
            )
        });
        let mut gdb = Client::connect(&socket);
        assert_eq!(start.join().unwrap().status, 204);
        assert!(gdb.ask("?").starts_with('T'));
        vm.call("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#))
            .expect_fault("gdb holds the microVM stopped");
        assert_eq!(vm.state(), "Paused");
        // gdb lets it run.
        gdb.send("vCont;c");
        let deadline = Instant::now() + TIMEOUT;
        while vm.state() != "Running" {
            assert!(
                Instant::now() < deadline,
                "gdb's continue did not run the VM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        gdb.0.write_all(&[0x03]).unwrap();
        assert!(gdb.receive().starts_with("T02"));
        gdb.send("k");
    });
    let (code, stderr) = {
        let mut vm = vm;
        vm.wait()
    };
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn ctrl_c_while_sie_waits_for_gdb_stops_it_and_removes_the_socket() {
    let scratch = Scratch::new("gdb-wait");
    let socket = format!("{}/gdb.sock", scratch.path());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["run", "--kernel", sie_guests::LOOP.path, "--memory", "32M"])
        .args(["--gdb-socket", &socket])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !std::path::Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "sie never listened for gdb");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("waiting for gdb"), "{stderr}");
    assert!(!std::path::Path::new(&socket).exists(), "socket removed");
}
