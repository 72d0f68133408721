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
    ("virtio_net", targets::virtio_net::run),
    ("virtio_vsock", targets::virtio_vsock::run),
    ("api_route", targets::api_route::run),
    ("config_json", targets::config_json::run),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}
