//! sie serving the Firecracker API with a tiny guest: the lifecycle, the
//! phase rules, pause and resume, metrics and logs, hostile clients, and
//! `sie ctl`. The HTTP details themselves are tested in the api crate.

mod common;

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::api::{ApiVm, read_answer};
use common::sie;

const TICKER: &str = sie_guests::TICKER.path;
const HELLO: &str = sie_guests::HELLO.path;

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_guest_booted_through_the_api_runs_to_its_end_and_sie_exits_0() {
    let mut vm = ApiVm::start("api-life", &[]);
    let info = vm.get("/").json();
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["id"], "api-life");
    assert_eq!(info["app_name"], "Firecracker");
    let version = sie_config::FIRECRACKER_API_VERSION;
    assert_eq!(vm.get("/version").json()["firecracker_version"], version);
    assert_eq!(info["vmm_version"], version);
    vm.boot(HELLO, "console=ttyS0 markers=2");
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!vm.sock.exists(), "the socket file is removed at exit");
}

#[test]
fn the_vm_made_while_the_api_waits_is_the_one_booted() {
    let vm = ApiVm::start("api-ahead", &[]);
    wait_until("the VM made ahead", || vm.kvm_vms() == 1);
    vm.boot(TICKER, "console=ttyS0");
    assert_eq!(vm.state(), "Running");
    assert_eq!(vm.kvm_vms(), 1, "the boot built on the VM made ahead");
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn phase_rules_are_firecrackers() {
    let vm = ApiVm::start("api-phase", &[]);
    vm.call("PATCH", "/vm", Some(r#"{"state": "Paused"}"#))
        .expect_fault("before starting");
    vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "SendCtrlAltDel"}"#),
    )
    .expect_fault("before starting");
    vm.call("PATCH", "/drives/root", Some(r#"{"drive_id": "root"}"#))
        .expect_fault("before starting");
    vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )
    .expect_fault("boot-source");
    vm.call(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path": "/no/such/kernel"}"#),
    )
    .expect_fault("kernel_image_path");
    vm.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 0, "mem_size_mib": 32}"#),
    )
    .expect_fault("vcpu_count");
    vm.ok("PATCH", "/machine-config", r#"{"mem_size_mib": 48}"#);
    assert_eq!(vm.get("/machine-config").json()["mem_size_mib"], 48);
    assert_eq!(vm.get("/stats").json()["total_exits"], 0);

    vm.boot(TICKER, "console=ttyS0");
    assert_eq!(vm.state(), "Running");
    vm.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type": "InstanceStart"}"#),
    )
    .expect_fault("after starting");
    vm.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 2, "mem_size_mib": 64}"#),
    )
    .expect_fault("after starting");
    vm.call("PUT", "/logger", Some(r#"{"level": "Info"}"#))
        .expect_fault("after starting");
    vm.call("PATCH", "/drives/root", Some(r#"{"drive_id": "root"}"#))
        .expect_fault("no drive");
    let config = vm.get("/vm/config").json();
    assert_eq!(config["boot-source"]["kernel_image_path"], TICKER);
    assert_eq!(config["machine-config"]["mem_size_mib"], 32);
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let vm = ApiVm::start("api-pause", &[]);
    vm.boot(TICKER, "console=ttyS0");
    wait_until("the guest to tick", || vm.exits() > 20);

    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vm.state(), "Paused");
    let paused_at = vm.exits();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.exits(), paused_at, "no exits while paused");
    // Repeated requests are answered sanely.
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vm.call("PATCH", "/vm", Some(r#"{"state": "Stopped"}"#))
        .expect_fault("Stopped");

    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vm.state(), "Running");
    wait_until("the guest to tick again", || vm.exits() > paused_at + 20);
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn a_config_file_with_an_api_socket_boots_at_once() {
    let scratch = common::Scratch::new("api-config-file");
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": TICKER, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    let path = scratch.file("vm.json", config.to_string().as_bytes());
    let vm = ApiVm::start("api-kata", &["--config-file", &path]);
    assert_eq!(vm.state(), "Running");
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn a_config_files_logger_and_metrics_take_effect() {
    let scratch = common::Scratch::new("api-config-sinks-out");
    let log = format!("{}/sie.log", scratch.path());
    let metrics = format!("{}/metrics.json", scratch.path());
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": TICKER, "boot_args": "console=ttyS0"},
        "logger": {"log_path": log, "level": "Info", "show_level": true},
        "metrics": {"metrics_path": metrics, "emit_id": true, "properties": {"pool": "a"}},
    });
    let path = scratch.file("vm.json", config.to_string().as_bytes());
    let vm = ApiVm::start("api-config-sinks", &["--config-file", &path]);
    assert_eq!(vm.state(), "Running");
    vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    // Refused after boot; the API server logs it at Info.
    vm.call(
        "PUT",
        "/vsock",
        Some(r#"{"guest_cid": 3, "uds_path": "v"}"#),
    )
    .expect_fault("after starting");
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains(":INFO] api: PUT /vsock: "), "{log_text}");
    let metrics_text = std::fs::read_to_string(&metrics).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(metrics_text.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "api-config-sinks");
    assert_eq!(first["properties"]["pool"], "a");
}

fn mkfifo(path: &str) {
    let c_path = std::ffi::CString::new(path).expect("a path without NUL");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_nobody_reads_never_block_the_api() {
    let scratch = common::Scratch::new("api-fifo");
    let log = format!("{}/log.fifo", scratch.path());
    let metrics = format!("{}/metrics.fifo", scratch.path());
    mkfifo(&log);
    mkfifo(&metrics);
    let vm = ApiVm::start(
        "api-fifo",
        &[
            "--log-path",
            &log,
            "--metrics-path",
            &metrics,
            "--level",
            "Debug",
        ],
    );
    vm.boot(TICKER, "console=ttyS0");
    // Each metrics line is over 1 KiB: a few hundred fill a 64 KiB pipe.
    for _ in 0..300 {
        vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    }
    let text = vm.get("/metrics").body;
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sie_metrics_lines_dropped_total "))
        .and_then(|v| v.parse().ok())
        .expect("dropped counter");
    assert!(dropped > 0, "{text}");
    assert_eq!(vm.state(), "Running");
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn metrics_and_logs_go_to_files_set_through_the_api() {
    let vm = ApiVm::start("api-sinks", &[]);
    let outputs = common::Scratch::new("api-sinks-out");
    let log = format!("{}/sie.log", outputs.path());
    let metrics = format!("{}/metrics.json", outputs.path());
    vm.ok(
        "PUT",
        "/logger",
        &serde_json::json!({"log_path": log, "level": "Info"}).to_string(),
    );
    // The logger can be set again before boot (a new level, say).
    vm.ok("PUT", "/logger", r#"{"level": "Info"}"#);
    vm.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    vm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1}"#))
        .expect_fault("mem_size_mib");
    vm.boot(TICKER, "console=ttyS0");
    wait_until("exits", || vm.exits() > 5);
    vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(lines.len() >= 2, "FlushMetrics and the final flush");
    let last = lines.last().unwrap();
    assert!(last["api"]["put_actions"]["count"].as_u64().unwrap() >= 2);
    assert!(last["vm"]["total_exits"].as_u64().unwrap() > 5);
    assert!(last["vmm"]["rss_bytes"].as_u64().unwrap() > 0);
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("InstanceStart"), "{log_text}");
    assert!(log_text.contains("PUT /machine-config"), "{log_text}");
}

/// Boots the ticker with these flags, refuses one request (the API server
/// logs it), and returns the log file's lines.
fn log_lines_with(name: &str, flags: &[&str]) -> Vec<String> {
    let outputs = common::Scratch::new(&format!("{name}-out"));
    let log = format!("{}/sie.log", outputs.path());
    let mut args = vec!["--log-path", log.as_str(), "--level", "Info"];
    args.extend_from_slice(flags);
    let vm = ApiVm::start(name, &args);
    vm.call("PUT", "/machine-config", Some(r#"{"vcpu_count": 1}"#))
        .expect_fault("mem_size_mib");
    vm.boot(TICKER, "console=ttyS0");
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
    let text = std::fs::read_to_string(&log).expect("the log file");
    text.lines().map(str::to_string).collect()
}

#[test]
fn logger_flags_change_the_lines_firecracker_style() {
    let started = |lines: &[String]| {
        lines
            .iter()
            .find(|l| l.contains("InstanceStart: the VM is running"))
            .unwrap_or_else(|| panic!("no InstanceStart line in {lines:#?}"))
            .clone()
    };
    // Firecracker's defaults: the instance and thread, no level, no origin.
    let plain = log_lines_with("log-plain", &[]);
    let line = started(&plain);
    assert!(line.contains(" [log-plain:"), "{line}");
    assert!(!line.contains("INFO"), "{line}");
    assert!(!line.contains(".rs:"), "{line}");
    assert!(plain.iter().any(|l| l.contains("PUT /machine-config")));

    let flagged = log_lines_with(
        "log-flags",
        &[
            "--show-level",
            "--show-log-origin",
            "--module",
            "sie_vmm::controller",
        ],
    );
    let line = started(&flagged);
    assert!(
        line.contains(":INFO:crates/vmm/src/controller/"),
        "level and origin: {line}"
    );
    // --module: the API server's line about the refused request is gone.
    assert!(
        !flagged.iter().any(|l| l.contains("PUT /machine-config")),
        "{flagged:#?}"
    );
}

#[test]
fn metrics_lines_carry_the_id_and_properties_asked_for() {
    let vm = ApiVm::start("api-metrics-id", &[]);
    let outputs = common::Scratch::new("api-metrics-id-out");
    let metrics = format!("{}/metrics.json", outputs.path());
    vm.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({
            "metrics_path": metrics, "emit_id": true, "properties": {"customer_id": "1234"}
        })
        .to_string(),
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
    for line in std::fs::read_to_string(&metrics).unwrap().lines() {
        let line: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["id"], "api-metrics-id");
        assert_eq!(
            line["properties"],
            serde_json::json!({"customer_id": "1234"})
        );
    }
}

#[test]
fn hostile_clients_leave_the_vm_running_and_its_state_unchanged() {
    let vm = ApiVm::start("api-hostile", &[]);
    vm.boot(TICKER, "console=ttyS0");
    // Malformed HTTP.
    let mut raw = UnixStream::connect(&vm.sock).unwrap();
    raw.write_all(b"GARBAGE\r\n\r\n").unwrap();
    drop(raw);
    // A body over the limit is refused from its Content-Length alone.
    let mut big = UnixStream::connect(&vm.sock).unwrap();
    big.write_all(b"PUT /boot-source HTTP/1.1\r\nContent-Length: 60000\r\n\r\n{\"kernel")
        .unwrap();
    big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    read_answer(&mut BufReader::new(big)).expect_fault("51200");
    // A client that leaves in the middle of its body.
    let mut half = UnixStream::connect(&vm.sock).unwrap();
    half.write_all(b"PUT /vm HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"st")
        .unwrap();
    drop(half);
    // Unknown fields, wrong types, missing fields.
    vm.call("PATCH", "/vm", Some(r#"{"state": "Paused", "x": 1}"#))
        .expect_fault("x");
    vm.call("PATCH", "/vm", Some(r#"{"state": 7}"#))
        .expect_fault("state");
    vm.call("PUT", "/actions", Some("{}"))
        .expect_fault("action_type");
    // Many connections at once, each sending one request.
    let streams: Vec<UnixStream> = (0..50)
        .map(|_| UnixStream::connect(&vm.sock).unwrap())
        .collect();
    for mut stream in &streams {
        stream
            .write_all(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
    }
    for stream in streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let answer = read_answer(&mut BufReader::new(stream));
        assert_eq!(answer.status, 200);
    }
    // Keep-alive: several requests on one connection.
    let stream = UnixStream::connect(&vm.sock).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for _ in 0..3 {
        writer
            .write_all(b"GET /machine-config HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut reader).status, 200);
    }
    assert_eq!(vm.state(), "Running");
    let before = vm.exits();
    wait_until("the guest to keep running", || vm.exits() > before);
    let (code, _) = vm.terminate();
    assert_eq!(code, Some(143));
}

#[test]
fn sie_ctl_drives_a_vm_readably_and_fails_in_one_line() {
    let vm = ApiVm::start("api-ctl", &[]);
    let sock = vm.sock.to_str().unwrap().to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["ctl", "--sock", sock.as_str()];
        all.extend_from_slice(args);
        sie(&all)
    };
    let info = ctl(&["info"]);
    info.expect_code(0);
    assert!(info.stdout.contains("Not started"), "{}", info.stdout);
    let boot = serde_json::json!({"kernel_image_path": TICKER}).to_string();
    ctl(&["request", "put", "/boot-source", &boot]).expect_code(0);
    ctl(&["start"]).expect_code(0);
    ctl(&["pause"]).expect_code(0);
    assert!(ctl(&["info"]).stdout.contains("Paused"));
    ctl(&["resume"]).expect_code(0);
    let stats = ctl(&["stats"]);
    stats.expect_code(0);
    assert!(stats.stdout.contains("pio_out"), "{}", stats.stdout);
    let metrics = ctl(&["metrics"]);
    assert!(
        metrics.stdout.contains("sie_vm_exits_total"),
        "{}",
        metrics.stdout
    );
    ctl(&["start"]).expect_one_line_error("after starting");
    ctl(&["request", "put", "/machine-config", "{not json"]).expect_one_line_error("JSON");
    sie(&["ctl", "--sock", "/nonexistent/api.sock", "info"])
        .expect_one_line_error("/nonexistent/api.sock");
    drop(vm);
}

#[test]
fn vfio_with_a_balloon_or_hotplug_memory_is_refused_before_instance_start() {
    let vm = ApiVm::start("api-vfio-with", &[]);
    let device = r#"{"id": "gpu", "path": "/sys/bus/pci/devices/0000:00:03.0"}"#;
    vm.ok(
        "PUT",
        "/balloon",
        r#"{"amount_mib": 0, "deflate_on_oom": false}"#,
    );
    vm.call("PUT", "/vfio/gpu", Some(device))
        .expect_fault("vfio and balloon cannot be combined");
    let vm = ApiVm::start("api-vfio-with-hotplug", &[]);
    vm.ok("PUT", "/hotplug/memory", r#"{"total_size_mib": 1024}"#);
    vm.call("PUT", "/vfio/gpu", Some(device))
        .expect_fault("vfio and memory-hotplug cannot be combined");
}
