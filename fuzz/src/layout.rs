//! Where the fuzz targets put rings and buffers in the 1 MiB of guest
//! memory that `sie_virtio::testing::memory` gives them.

/// Where the rings go by default.
pub const RING_BASE: u64 = 0x1000;
/// Where data buffers go by default: the upper half of memory, far above
/// the rings the targets place from [`RING_BASE`] (a few queues of at most
/// 512 entries, some 14 KiB each).
pub const DATA: u64 = 0x8_0000;

/// A ring where the input says: mostly at [`RING_BASE`], sometimes anywhere
/// (16-byte aligned), of a power-of-two size up to 512. What a bring-up in
/// the transport targets starts from.
pub fn fuzzed_ring(input: &mut crate::input::Input) -> sie_virtio::testing::Ring {
    let size = 1u16 << input.below(10);
    let base = if input.bool() {
        RING_BASE
    } else {
        u64::from(input.u32()) & !0xf
    };
    sie_virtio::testing::Ring::new(base, size)
}

/// The guest scribbles up to 64 input bytes anywhere in its memory.
pub fn scribble(mem: &sie_virtio::GuestMemory, input: &mut crate::input::Input) {
    use vm_memory::Bytes;
    let at = u64::from(input.below(sie_virtio::testing::MEM_SIZE as u32));
    let bytes = input.chunk(64);
    let _ = mem.write_slice(bytes, vm_memory::GuestAddress(at));
}
