//! Where the fuzz targets put rings and buffers in the 1 MiB of guest
//! memory that `sie_virtio::testing::memory` gives them.

/// Where the rings go by default.
pub const RING_BASE: u64 = 0x1000;
/// Where data buffers go by default: the upper half of memory, far above
/// the rings the targets place from [`RING_BASE`] (a few queues of at most
/// 512 entries, some 14 KiB each).
pub const DATA: u64 = 0x8_0000;
