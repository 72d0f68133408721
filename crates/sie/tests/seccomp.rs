//! Seccomp: every thread sie runs has a filter (none with `--no-seccomp`),
//! a system call outside a thread's filter ends sie with status 148 and a
//! line naming the call and the thread kind, and `--seccomp-filter` takes a
//! user's policy in the built-in policy's JSON form.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{Run, Scratch, sie};
use sie_guests::{HELLO, SPIN};

/// The built-in policy, the starting point of the user policies below.
const POLICY: &str = include_str!("../../seccomp/policy/x86_64.json");

/// Each of sie's threads (name, `Seccomp:` mode) in process `pid`, the
/// mode followed by `/N` with the number of filters the thread runs when it
/// runs any (kernels since 5.9 show it). KVM's own workers that the kernel
/// puts in the process (`kvm-nx-lpage-re`) are not sie's threads and are
/// left out.
fn thread_modes(pid: u32) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let name = name.trim().to_string();
        if name.starts_with("kvm") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(key))
                .map(|value| value.trim().to_string())
        };
        let mut mode = field("Seccomp:").unwrap();
        if mode == "2"
            && let Some(count) = field("Seccomp_filters:")
        {
            mode = format!("2/{count}");
        }
        modes.push((name, mode));
    }
    modes.sort();
    modes
}

/// `mode` as [`thread_modes`] would show it on this kernel: without the
/// filter count where the kernel does not show it.
fn as_shown(mode: &str) -> &str {
    let shown =
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s.contains("Seccomp_filters:"));
    if shown {
        mode
    } else {
        mode.split('/').next().unwrap_or_default()
    }
}

/// Boots the spin guest with two vCPUs and a drive (on the Sync engine, so
/// with a worker thread) through the API and returns the threads' seccomp
/// modes once both vCPU threads run.
fn modes_of_a_running_api_vm(name: &str, extra: &[&str]) -> Vec<(String, String)> {
    let scratch = Scratch::new(name);
    let disk = scratch.sparse("disk.img", 1 << 20);
    let vm = ApiVm::start(name, extra);
    let boot = serde_json::json!({"kernel_image_path": SPIN.path, "boot_args": "console=ttyS0"});
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 32}"#,
    );
    let drive = serde_json::json!({"drive_id": "data", "path_on_host": disk,
        "is_root_device": false, "io_engine": "Sync"});
    vm.ok("PUT", "/drives/data", &drive.to_string());
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(vm.state(), "Running");
    let modes = thread_modes(vm.child.id());
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    modes
}

fn expect_threads(modes: &[(String, String)], want: [&str; 6]) {
    let names: Vec<&str> = modes.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "fc_api",
            "fc_vcpu 0",
            "fc_vcpu 1",
            "sie",
            "sie-blk 0",
            "sie-migrate"
        ],
        "{modes:?}"
    );
    for ((name, seen), want) in modes.iter().zip(want) {
        assert_eq!(seen, as_shown(want), "thread {name}: {modes:?}");
    }
}

/// Every thread runs its own filter. The API thread, started first, runs
/// only its own; the VMM thread ran the build filter from before it served
/// the first request, and the vCPU threads it started inherited that, so
/// they and the VMM thread run their own stacked on it (two each), as do
/// the drive's worker and the migration worker.
#[test]
fn every_thread_of_a_running_vm_has_a_filter() {
    expect_threads(
        &modes_of_a_running_api_vm("seccomp-on", &[]),
        ["2/1", "2/2", "2/2", "2/2", "2/2", "2/2"],
    );
}

/// The console socket (accepting, reading, writing a client that goes
/// away) and a core dump run under the VMM and vCPU filters: no call of
/// theirs is refused and every thread stays filtered.
#[test]
fn a_console_client_and_a_core_dump_stay_inside_the_filters() {
    use std::io::{Read, Write};
    let vm = ApiVm::start("seccomp-console", &[]);
    let console = std::path::PathBuf::from(vm.dir.path()).join("console.sock");
    let serial = serde_json::json!({ "console_socket": console });
    vm.ok("PUT", "/serial", &serial.to_string());
    let boot = serde_json::json!({"kernel_image_path": sie_guests::ECHO.path});
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    for _ in 0..2 {
        let mut client = std::os::unix::net::UnixStream::connect(&console).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.write_all(b"s").unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !seen.ends_with(b"<s>") {
            assert_eq!(client.read(&mut byte).unwrap(), 1, "{seen:?}");
            seen.push(byte[0]);
        }
    }
    let core = std::path::PathBuf::from(vm.dir.path()).join("vm.core");
    vm.ok(
        "PUT",
        "/vm/dump",
        &serde_json::json!({ "path": core }).to_string(),
    );
    assert_eq!(vm.state(), "Running");
    let modes = thread_modes(vm.child.id());
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    // The API thread runs its own filter; the VMM, vCPU and migration
    // worker threads theirs on the build filter (see
    // every_thread_of_a_running_vm_has_a_filter).
    let want: Vec<(String, String)> = [
        ("fc_api", "2/1"),
        ("fc_vcpu 0", "2/2"),
        ("sie", "2/2"),
        ("sie-migrate", "2/2"),
    ]
    .iter()
    .map(|(name, mode)| (name.to_string(), as_shown(mode).to_string()))
    .collect();
    assert_eq!(modes, want);
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    expect_threads(
        &modes_of_a_running_api_vm("seccomp-off", &["--no-seccomp"]),
        ["0", "0", "0", "0", "0", "0"],
    );
}

/// Before `InstanceStart` builds the VM, every thread is filtered already:
/// the API thread by its own filter, the VMM thread by the build filter,
/// and the migration worker (spawned while the API waited) by its own on
/// the build filter (docs/security.md).
#[test]
fn before_instance_start_every_thread_is_filtered() {
    let vm = ApiVm::start("seccomp-before-start", &[]);
    let boot = serde_json::json!({"kernel_image_path": SPIN.path, "boot_args": "console=ttyS0"});
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    assert_eq!(vm.state(), "Not started");
    let modes = thread_modes(vm.child.id());
    let want = [
        ("fc_api".to_string(), as_shown("2/1").to_string()),
        ("sie".to_string(), as_shown("2/1").to_string()),
        ("sie-migrate".to_string(), as_shown("2/2").to_string()),
    ];
    assert_eq!(modes, want);
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

/// Runs `sie args` with `SIE_TEST_FORBIDDEN_SYSCALL=kind` (the debug
/// build's test hook), killed after 30 s.
fn with_forbidden_call(kind: &str, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(args)
        .env("SIE_TEST_FORBIDDEN_SYSCALL", kind)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sie {args:?} with a forbidden {kind} call hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn expect_trapped(run: &Run, kind: &str) {
    run.expect_code(148);
    assert_eq!(
        run.stderr,
        format!(
            "sie: seccomp: the {kind} thread made system call {}, which its filter forbids; exiting with status 148\n",
            libc::SYS_getppid
        )
    );
}

#[test]
fn a_forbidden_call_on_each_thread_kind_ends_sie_with_148() {
    if !cfg!(debug_assertions) {
        // The hook exists in debug builds only; a release sie ignores it.
        let run = with_forbidden_call("vcpu", &["run", "--kernel", HELLO.path]);
        run.expect_code(0);
        return;
    }
    let spin = ["run", "--kernel", SPIN.path];
    expect_trapped(&with_forbidden_call("vcpu", &spin), "vcpu");
    expect_trapped(&with_forbidden_call("vmm", &spin), "vmm");
    let scratch = Scratch::new("seccomp-api-hook");
    let disk = scratch.sparse("disk.img", 1 << 20);
    let with_disk = ["run", "--kernel", SPIN.path, "--disk", &disk];
    expect_trapped(&with_forbidden_call("blk", &with_disk), "blk");
    let sock = format!("{}/api.sock", scratch.path());
    expect_trapped(&with_forbidden_call("api", &["--api-sock", &sock]), "api");
    // The VMM thread before the VM is built, under the build filter.
    let run = with_forbidden_call("build", &["--api-sock", &sock]);
    run.expect_code(148);
    assert_eq!(
        run.stderr,
        format!(
            "sie: seccomp: the build thread made system call {}, which its filter forbids; exiting with status 148\n",
            libc::SYS_personality
        )
    );
    // Firecracker mode's VMM and vCPU threads are filtered the same way.
    let config = scratch.file(
        "vm.json",
        serde_json::json!({"boot-source": {"kernel_image_path": SPIN.path}})
            .to_string()
            .as_bytes(),
    );
    let no_api = ["--no-api", "--config-file", &config];
    expect_trapped(&with_forbidden_call("vmm", &no_api), "vmm");
    expect_trapped(&with_forbidden_call("vcpu", &no_api), "vcpu");
    // Without filters the call is harmless and the guest runs to its end.
    let run = with_forbidden_call("vcpu", &["run", "--no-seccomp", "--kernel", HELLO.path]);
    run.expect_code(0);
}

#[test]
fn a_user_policy_replaces_the_built_in_one() {
    let scratch = Scratch::new("seccomp-user");
    // The built-in policy as it is: the guest runs to its end.
    let same = scratch.file("same.json", POLICY.as_bytes());
    let run = sie(&["run", "--seccomp-filter", &same, "--kernel", HELLO.path]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("hello from sie guest"),
        "{}",
        run.stdout
    );
    // The same policy without KVM_RUN on vCPU threads: the first entry into
    // the guest traps, which only the user's policy can make happen.
    let mut policy: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    let rules = policy["vcpu"]["filter"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|rule| rule["args"][0]["comment"] != "KVM_RUN");
    assert_eq!(rules.len(), before - 1, "the policy has one KVM_RUN rule");
    let no_run = scratch.file("no-run.json", policy.to_string().as_bytes());
    let config = scratch.file(
        "vm.json",
        serde_json::json!({"boot-source": {"kernel_image_path": HELLO.path}})
            .to_string()
            .as_bytes(),
    );
    for args in [
        vec!["run", "--seccomp-filter", &no_run, "--kernel", HELLO.path],
        vec![
            "--no-api",
            "--seccomp-filter",
            &no_run,
            "--config-file",
            &config,
        ],
    ] {
        let run = sie(&args);
        run.expect_code(148);
        assert!(
            run.stderr.contains(&format!(
                "the vcpu thread made system call {}",
                libc::SYS_ioctl
            )),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn a_policy_that_does_not_parse_is_refused_in_one_line() {
    let scratch = Scratch::new("seccomp-bad");
    let bad = scratch.file("bad.json", b"{\"vmm\": ");
    let config = scratch.file(
        "vm.json",
        serde_json::json!({"boot-source": {"kernel_image_path": HELLO.path}})
            .to_string()
            .as_bytes(),
    );
    sie(&["run", "--seccomp-filter", &bad, "--kernel", HELLO.path])
        .expect_one_line_error("is not a seccomp policy");
    sie(&[
        "--no-api",
        "--config-file",
        &config,
        "--seccomp-filter",
        &bad,
    ])
    .expect_one_line_error("--seccomp-filter");
    let one = r#"{"default_action": "trap", "filter_action": "allow", "filter": []}"#;
    let partial = scratch.file("partial.json", format!(r#"{{"vmm": {one}}}"#).as_bytes());
    sie(&["run", "--seccomp-filter", &partial, "--kernel", HELLO.path])
        .expect_one_line_error("no `api` filter");
    sie(&[
        "run",
        "--seccomp-filter",
        "/nonexistent/policy.json",
        "--kernel",
        HELLO.path,
    ])
    .expect_one_line_error("cannot read /nonexistent/policy.json");
    // --no-seccomp and --seccomp-filter contradict each other: a usage error.
    let run = sie(&[
        "run",
        "--no-seccomp",
        "--seccomp-filter",
        &bad,
        "--kernel",
        HELLO.path,
    ]);
    run.expect_code(2);
}
