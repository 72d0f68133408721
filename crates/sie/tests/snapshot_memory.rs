//! Where a guest's RAM lives, through the binary on the real /dev/kvm:
//! `machine-config.huge_pages` boots a counting guest on 2 MiB hugetlb
//! pages or transparent huge pages, and `huge_pages` on `PUT /snapshot/load`
//! restores one there (the host's own accounting shows it) and the guest
//! counts on exactly where it stopped; a host without enough huge pages
//! refuses the configuration or the load in one line.

mod common;

use common::api::ApiVm;
use common::counter::{capture, full_count, pause_after, wait_for};

const LIMIT: u32 = 30;

/// A snapshot of the counter paused after a few counts, in `keep`: (state
/// file, memory file, the count it stopped at).
fn counter_snapshot(keep: &common::Scratch) -> (String, String, u32) {
    let mut vm = ApiVm::start("huge-source", &[]);
    let out = capture(&mut vm);
    vm.boot(
        sie_guests::COUNTER.path,
        &format!("limit={LIMIT} delay=5000"),
    );
    let stopped = pause_after(&vm, &out, 3);
    let snap = format!("{}/vm.snap", keep.path());
    let mem = format!("{}/vm.mem", keep.path());
    let body = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    vm.terminate();
    (snap, mem, stopped)
}

/// A `kB` field of /proc/PID/`file` summed over its lines (smaps has one
/// per mapping).
fn kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix(field))
        .filter_map(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Loads the snapshot paused with `huge_pages`, reads `measure` (given the
/// sie process's pid) while it is loaded, resumes it and checks the count
/// goes on.
fn restore_on(
    huge_pages: &str,
    (snap, mem, stopped): (&str, &str, u32),
    measure: impl Fn(u32) -> u64,
) -> u64 {
    let mut vm = ApiVm::start("huge-restore", &[]);
    let out = capture(&mut vm);
    let load = serde_json::json!({
        "snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "huge_pages": huge_pages,
    });
    vm.ok("PUT", "/snapshot/load", &load.to_string());
    let accounted = measure(vm.child.id());
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
    wait_for("the last count", || {
        out.lock()
            .expect("output")
            .contains(&format!("count {LIMIT}\n"))
    });
    let printed = out.lock().expect("output").clone();
    let expected: String = full_count(LIMIT)
        .lines()
        .skip(stopped as usize)
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(printed, expected, "on {huge_pages} pages");
    accounted
}

fn meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The host's hugetlb pool is one for the whole machine: the tests that
/// size it take turns.
static POOL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sets the host's hugetlb pool to `pages` 2 MiB pages.
fn set_huge_pages(pages: u64) {
    std::fs::write("/proc/sys/vm/nr_hugepages", pages.to_string())
        .expect("set /proc/sys/vm/nr_hugepages (the tests run as root)");
}

#[test]
fn a_restored_guest_runs_on_huge_pages_and_counts_on() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let keep = common::Scratch::new("snapshot-huge-files");
    let (snap, mem, stopped) = counter_snapshot(&keep);

    // Transparent: the fill faulted whole 2 MiB pages in.
    let snapshot = (snap.as_str(), mem.as_str(), stopped);
    let thp = restore_on("Transparent", snapshot, |pid| {
        kib(pid, "smaps", "AnonHugePages:")
    });
    assert!(
        thp >= 2048,
        "no transparent huge page backs guest RAM ({thp} kB)"
    );

    // 2M: 32 MiB of guest RAM takes 16 hugetlb pages from the pool (those
    // in use plus those reserved for later faults), which is put back as
    // it was; the pages the fill touched are the process's hugetlb memory.
    let before = meminfo("HugePages_Total:");
    set_huge_pages(before + 16);
    let available = || meminfo("HugePages_Free:") - meminfo("HugePages_Rsvd:");
    let pool_free = available();
    let (taken, touched) = {
        let taken = std::cell::Cell::new(0);
        let touched = restore_on("2M", snapshot, |pid| {
            taken.set(pool_free - available());
            kib(pid, "status", "HugetlbPages:")
        });
        (taken.get(), touched)
    };
    set_huge_pages(0);
    let refused = {
        let vm = ApiVm::start("huge-short", &[]);
        let load = serde_json::json!({
            "snapshot_path": snap, "mem_file_path": mem, "huge_pages": "2M",
        });
        let answer = vm.call("PUT", "/snapshot/load", Some(&load.to_string()));
        assert_eq!(vm.state(), "Not started", "a refused load leaves sie empty");
        vm.terminate();
        answer
    };
    set_huge_pages(before);
    assert_eq!(taken, 16, "guest RAM takes 16 pages of the pool");
    assert!(
        touched >= 2048,
        "the guest's pages are hugetlb ({touched} kB)"
    );
    refused.expect_fault("free 2 MiB huge pages");
}

/// Boots the counter on `huge_pages`, reads `measure` (given sie's pid)
/// once it counts, and lets it finish.
fn boot_on(huge_pages: &str, measure: impl Fn(u32) -> u64) -> u64 {
    let mut vm = ApiVm::start("huge-boot", &[]);
    let out = capture(&mut vm);
    let boot = serde_json::json!({
        "kernel_image_path": sie_guests::COUNTER.path,
        "boot_args": format!("limit={LIMIT} delay=5000"),
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    let machine =
        serde_json::json!({"vcpu_count": 1, "mem_size_mib": 32, "huge_pages": huge_pages});
    vm.ok("PUT", "/machine-config", &machine.to_string());
    assert_eq!(vm.get("/machine-config").json()["huge_pages"], huge_pages);
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    wait_for("a count", || {
        out.lock().expect("output").contains("count 2\n")
    });
    let measured = measure(vm.child.id());
    let (code, stderr) = vm.wait();
    assert_eq!(code, Some(0), "{stderr}");
    measured
}

#[test]
fn a_booted_guest_runs_on_the_huge_pages_its_machine_config_names() {
    let _pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let thp = boot_on("Transparent", |pid| kib(pid, "smaps", "AnonHugePages:"));
    assert!(
        thp >= 2048,
        "no transparent huge page backs guest RAM ({thp} kB)"
    );

    let before = meminfo("HugePages_Total:");
    set_huge_pages(before + 16);
    let hugetlb = boot_on("2M", |pid| kib(pid, "status", "HugetlbPages:"));
    set_huge_pages(0);
    // Too few: the configuration itself is refused, naming the shortfall.
    let vm = ApiVm::start("huge-boot-short", &[]);
    let answer = vm.call(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count": 1, "mem_size_mib": 32, "huge_pages": "2M"}"#),
    );
    vm.terminate();
    set_huge_pages(before);
    assert!(
        hugetlb >= 2048,
        "guest RAM is on hugetlb pages ({hugetlb} kB)"
    );
    answer.expect_fault("needs 16 free 2 MiB huge pages for 32 MiB, the host has 0");
}
