//! One module per target; each exposes `pub fn run(data: &[u8])`.
//!
//! net and vsock (in progress elsewhere): add `virtio_net.rs` and
//! `virtio_vsock.rs` here on the model of `virtio_rng.rs` (a `scenario`
//! over the device's queues: RX chains of writable buffers, TX chains with
//! a header read from the input), then list them in `crate::TARGETS`, add
//! `fuzz_targets/<name>.rs` and a `[[bin]]`, and seed `corpus/<name>/`.
//! Their host side (tap, sockets) wants a fake backend (a socketpair) so a
//! run never touches the host network.

pub mod api_route;
pub mod config_json;
pub mod scenario;
pub mod virtio_blk;
pub mod virtio_mmio;
pub mod virtio_queue;
pub mod virtio_rng;
