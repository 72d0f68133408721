//! The seed corpora reach the paths they were made for: a seed that only
//! exercised the error paths would leave the fuzzer starting from nothing.

use std::io::Cursor;
use std::path::Path;

use sie_arch::loader::load_kernel;
use sie_virtio::GuestMemory;
use vm_memory::GuestAddress;

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_codec_seed_decompresses() {
    for codec in ["gzip", "bzip2", "lzma", "xz", "lzo", "lz4", "zstd"] {
        let compression = sie_vmlinux::Compression::from_name(codec).expect("a codec");
        let data = seed(&format!("decompress_{codec}"), "seed-full");
        let out = sie_vmlinux::decompress_payload(compression, &data[3..], 4 << 20)
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert!(out.starts_with(b"sie vmlinux "), "{codec}");
        let cut = seed(&format!("decompress_{codec}"), "seed-cut");
        assert!(
            matches!(
                sie_vmlinux::decompress_payload(compression, &cut[3..], 100),
                Err(sie_vmlinux::Error::TooLarge(100))
            ),
            "{codec}: the cut seed is cut"
        );
    }
}

#[test]
fn loader_seeds_load() {
    let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 8 << 20)]).expect("memory");
    for (target, name) in [
        ("loader_elf", "seed-plain"),
        ("loader_elf", "seed-pvh"),
        ("loader_bzimage", "seed-fixed"),
        ("loader_bzimage", "seed-relocatable"),
    ] {
        let image = seed(target, name);
        load_kernel(&mem, &mut Cursor::new(&image)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn every_seed_runs_clean() {
    for &(name, target) in sie_fuzz::TARGETS {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(name);
        for entry in std::fs::read_dir(&dir).expect("a corpus per target") {
            let path = entry.expect("entry").path();
            target(&std::fs::read(&path).expect("seed"));
        }
    }
}
