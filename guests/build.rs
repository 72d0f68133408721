//! Assembles the test guests with the system `cc` and links them with `ld`
//! (binutils): ELF guests for the Linux 64-bit and PVH entries, and a flat
//! bzImage-format guest made with `objcopy`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// ELF guests: (name, linker script).
const ELF_GUESTS: &[&str] = &[
    "hello",
    "bootinfo",
    "pvh",
    "smp",
    "unknown_io",
    "virtio_probe",
    "triple_fault",
    "spin",
    "ticker",
    "loop",
    "exits",
    "counter",
    "echo",
    "panic",
    "cpuid",
];

fn run(command: &mut Command) {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (are gcc and binutils installed?)"));
    assert!(status.success(), "{shown} failed with {status}");
}

fn assemble(src: &Path, asm: &Path, out: &Path, name: &str) -> PathBuf {
    let object = out.join(format!("{name}.o"));
    run(Command::new("cc")
        .args([
            "-c",
            "-m64",
            "-nostdlib",
            "-ffreestanding",
            "-Wa,--noexecstack",
        ])
        .arg("-I")
        .arg(asm)
        .arg(src)
        .arg("-o")
        .arg(&object));
    object
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let asm = manifest.join("src/asm");
    let link = manifest.join("link");
    println!("cargo:rerun-if-changed=src/asm");
    println!("cargo:rerun-if-changed=link");

    for name in ELF_GUESTS {
        let object = assemble(&asm.join(format!("{name}.S")), &asm, &out, name);
        run(Command::new("ld")
            .args([
                "-nostdlib",
                "-static",
                "-z",
                "max-page-size=4096",
                "-z",
                "noexecstack",
            ])
            .arg("-T")
            .arg(link.join("elf64.ld"))
            .arg(&object)
            .arg("-o")
            .arg(out.join(format!("{name}.elf"))));
    }

    let object = assemble(&asm.join("bzimage.S"), &asm, &out, "bzimage");
    let linked = out.join("bzimage.linked");
    run(Command::new("ld")
        .args(["-nostdlib", "-static", "-z", "noexecstack"])
        .arg("-T")
        .arg(link.join("flat.ld"))
        .arg(&object)
        .arg("-o")
        .arg(&linked));
    run(Command::new("objcopy")
        .args(["-O", "binary", "-j", ".image"])
        .arg(&linked)
        .arg(out.join("bzimage.bin")));
}
