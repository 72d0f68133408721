//! Tiny guests on the real /dev/kvm, run through the `sie` binary: what they
//! print, how sie exits, and what `--stats` counts.

mod common;

use common::{Scratch, sie};
use sie_guests::{BOOTINFO, BZIMAGE, HELLO, PVH, SMP, TRIPLE_FAULT, UNKNOWN_IO};

/// The numbers in the `--stats` row for an exit kind: count first.
fn stat_row<'a>(stderr: &'a str, kind: &str) -> Option<&'a str> {
    stderr
        .lines()
        .find(|line| line.split_whitespace().next() == Some(kind))
}

fn count_of(stderr: &str, kind: &str) -> u64 {
    stat_row(stderr, kind)
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn serial_output_reaches_stdout_and_a_reset_exits_0() {
    let run = sie(&["run", "--kernel", HELLO.path, "--memory", "128"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "hello from sie guest\nbye\n");
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[test]
fn stats_count_every_exit_exactly_and_show_the_markers() {
    let run = sie(&[
        "run",
        "--kernel",
        HELLO.path,
        "--cmdline",
        "markers=5",
        "--stats",
    ]);
    run.expect_code(0);
    let stderr = &run.stderr;
    assert_eq!(
        count_of(stderr, "pio_out"),
        sie_guests::hello_pio_writes(5),
        "{stderr}"
    );
    assert_eq!(count_of(stderr, "pio_in"), 0, "{stderr}");
    assert_eq!(count_of(stderr, "mmio_write"), 1, "{stderr}");
    assert_eq!(
        count_of(stderr, "total"),
        sie_guests::hello_pio_writes(5) + 1,
        "{stderr}"
    );
    let markers: Vec<&str> = stderr.lines().filter(|l| l.contains("port 0x80")).collect();
    let values: Vec<&str> = markers
        .iter()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    assert_eq!(values, ["0x01", "0x02", "0x03", "0x04", "0x05"], "{stderr}");
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("boot timer 0x7b"))
            .count(),
        1,
        "{stderr}"
    );
    let com1 = stat_row(stderr, "com1").expect("com1 row");
    assert_eq!(com1.split_whitespace().nth(2), Some("25"), "{com1}");
}

#[test]
fn hello_with_boot_timer_0_makes_no_mmio_write() {
    // `sie bench lifecycle` boots hello this way in Firecracker too, whose
    // page tables do not map the boot timer's address.
    let run = sie(&[
        "run",
        "--kernel",
        HELLO.path,
        "--cmdline",
        "markers=2 boot_timer=0",
        "--stats",
    ]);
    run.expect_code(0);
    assert_eq!(run.stdout, "hello from sie guest\nbye\n");
    let stderr = &run.stderr;
    assert_eq!(count_of(stderr, "mmio_write"), 0, "{stderr}");
    assert_eq!(
        count_of(stderr, "pio_out"),
        sie_guests::hello_pio_writes(2),
        "{stderr}"
    );
    assert!(!stderr.contains("boot timer 0x7b"), "{stderr}");
}

/// The MiB figure of a `--stats` memory row (`  NAME   1.23 MiB …`).
fn memory_mib(stderr: &str, name: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|line| line.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} row in:\n{stderr}"));
    let figure = line.trim_start()[name.len()..].split_whitespace().next();
    figure
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn stats_break_the_vmm_memory_down_with_the_guest_ram_apart() {
    // The guest's RAM (its image, page tables) is found by its address and
    // shown on its own row, outside the VMM's total.
    let run = sie(&["run", "--kernel", HELLO.path, "--memory", "64", "--stats"]);
    run.expect_code(0);
    let stderr = &run.stderr;
    let rss = memory_mib(stderr, "VMM resident");
    let parts = [
        "sie binary",
        "shared libraries",
        "heap and anonymous",
        "other (vDSO, kvm_run, memfd)",
        "thread stacks",
    ]
    .map(|name| memory_mib(stderr, name));
    assert!(memory_mib(stderr, "sie binary") > 0.0, "{stderr}");
    assert!(memory_mib(stderr, "guest RAM resident") > 0.0, "{stderr}");
    // The rows add up to the total (each is rounded to 0.01 MiB).
    let sum: f64 = parts.iter().sum();
    assert!((sum - rss).abs() < 0.05, "{sum} vs {rss}:\n{stderr}");
    // Default huge_pages ("None") and private memory.
    assert!(
        stderr.contains("backed by                    base pages\n"),
        "{stderr}"
    );
}

#[test]
fn stats_show_the_guest_ram_on_transparent_huge_pages() {
    let scratch = Scratch::new("thp-stats");
    let config = scratch.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64, "huge_pages": "Transparent"}}}}"#,
            HELLO.path
        )
        .as_bytes(),
    );
    let run = sie(&["run", "--config-file", &config, "--stats"]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("transparent huge pages asked (MADV_HUGEPAGE)"),
        "{}",
        run.stderr
    );
}

#[test]
fn boot_params_carry_cmdline_initrd_and_e820() {
    let scratch = Scratch::new("bootinfo");
    let initrd = scratch.file("initrd.img", &[0x5a; 12345]);
    let run = sie(&[
        "run",
        "--kernel",
        BOOTINFO.path,
        "--initrd",
        &initrd,
        "--cmdline",
        "foo=bar",
        "--memory",
        "64",
    ]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(out.contains("cmdline=foo=bar pci=off\n"), "{out}");
    let initrd_line = out
        .lines()
        .find(|l| l.starts_with("initrd="))
        .expect("initrd line");
    let fields: Vec<u64> = initrd_line["initrd=".len()..]
        .split(' ')
        .map(|h| u64::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(fields[1], 12345, "{initrd_line}");
    assert_eq!(
        fields[0] % 4096,
        0,
        "initrd not page-aligned: {initrd_line}"
    );
    assert!(
        fields[0] >= 0x100000 && fields[0] + 12345 <= 64 << 20,
        "{initrd_line}"
    );
    let e820: Vec<(u64, u64, u32)> = out
        .lines()
        .filter_map(|l| l.strip_prefix("e820 "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                u64::from_str_radix(f[0], 16).unwrap(),
                u64::from_str_radix(f[1], 16).unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    let ram: u64 = e820.iter().filter(|e| e.2 == 1).map(|e| e.1).sum();
    assert!(
        e820.iter().any(|e| e.0 == 0 && e.2 == 1 && e.1 <= 0xa0000),
        "{out}"
    );
    assert!(e820.iter().any(|e| e.0 == 0x100000 && e.2 == 1), "{out}");
    assert!(
        ram <= 64 << 20 && ram > (64 << 20) - (1 << 20),
        "usable RAM {ram:#x}: {out}"
    );
    assert!(
        out.contains(&format!("e820_entries={}\n", e820.len())),
        "{out}"
    );
}

#[test]
fn pvh_entry_gets_start_info_with_cmdline_and_module() {
    let scratch = Scratch::new("pvh");
    let initrd = scratch.file("initrd.img", &[1; 4096]);
    let run = sie(&[
        "run",
        "--kernel",
        PVH.path,
        "--initrd",
        &initrd,
        "--cmdline",
        "pvh=yes",
    ]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(out.contains("pvh magic=336ec578\n"), "{out}");
    assert!(out.contains("cmdline=pvh=yes pci=off\n"), "{out}");
    assert!(out.contains("modules=1\n"), "{out}");
    let module = out
        .lines()
        .find(|l| l.starts_with("module "))
        .expect("module line");
    assert!(module.ends_with(" 1000"), "{module}");
    assert!(
        out.lines().any(|l| l.starts_with("memmap 100000 ")),
        "{out}"
    );
}

#[test]
fn a_bzimage_guest_boots_through_its_64_bit_entry() {
    let run = sie(&["run", "--kernel", BZIMAGE.path, "--cmdline", "bz=1"]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("bzimage ok version=20f\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("cmdline=bz=1 pci=off\n"),
        "{}",
        run.stdout
    );
}

fn smp(vcpus: u32) {
    let count = vcpus.to_string();
    let cmdline = format!("cpus={vcpus}");
    let run = sie(&[
        "run",
        "--kernel",
        SMP.path,
        "--vcpus",
        &count,
        "--cmdline",
        &cmdline,
    ]);
    run.expect_code(0);
    for id in 0..vcpus {
        assert!(
            run.stdout.contains(&format!("cpu {id} up\n")),
            "{}",
            run.stdout
        );
    }
    assert!(
        run.stdout.contains(&format!("all {vcpus} cpus up\n")),
        "{}",
        run.stdout
    );
}

#[test]
fn two_vcpus_both_start_with_their_apic_ids() {
    smp(2);
}

#[test]
fn four_vcpus_all_start_with_their_apic_ids() {
    smp(4);
}

#[test]
fn unclaimed_port_and_mmio_reads_return_all_ones_and_are_counted() {
    let run = sie(&["run", "--kernel", UNKNOWN_IO.path, "--stats"]);
    run.expect_code(0);
    assert_eq!(run.stdout, "port=ff\nmmio=ffffffff\n");
    assert!(
        run.stderr.contains("port 0x1234: 1 reads, 0 writes"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("mmio 0xd0000000: 1 reads, 0 writes"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_triple_fault_exits_3_with_a_message_and_registers() {
    let run = sie(&["run", "--kernel", TRIPLE_FAULT.path]);
    run.expect_code(3);
    assert!(
        run.stdout.contains("about to triple fault"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("triple fault"), "{}", run.stderr);
    assert!(run.stderr.contains("rip="), "{}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[test]
fn a_config_file_boots_and_flags_override_it() {
    let scratch = Scratch::new("config");
    let config = scratch.file(
        "vm.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "markers=2"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 64}}}}"#,
            HELLO.path
        )
        .as_bytes(),
    );
    let run = sie(&["run", "--config-file", &config, "--stats"]);
    run.expect_code(0);
    assert_eq!(
        count_of(&run.stderr, "pio_out"),
        sie_guests::hello_pio_writes(2)
    );
    let run = sie(&[
        "run",
        "--config-file",
        &config,
        "--cmdline",
        "markers=7",
        "--stats",
    ]);
    run.expect_code(0);
    assert_eq!(
        count_of(&run.stderr, "pio_out"),
        sie_guests::hello_pio_writes(7)
    );
}

#[test]
fn virtio_devices_answer_in_their_mmio_slots_and_show_in_stats() {
    let scratch = Scratch::new("virtio-probe");
    let disk = scratch.sparse("disk.img", 1 << 20);
    let run = sie(&[
        "run",
        "--kernel",
        sie_guests::VIRTIO_PROBE.path,
        "--disk",
        &disk,
        "--rng",
        "--stats",
    ]);
    run.expect_code(0);
    // Drives come first (virtio-blk is device 2), then the entropy device (4).
    assert!(
        run.stdout
            .contains("slot0 magic=74726976 version=2 device=2"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("slot1 magic=74726976 version=2 device=4"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("virtio-blk:disk0"), "{}", run.stderr);
    assert!(run.stderr.contains("virtio-rng"), "{}", run.stderr);
}

#[test]
fn without_devices_the_virtio_slots_read_all_ones() {
    let run = sie(&["run", "--kernel", sie_guests::VIRTIO_PROBE.path]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("slot0 magic=ffffffff"),
        "{}",
        run.stdout
    );
}
