//! `--console virtio`: a virtio-console device is placed, the kernel
//! command line names `hvc0` unless the user named a console, and the
//! choice is refused in one line when it is not `serial` or `virtio`; a
//! snapshot of such a VM restores with the device.

#![allow(clippy::unwrap_used)]

mod common;

use common::api::ApiVm;
use common::counter::{capture, wait_for};
use common::{Scratch, sie};
use sie_guests::{BOOTINFO, VIRTIO_PROBE};

/// The `cmdline=` line the bootinfo guest prints.
fn cmdline_of(args: &[&str]) -> String {
    let mut all = vec!["run", "--kernel", BOOTINFO.path, "--memory", "64"];
    all.extend_from_slice(args);
    let run = sie(&all);
    run.expect_code(0);
    run.stdout
        .lines()
        .find_map(|line| line.strip_prefix("cmdline="))
        .unwrap_or_else(|| panic!("no cmdline line in {}", run.stdout))
        .to_string()
}

#[test]
fn the_virtio_console_is_placed_and_shows_in_stats() {
    let run = sie(&[
        "run",
        "--kernel",
        VIRTIO_PROBE.path,
        "--rng",
        "--console",
        "virtio",
        "--stats",
    ]);
    run.expect_code(0);
    // The console comes after every other device (the entropy device, 4);
    // the probe's own output still reaches stdout through COM1.
    assert!(
        run.stdout
            .contains("slot0 magic=74726976 version=2 device=4"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("slot1 magic=74726976 version=2 device=3"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("virtio-console"), "{}", run.stderr);
}

#[test]
fn the_command_line_names_hvc0_unless_the_user_named_a_console() {
    let default = cmdline_of(&["--console", "virtio"]);
    assert!(
        default.starts_with("console=hvc0 reboot=k panic=-1 pci=off virtio_mmio.device="),
        "{default}"
    );
    let own = cmdline_of(&["--console", "virtio", "--cmdline", "foo=bar"]);
    assert!(
        own.starts_with("foo=bar console=hvc0 pci=off virtio_mmio.device="),
        "{own}"
    );
    let named = cmdline_of(&["--console", "virtio", "--cmdline", "console=ttyS0"]);
    assert!(!named.contains("hvc0"), "{named}");
    assert_eq!(
        cmdline_of(&["--console", "serial", "--cmdline", "foo=bar"]),
        "foo=bar pci=off"
    );
}

#[test]
fn the_config_files_console_section_chooses_the_device() {
    let scratch = Scratch::new("virtio-console-config");
    let config = scratch.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}},
                "console": {{"device": "virtio"}}}}"#,
            BOOTINFO.path
        )
        .as_bytes(),
    );
    let run = sie(&["run", "--config-file", &config]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("cmdline=console=hvc0 "),
        "{}",
        run.stdout
    );
    // Firecracker's mode reads the same section.
    let run = sie(&["--no-api", "--config-file", &config]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("cmdline=console=hvc0 "),
        "{}",
        run.stdout
    );
    // The flag wins over the file.
    let run = sie(&["run", "--config-file", &config, "--console", "serial"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("cmdline=console=ttyS0 "),
        "{}",
        run.stdout
    );

    let bad = scratch.file(
        "bad.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "console": {{"device": "hvc"}}}}"#,
            BOOTINFO.path
        )
        .as_bytes(),
    );
    sie(&["run", "--config-file", &bad]).expect_one_line_error("console");
}

#[test]
fn an_unknown_console_device_is_a_usage_error() {
    let run = sie(&["run", "--kernel", BOOTINFO.path, "--console", "hvc"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--console"), "{}", run.stderr);
    assert!(run.stderr.contains("virtio"), "{}", run.stderr);
}

#[test]
fn a_vm_with_the_virtio_console_is_snapshotted_and_restored_with_it() {
    const LIMIT: u32 = 40;
    let keep = Scratch::new("virtio-console-snapshot");
    let config = keep.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "limit={LIMIT} delay=20000"}},
                "console": {{"device": "virtio"}}}}"#,
            sie_guests::COUNTER.path
        )
        .as_bytes(),
    );
    // The config file starts the VM at once (Firecracker's behaviour).
    let mut vm = ApiVm::start("virtio-console-source", &["--config-file", &config]);
    let out = capture(&mut vm);
    wait_for("a few counts", || {
        out.lock().expect("output lock").contains("count 5\n")
    });
    assert_eq!(
        vm.get("/vm/config").json()["console"],
        serde_json::json!({"device": "virtio"})
    );
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snap = format!("{}/vm.snap", keep.path());
    let mem = format!("{}/vm.mem", keep.path());
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let before = out.lock().expect("output lock").clone();

    // The restored VM has the device again (the snapshot's transports
    // match the rebuilt machine's) and the guest counts on.
    let restored = sie(&["run", "--restore", &snap, "--mem", &mem, "--stats"]);
    restored.expect_code(0);
    assert_eq!(
        format!("{before}{}", restored.stdout),
        common::counter::full_count(LIMIT)
    );
    assert!(
        restored.stderr.contains("virtio-console"),
        "{}",
        restored.stderr
    );
}
