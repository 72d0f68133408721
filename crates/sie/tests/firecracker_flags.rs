//! sie started with Firecracker's flags: boots from `--no-api
//! --config-file`, accepts the flags real clients pass, answers `--version`
//! as Firecracker under that name, and refuses what it lacks in one line.

mod common;

use common::{Scratch, sie};
use sie_guests::HELLO;

fn config(scratch: &Scratch) -> String {
    scratch.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "markers=1"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#,
            HELLO.path
        )
        .as_bytes(),
    )
}

#[test]
fn no_api_with_a_config_file_boots_the_guest() {
    let scratch = Scratch::new("fc-boot");
    let config = config(&scratch);
    let run = sie(&["--no-api", "--config-file", &config]);
    run.expect_code(0);
    assert_eq!(run.stdout, "hello from sie guest\nbye\n");
}

#[test]
fn flags_that_clients_and_the_jailer_pass_are_accepted() {
    let scratch = Scratch::new("fc-flags");
    let config = config(&scratch);
    // flintlock passes the guest's metadata this way.
    let metadata = scratch.file("metadata.json", br#"{"latest": {"meta-data": {}}}"#);
    let run = sie(&[
        "--metadata",
        &metadata,
        "--mmds-size-limit",
        "100000",
        "--no-api",
        "--config-file",
        &config,
        "--id",
        "vm-1",
        "--boot-timer",
        "--no-seccomp",
        "--level",
        "Warning",
        "--http-api-max-payload-size",
        "51200",
        "--start-time-us",
        "1",
        "--start-time-cpu-us",
        "2",
        "--parent-cpu-time-us",
        "3",
    ]);
    run.expect_code(0);
    assert!(run.stdout.contains("hello from sie guest"));
}

#[test]
fn version_reads_as_firecracker_under_that_name() {
    let scratch = Scratch::new("fc-version");
    let link = format!("{}/firecracker", scratch.path());
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_sie"), &link).unwrap();
    let output = std::process::Command::new(&link)
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let mut lines = text.lines();
    let first = lines.next().unwrap();
    let version = first
        .strip_prefix("Firecracker v")
        .expect("Firecracker vX.Y.Z");
    assert_eq!(version.split('.').count(), 3, "{first}");
    assert!(lines.next().unwrap().starts_with("sie "), "{text}");
    let run = sie(&["--version"]);
    run.expect_code(0);
    assert!(run.stdout.starts_with("sie "), "{}", run.stdout);
}

#[test]
fn missing_features_are_refused_in_one_line() {
    let scratch = Scratch::new("fc-refuse");
    let config = config(&scratch);
    sie(&["--no-api"]).expect_one_line_error("--config-file");
    sie(&["--api-sock", "/nonexistent/dir/api.sock"]).expect_one_line_error("API socket");
    for (flag, value, needle) in [
        ("--seccomp-filter", "/tmp/filter.bpf", "--seccomp-filter"),
        ("--metadata", "/nonexistent/metadata.json", "MMDS"),
        ("--mmds-size-limit", "0", "--mmds-size-limit"),
        ("--metrics-path", "/nonexistent/dir/metrics", "metrics"),
        ("--log-path", "/nonexistent/dir/log", "/nonexistent/dir/log"),
        ("--id", "bad id!", "--id"),
        ("--http-api-max-payload-size", "0", "payload"),
    ] {
        sie(&["--no-api", "--config-file", &config, flag, value]).expect_one_line_error(needle);
    }
    // Metadata that is not JSON, or larger than the store may hold.
    let not_json = scratch.file("bad.json", b"{nope");
    sie(&[
        "--no-api",
        "--config-file",
        &config,
        "--metadata",
        &not_json,
    ])
    .expect_one_line_error("not JSON");
    let big = scratch.file(
        "big.json",
        br#"{"k": "0123456789012345678901234567890123456789"}"#,
    );
    sie(&[
        "--no-api",
        "--config-file",
        &config,
        "--metadata",
        &big,
        "--mmds-size-limit",
        "20",
    ])
    .expect_one_line_error("doesn't fit");
    sie(&["--no-api", "--config-file", &config, "--level", "loud"])
        .expect_one_line_error("--level");
}

#[test]
fn unknown_flags_are_usage_errors_and_a_bare_sie_shows_help() {
    let run = sie(&["--no-such-flag"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--no-such-flag"), "{}", run.stderr);
    let run = sie(&[]);
    run.expect_code(2);
    assert!(run.stdout.contains("Usage"), "{}", run.stdout);
}
