//! One module per target; each exposes `pub fn run(data: &[u8])`.
//!
//! Single-queue devices (blk, rng) run the [`scenario`]; devices with
//! receive and transmit queues (net, vsock, console) drive [`queues`] themselves,
//! with their host side faked in-process (a socket pair for the tap, Unix
//! sockets in a private temporary directory for vsock): a run never
//! touches the host network. A new target goes in `crate::TARGETS`, gets a
//! `fuzz_targets/<name>.rs`, a `[[bin]]` and seeds in `corpus/<name>/`.

pub mod acpi;
pub mod api_body;
pub mod api_route;
pub mod cli_specs;
pub mod cmdline;
pub mod config_json;
pub mod decompress;
pub mod http_request;
pub mod legacy;
pub mod loader;
pub mod mmds;
pub mod pci_config;
pub mod queues;
pub mod scenario;
pub mod snapshot_file;
pub mod virtio_balloon;
pub mod virtio_blk;
pub mod virtio_console;
pub mod virtio_mmio;
pub mod virtio_net;
pub mod virtio_pci_common;
pub mod virtio_queue;
pub mod virtio_rng;
pub mod virtio_vsock;
pub mod vsock_muxer;
pub mod vsock_packet;
