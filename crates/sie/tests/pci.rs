//! The PCI switch through the binary on the real /dev/kvm: `--enable-pci`
//! (Firecracker mode) and `--pci` (`sie run`) boot a guest with a PCI bus,
//! `GET /vm/config` shows the choice, and a VM with PCI devices is refused
//! a snapshot or a migration in one line (their state is not saved yet).

mod common;

use common::api::ApiVm;
use common::counter::{capture, wait_for};
use common::sie;

const REFUSAL: &str = "snapshots of a VM with PCI devices are not supported yet";

#[test]
fn a_pci_vm_shows_its_switch_and_refuses_snapshots_and_migration() {
    let mut vm = ApiVm::start("pci-refusal", &["--enable-pci"]);
    assert_eq!(
        vm.get("/vm/config").json()["pci"],
        serde_json::json!({"enabled": true})
    );
    let out = capture(&mut vm);
    vm.boot(sie_guests::COUNTER.path, "limit=1000 delay=20000");
    wait_for("a few counts", || {
        out.lock().expect("output lock").contains("count 3\n")
    });
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snap = format!("{}/vm.snap", vm.dir.path());
    let mem = format!("{}/vm.mem", vm.dir.path());
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    let answer = vm.call("PUT", "/snapshot/create", Some(&body.to_string()));
    answer.expect_fault(REFUSAL);
    assert!(!std::path::Path::new(&snap).exists(), "no snapshot file");
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let send = serde_json::json!({"destination_url": format!("unix:{}/m.sock", vm.dir.path())});
    vm.call("PUT", "/migration/send", Some(&send.to_string()))
        .expect_fault(REFUSAL);
    assert_eq!(vm.state(), "Running");
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn without_the_flag_the_switch_is_off() {
    let vm = ApiVm::start("pci-off", &[]);
    assert_eq!(
        vm.get("/vm/config").json()["pci"],
        serde_json::json!({"enabled": false})
    );
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn sie_run_with_pci_boots_and_ends_as_without() {
    let run = sie(&[
        "run",
        "--pci",
        "--kernel",
        sie_guests::COUNTER.path,
        "--cmdline",
        "limit=3 delay=1000",
        "--memory",
        "32",
    ]);
    run.expect_code(0);
    assert!(run.stdout.contains("count 3\n"), "{}", run.stdout);
}

#[test]
fn devices_on_pci_are_wired_on_the_real_kvm_through_the_api() {
    // The go-sdk's order, with --enable-pci: a drive and an entropy device
    // go on PCI (MSI-X irqfds, BAR 0 with its notify ioeventfds) when
    // InstanceStart builds the VM; the guest ignores them and counts.
    let mut vm = ApiVm::start("pci-devices", &["--enable-pci"]);
    let out = capture(&mut vm);
    let disk = vm.dir.sparse("disk.img", 1 << 20);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": "limit=3 delay=1000"
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    let drive =
        serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false});
    vm.ok("PUT", "/drives/data", &drive.to_string());
    vm.ok("PUT", "/entropy", "{}");
    let config = vm.get("/vm/config").json();
    assert_eq!(config["pci"], serde_json::json!({"enabled": true}));
    // The guest counts to 3 and resets: sie exits with it.
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for("the third count", || {
        out.lock().expect("output lock").contains("count 3\n")
    });
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
}

const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";

#[test]
fn a_new_drive_put_after_boot_is_hotplugged_on_pci() {
    // With --enable-pci, PUT /drives/{id} of a new id after InstanceStart
    // builds the drive on the hotplug thread (under sie's seccomp filters),
    // plugs it into a free slot and serves it; the VM's config shows it.
    // An id the VM has, or a root device, are refused in one line.
    let mut vm = ApiVm::start("pci-hotplug", &["--enable-pci"]);
    let out = capture(&mut vm);
    let disk = vm.dir.sparse("disk.img", 1 << 20);
    let scratch = vm.dir.sparse("scratch.img", 1 << 20);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": "limit=1000 delay=20000"
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    let drive =
        serde_json::json!({"drive_id": "data", "path_on_host": disk, "is_root_device": false});
    vm.ok("PUT", "/drives/data", &drive.to_string());
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for("a few counts", || {
        out.lock().expect("output lock").contains("count 2\n")
    });
    let hot = serde_json::json!({"drive_id": "scratch", "path_on_host": scratch, "is_root_device": false});
    vm.ok("PUT", "/drives/scratch", &hot.to_string());
    let drives = vm.get("/vm/config").json()["drives"].clone();
    let ids: Vec<&str> = drives
        .as_array()
        .expect("drives")
        .iter()
        .filter_map(|d| d["drive_id"].as_str())
        .collect();
    assert_eq!(ids, ["data", "scratch"]);
    vm.call("PUT", "/drives/data", Some(&drive.to_string()))
        .expect_fault(AFTER_START);
    let root =
        serde_json::json!({"drive_id": "r", "path_on_host": scratch, "is_root_device": true});
    vm.call("PUT", "/drives/r", Some(&root.to_string()))
        .expect_fault("cannot be the root device");
    // The hotplugged drive can be patched like a boot one.
    vm.ok(
        "PATCH",
        "/drives/scratch",
        &serde_json::json!({"drive_id": "scratch", "path_on_host": disk}).to_string(),
    );
    // Only drives added after boot can be removed.
    vm.call("DELETE", "/drives/data", None)
        .expect_fault("data was attached at boot");
    vm.call("DELETE", "/drives/nope", None)
        .expect_fault("no device nope");
    // This guest has no ACPI: it never lets go, so the DELETE times out,
    // saying so, and the drive stays.
    vm.call("DELETE", "/drives/scratch", None)
        .expect_fault("did not release PCI slot");
    let drives = vm.get("/vm/config").json()["drives"].clone();
    assert_eq!(drives.as_array().map(Vec::len), Some(2));
    assert_eq!(vm.state(), "Running");
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}

#[test]
fn without_pci_a_drive_put_after_boot_is_refused_as_before() {
    let mut vm = ApiVm::start("no-pci-hotplug", &[]);
    let out = capture(&mut vm);
    let scratch = vm.dir.sparse("scratch.img", 1 << 20);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": "limit=1000 delay=20000"
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for("a count", || {
        out.lock().expect("output lock").contains("count 1\n")
    });
    let hot = serde_json::json!({"drive_id": "scratch", "path_on_host": scratch, "is_root_device": false});
    vm.call("PUT", "/drives/scratch", Some(&hot.to_string()))
        .expect_fault(AFTER_START);
    vm.call("DELETE", "/drives/scratch", None)
        .expect_fault("needs a VM with PCI");
    let (code, stderr) = vm.terminate();
    assert_eq!(code, Some(143), "{stderr}");
}
