//! Fuzz targets for sie: each is a `run(&[u8])` that must never panic on
//! any input. libFuzzer drives them through `fuzz_targets/*.rs`; the stable
//! driver (`src/bin/fuzz-stable.rs`) drives them without nightly or
//! libFuzzer. See README.md.

pub mod input;
pub mod layout;
pub mod targets;

/// A fuzz target: any bytes in, never a panic.
pub type Target = fn(&[u8]);

/// Every target, by the name used for its corpus, artifacts and binary.
///
/// A new target also needs a `fuzz_targets/<name>.rs` and a `[[bin]]` in
/// Cargo.toml; `targets::virtio_rng` is the model to copy.
pub const TARGETS: &[(&str, Target)] = &[
    ("virtio_queue", targets::virtio_queue::run),
    ("virtio_mmio", targets::virtio_mmio::run),
    ("virtio_blk", targets::virtio_blk::run),
    ("virtio_rng", targets::virtio_rng::run),
    ("virtio_console", targets::virtio_console::run),
    ("virtio_balloon", targets::virtio_balloon::run),
    ("virtio_net", targets::virtio_net::run),
    ("virtio_vsock", targets::virtio_vsock::run),
    ("virtio_pci_common", targets::virtio_pci_common::run),
    ("pci_config", targets::pci_config::run),
    ("api_route", targets::api_route::run),
    ("config_json", targets::config_json::run),
    ("snapshot_file", targets::snapshot_file::run),
    ("http_request", targets::http_request::run),
    ("mmds", targets::mmds::run),
    ("api_body", targets::api_body::run),
    ("cli_specs", targets::cli_specs::run),
    ("loader_elf", targets::loader::elf),
    ("loader_bzimage", targets::loader::bzimage),
    ("decompress_gzip", targets::decompress::gzip),
    ("decompress_bzip2", targets::decompress::bzip2),
    ("decompress_lzma", targets::decompress::lzma),
    ("decompress_xz", targets::decompress::xz),
    ("decompress_lzo", targets::decompress::lzo),
    ("decompress_lz4", targets::decompress::lz4),
    ("decompress_zstd", targets::decompress::zstd),
    ("cmdline", targets::cmdline::run),
    ("vsock_packet", targets::vsock_packet::run),
    ("vsock_muxer", targets::vsock_muxer::run),
    ("legacy_i8042", targets::legacy::i8042),
    ("legacy_rtc", targets::legacy::rtc),
    ("legacy_serial", targets::legacy::serial),
    ("acpi_tables", targets::acpi::run),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}
