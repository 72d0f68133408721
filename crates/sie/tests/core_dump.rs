//! Guest core dumps: `PUT /vm/dump` (and `sie ctl dump`) of a counting
//! guest, read back with readelf, gdb and by hand; `--dump-on-panic` when a
//! guest reports a panic through pvpanic.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::api::ApiVm;
use common::counter::{capture, last_count, pause_after, wait_for};
use sie_guests::{COUNTER, PANIC};

/// A symbol's address in a guest ELF (`nm`; binutils builds the guests).
fn symbol(elf: &str, name: &str) -> u64 {
    let out = Command::new("nm").arg(elf).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let name_here = fields.nth(1)?;
            (name_here == name).then(|| u64::from_str_radix(address, 16).unwrap())
        })
        .unwrap_or_else(|| panic!("no symbol {name} in {elf}"))
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// A core file read by hand: its loads (paddr, offset, size), the
/// registers of each NT_PRSTATUS (the 27 `user_regs_struct` slots) and the
/// CR3 of each "QEMU" CPU-state note.
struct Core {
    bytes: Vec<u8>,
    loads: Vec<(u64, u64, u64)>,
    prstatus: Vec<Vec<u64>>,
    cr3: Vec<u64>,
}

impl Core {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..4], b"\x7fELF");
        assert_eq!(u16_at(&bytes, 16), 4, "ET_CORE");
        let (phoff, phnum) = (u64_at(&bytes, 32) as usize, u16_at(&bytes, 56) as usize);
        let mut loads = Vec::new();
        let mut prstatus = Vec::new();
        let mut cr3 = Vec::new();
        for index in 0..phnum {
            let ph = phoff + index * 56;
            let (kind, offset, paddr, filesz) = (
                u32_at(&bytes, ph),
                u64_at(&bytes, ph + 8),
                u64_at(&bytes, ph + 24),
                u64_at(&bytes, ph + 32),
            );
            match kind {
                1 => loads.push((paddr, offset, filesz)),
                4 => {
                    let mut at = offset as usize;
                    while at < (offset + filesz) as usize {
                        let (namesz, descsz, note) = (
                            u32_at(&bytes, at) as usize,
                            u32_at(&bytes, at + 4) as usize,
                            u32_at(&bytes, at + 8),
                        );
                        let desc = at + 12 + namesz.next_multiple_of(4);
                        if &bytes[at + 12..at + 17] == b"QEMU\0" {
                            // cr[3] after version/size, 18 registers and
                            // 10 segments of 24 bytes.
                            cr3.push(u64_at(&bytes, desc + 8 + 18 * 8 + 10 * 24 + 3 * 8));
                        } else if note == 1 {
                            // pr_reg starts 112 bytes into elf_prstatus.
                            prstatus.push(
                                (0..27)
                                    .map(|slot| u64_at(&bytes, desc + 112 + slot * 8))
                                    .collect(),
                            );
                        }
                        at = desc + descsz.next_multiple_of(4);
                    }
                }
                _ => {}
            }
        }
        Self {
            bytes,
            loads,
            prstatus,
            cr3,
        }
    }

    /// `len` bytes of guest memory at guest-physical `addr`.
    fn memory(&self, addr: u64, len: usize) -> &[u8] {
        let (paddr, offset, _) = self
            .loads
            .iter()
            .copied()
            .find(|&(paddr, _, size)| addr >= paddr && addr + len as u64 <= paddr + size)
            .unwrap_or_else(|| panic!("no PT_LOAD holds {addr:#x}"));
        let at = (offset + addr - paddr) as usize;
        &self.bytes[at..at + len]
    }
}

/// `readelf -h -l -n` of `path`.
fn readelf(path: &Path) -> String {
    let out = Command::new("readelf")
        .args(["-h", "-l", "-n"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `rip` as gdb reads it from the core, if gdb is installed.
fn gdb_rip(path: &Path) -> Option<u64> {
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "info registers rip", "-c"])
        .arg(path)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().find(|l| l.starts_with("rip"))?;
    let value = line.split_whitespace().nth(1)?;
    Some(u64::from_str_radix(value.trim_start_matches("0x"), 16).unwrap())
}

const RIP: usize = 16;

#[test]
fn a_dump_of_a_paused_counter_is_an_elf_core_of_its_memory_and_registers() {
    let mut vm = ApiVm::start("core-paused", &[]);
    let boot = serde_json::json!({
        "kernel_image_path": COUNTER.path, "boot_args": "limit=100000 delay=200000"
    });
    vm.ok("PUT", "/boot-source", &boot.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 32}"#,
    );
    let out = capture(&mut vm);
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let count = pause_after(&vm, &out, 3);
    let path = PathBuf::from(vm.dir.path()).join("paused.core");
    vm.ok(
        "PUT",
        "/vm/dump",
        &serde_json::json!({ "path": path }).to_string(),
    );
    assert_eq!(vm.state(), "Paused", "a paused VM stays paused");

    let shown = readelf(&path);
    assert!(shown.contains("CORE (Core file)"), "{shown}");
    assert_eq!(
        shown.matches("  LOAD ").count(),
        1,
        "32 MiB is one region: {shown}"
    );
    assert_eq!(
        shown.matches("NT_PRSTATUS").count(),
        2,
        "one per vCPU: {shown}"
    );

    let core = Core::read(&path);
    assert_eq!(core.loads[0].0, 0);
    assert_eq!(core.loads[0].2, 32 << 20);
    // The count in guest RAM is the one the guest printed last.
    let counter = symbol(COUNTER.path, "counter");
    assert_eq!(u64_at(core.memory(counter, 8), 0), u64::from(count));
    // The guest's code, as loaded from its ELF (first PT_LOAD at file
    // offset 0x1000, at guest-physical 0x100000).
    let image = std::fs::read(COUNTER.path).unwrap();
    let start = symbol(COUNTER.path, "_start");
    let code = &image[0x1000 + (start - 0x10_0000) as usize..][..64];
    assert_eq!(core.memory(start, 64), code);
    // The boot vCPU stopped inside the guest's code.
    let rip = core.prstatus[0][RIP];
    assert!(
        (0x10_0000..0x10_1000).contains(&rip),
        "rip {rip:#x} is outside the counter's code"
    );
    if let Some(gdb) = gdb_rip(&path) {
        assert_eq!(gdb, rip, "gdb reads the same rip");
    }
    // The CPU-state notes `crash` reads: one per vCPU; the boot vCPU's CR3
    // points at the long-mode page tables sie built, in the dumped RAM.
    assert_eq!(shown.matches("QEMU").count(), 2, "{shown}");
    let cr3 = core.cr3[0] & !0xfff;
    assert!(cr3 != 0 && cr3 < 32 << 20, "cr3 {cr3:#x}");
    let pml4e = u64_at(core.memory(cr3, 8), 0);
    assert_eq!(pml4e & 1, 1, "the first PML4 entry is present: {pml4e:#x}");
    // Holes for what the guest never touched.
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
    assert!(
        allocated < 4 << 20,
        "{allocated} bytes allocated for 32 MiB"
    );

    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    wait_for("counting on", || last_count(&out) > count);
}

#[test]
fn a_running_guest_is_paused_for_a_dump_and_runs_on_after_it() {
    let mut vm = ApiVm::start("core-running", &[]);
    let out = capture(&mut vm);
    vm.boot(COUNTER.path, "limit=100000 delay=200000");
    wait_for("counts", || last_count(&out) >= 2);
    let path = PathBuf::from(vm.dir.path()).join("running.core");
    // Through `sie ctl dump`, as a person would.
    let ctl = Command::new(env!("CARGO_BIN_EXE_sie"))
        .args(["ctl", "--sock", vm.sock.to_str().unwrap(), "dump"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ctl.status.success(),
        "{}",
        String::from_utf8_lossy(&ctl.stderr)
    );
    assert_eq!(vm.state(), "Running", "resumed after the dump");
    let core = Core::read(&path);
    let counter = symbol(COUNTER.path, "counter");
    let dumped = u64_at(core.memory(counter, 8), 0);
    assert!(dumped >= 2, "the count at the dump: {dumped}");
    wait_for("counting on", || u64::from(last_count(&out)) > dumped);
    // Before boot there is nothing to dump.
    let fresh = ApiVm::start("core-unstarted", &[]);
    fresh
        .call("PUT", "/vm/dump", Some(r#"{"path": "/tmp/never.core"}"#))
        .expect_fault("before starting");
}

#[test]
fn a_guest_that_panics_leaves_a_core_in_the_dump_on_panic_directory() {
    let dir = common::Scratch::new("core-panic");
    let run = common::sie(&[
        "run",
        "--kernel",
        PANIC.path,
        "--memory",
        "32",
        "--dump-on-panic",
        &dir.path(),
    ]);
    run.expect_code(4);
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("its core is"))
        .unwrap_or_else(|| panic!("no line names the core: {}", run.stderr));
    let path = PathBuf::from(line.rsplit(' ').next().unwrap());
    assert_eq!(path.parent(), Some(Path::new(&dir.path())));
    let shown = readelf(&path);
    assert_eq!(shown.matches("NT_PRSTATUS").count(), 1, "{shown}");
    let core = Core::read(&path);
    let marker = symbol(PANIC.path, "marker");
    assert_eq!(u64_at(core.memory(marker, 8), 0), 0x5a5a_c0de_0000_0001);
    // The vCPU stopped right after its write to the pvpanic port.
    let rip = core.prstatus[0][RIP];
    assert!((0x10_0000..marker).contains(&rip), "rip {rip:#x}");
    if let Some(gdb) = gdb_rip(&path) {
        assert_eq!(gdb, rip);
    }

    // The config file's `dump_on_panic` does the same.
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": PANIC.path},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
        "dump_on_panic": format!("{}/from-config", dir.path()),
    });
    std::fs::create_dir_all(format!("{}/from-config", dir.path())).unwrap();
    let file = dir.file("vm.json", config.to_string().as_bytes());
    common::sie(&["run", "--config-file", &file]).expect_code(4);
    let cores = std::fs::read_dir(format!("{}/from-config", dir.path()))
        .unwrap()
        .count();
    assert_eq!(cores, 1);
}

#[test]
fn a_dump_on_panic_directory_that_does_not_exist_is_refused_at_start() {
    common::sie(&[
        "run",
        "--kernel",
        PANIC.path,
        "--dump-on-panic",
        "/nonexistent/cores",
    ])
    .expect_one_line_error("dump_on_panic: /nonexistent/cores is not a directory");
}
