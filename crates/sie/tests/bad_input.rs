//! Bad user input never panics: one line naming the problem, exit status 1
//! (2 for command-line usage errors, as clap reports them).

mod common;

use common::{Scratch, sie};
use sie_guests::HELLO;

#[test]
fn a_missing_kernel_is_named() {
    sie(&["run", "--kernel", "/nonexistent/vmlinux"]).expect_one_line_error("/nonexistent/vmlinux");
}

#[test]
fn no_kernel_at_all_says_how_to_give_one() {
    sie(&["run"]).expect_one_line_error("--kernel");
}

#[test]
fn a_directory_is_not_a_kernel() {
    let scratch = Scratch::new("dir");
    sie(&["run", "--kernel", &scratch.path()]).expect_one_line_error("not a regular file");
}

#[test]
fn empty_and_garbage_kernels_are_refused() {
    let scratch = Scratch::new("garbage");
    let empty = scratch.file("empty", b"");
    sie(&["run", "--kernel", &empty]).expect_one_line_error("kernel");
    let bytes: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let garbage = scratch.file("garbage", &bytes);
    sie(&["run", "--kernel", &garbage]).expect_one_line_error("neither an ELF");
}

#[test]
fn an_initrd_larger_than_memory_is_refused() {
    let scratch = Scratch::new("initrd");
    let initrd = scratch.sparse("big.img", 200 << 20);
    sie(&[
        "run", "--kernel", HELLO.path, "--initrd", &initrd, "--memory", "128",
    ])
    .expect_one_line_error("initrd");
}

#[test]
fn a_kernel_larger_than_memory_is_refused() {
    // An ELF whose one PT_LOAD segment is 64 MiB long, booted with 32 MiB.
    let mut elf = HELLO.bytes.to_vec();
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let memsz = phoff + 40;
    elf[memsz..memsz + 8].copy_from_slice(&(64u64 << 20).to_le_bytes());
    let scratch = Scratch::new("bigkernel");
    let kernel = scratch.file("big.elf", &elf);
    sie(&["run", "--kernel", &kernel, "--memory", "32"]).expect_one_line_error("kernel");
}

#[test]
fn bad_memory_sizes_are_named() {
    for (value, needle) in [
        ("0", "at least 1 MiB"),
        ("abc", "--memory"),
        ("100000000T", "mem_size_mib"),
        ("-1", "--memory"),
    ] {
        sie(&["run", "--kernel", HELLO.path, "--memory", value]).expect_one_line_error(needle);
    }
}

#[test]
fn memory_the_host_cannot_map_is_refused() {
    // 200 TiB is more than a process's 128 TiB of address space.
    sie(&["run", "--kernel", HELLO.path, "--memory", "200T"])
        .expect_one_line_error("cannot map 209715200 MiB of guest memory");
}

#[test]
fn bad_vcpu_counts_are_named() {
    for value in ["0", "100000", "255"] {
        sie(&["run", "--kernel", HELLO.path, "--vcpus", value]).expect_one_line_error("vcpus");
    }
}

#[test]
fn config_file_errors_name_the_field_or_the_problem() {
    let scratch = Scratch::new("badconfig");
    let unknown = scratch.file(
        "unknown.json",
        br#"{"boot-source": {"kernel_image_path": "k"}, "machine-config": {"vcpus": 2}}"#,
    );
    sie(&["run", "--config-file", &unknown]).expect_one_line_error("vcpus");
    let broken = scratch.file("broken.json", b"{ this is not json");
    sie(&["run", "--config-file", &broken]).expect_one_line_error("broken.json");
    sie(&["run", "--config-file", "/nonexistent/vm.json"])
        .expect_one_line_error("/nonexistent/vm.json");
    let mmds = scratch.file(
        "mmds.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "mmds-config": {{"network_interfaces": ["eth0"]}}}}"#,
            HELLO.path
        )
        .as_bytes(),
    );
    sie(&["run", "--config-file", &mmds]).expect_one_line_error("mmds-config");
    let metadata = scratch.file("metadata.json", b"[1, 2");
    sie(&["run", "--kernel", HELLO.path, "--metadata", &metadata])
        .expect_one_line_error("not JSON");
    sie(&["run", "--kernel", HELLO.path, "--mmds-size-limit", "0"])
        .expect_one_line_error("--mmds-size-limit 0");
    let metadata = scratch.file(
        "metadata-big.json",
        br#"{"key": "a value longer than 16 bytes"}"#,
    );
    sie(&[
        "run",
        "--kernel",
        HELLO.path,
        "--metadata",
        &metadata,
        "--mmds-size-limit",
        "16",
    ])
    .expect_one_line_error("metadata-big.json");
    let drives = scratch.file(
        "drives.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "drives": [{{"drive_id": "root", "path_on_host": "/x", "is_root_device": true}}]}}"#,
            HELLO.path
        )
        .as_bytes(),
    );
    // A disk that cannot be opened is named by drive id and path.
    sie(&["run", "--config-file", &drives]).expect_one_line_error("drive root (/x)");
    sie(&[
        "run",
        "--kernel",
        HELLO.path,
        "--disk",
        "/nonexistent/disk.img,ro",
    ])
    .expect_one_line_error("/nonexistent/disk.img");
    sie(&["run", "--kernel", HELLO.path, "--disk", "x.img,fast"]).expect_one_line_error("--disk");
    sie(&["run", "--kernel", HELLO.path, "--vsock", "2,/tmp/v.sock"])
        .expect_one_line_error("--vsock");
}

#[test]
fn a_missing_kvm_device_is_named() {
    let run = sie_with_env(
        &["run", "--kernel", HELLO.path],
        "SIE_KVM_DEVICE",
        "/nonexistent/kvm",
    );
    run.expect_one_line_error("/nonexistent/kvm");
}

#[test]
fn usage_errors_exit_2() {
    let run = sie(&["run", "--no-such-flag"]);
    run.expect_code(2);
    assert!(!run.stderr.contains("panicked"));
}

fn sie_with_env(args: &[&str], key: &str, value: &str) -> common::Run {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(args)
        .env(key, value)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run sie");
    common::Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn a_vfio_device_that_cannot_be_passed_says_why() {
    let missing = "/sys/bus/pci/devices/0000:7f:1f.7";
    sie(&["run", "--kernel", HELLO.path, "--vfio", missing])
        .expect_one_line_error("no such PCI device");
    sie(&["run", "--kernel", HELLO.path, "--vfio", "0000:00:03.0"])
        .expect_one_line_error("absolute sysfs path");
}

#[test]
fn vfio_with_a_balloon_or_hotplug_memory_is_refused_naming_both() {
    let scratch = Scratch::new("vfio-with");
    let device = "/sys/bus/pci/devices/0000:00:03.0";
    for (section, message) in [
        (
            r#""balloon": {"amount_mib": 0, "deflate_on_oom": false}"#,
            "vfio and balloon cannot be combined",
        ),
        (
            r#""memory-hotplug": {"total_size_mib": 1024}"#,
            "vfio and memory-hotplug cannot be combined",
        ),
    ] {
        // The flag adds the device to a file that has the other setting...
        let config = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, {section}}}"#,
            HELLO.path
        );
        let file = scratch.file("vm.json", config.as_bytes());
        sie(&["run", "--config-file", &file, "--vfio", device]).expect_one_line_error(message);
        // ...and a file with both is refused the same way.
        let both = format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "vfio": [{{"id": "gpu", "path": "{device}"}}], {section}}}"#,
            HELLO.path
        );
        let file = scratch.file("both.json", both.as_bytes());
        sie(&["run", "--config-file", &file]).expect_one_line_error(message);
    }
}
