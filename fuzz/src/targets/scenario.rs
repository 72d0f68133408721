//! A guest driver run by the fuzzer for a single-queue device: bring the
//! transport up, then batches of chains built from the input (by the
//! device's target), kicks, meddling with the rings, resets. After every
//! kick (and the device finishing its work in flight, as before a
//! snapshot) the device must have used every chain it was offered, unless
//! it declared NEEDS_RESET. A device with work in flight (virtio-blk's
//! engine) may use chains in any order.

use sie_virtio::testing::{Driver, MEM_SIZE, Ring, VIRTIO_RING_F_EVENT_IDX};
use sie_virtio::{GuestMemory, VirtioDevice, VirtioMmioTransport};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;
use crate::layout::{DATA, RING_BASE};

/// Hands out data buffers from `DATA` upwards, wrapping at the end of
/// memory; lengths past the end of memory yield buffers the device must
/// refuse.
pub struct Alloc {
    next: u64,
    /// Whether a buffer of this batch reused memory (so buffers may overlap
    /// and per-chain checks are off).
    pub wrapped: bool,
}

impl Default for Alloc {
    fn default() -> Self {
        Self::new()
    }
}

impl Alloc {
    /// An allocator starting at `DATA`.
    pub fn new() -> Self {
        Self {
            next: DATA,
            wrapped: false,
        }
    }

    /// A buffer of `len` bytes.
    pub fn take(&mut self, len: u32) -> u64 {
        let len = u64::from(len);
        if self.next + len > MEM_SIZE {
            self.next = DATA;
            self.wrapped = true;
        }
        let at = self.next;
        self.next = (at + len.min(MEM_SIZE) + 15) & !15;
        at
    }
}

/// A chain: (guest address, length, device-writable) per buffer.
pub type Chain = Vec<(u64, u32, bool)>;

/// Runs the scenario on `t` (whose queue 0 is the one exercised).
///
/// `make` builds one chain from the input and fills its readable buffers;
/// `check` sees each chain the device used, with the used length, when the
/// chain's descriptors and buffers were not disturbed since they were
/// written.
pub fn run<D: VirtioDevice>(
    t: &VirtioMmioTransport<D>,
    mem: &GuestMemory,
    offered: u64,
    input: &mut Input,
    mut make: impl FnMut(&mut Input, &mut Alloc, &GuestMemory) -> Chain,
    mut check: impl FnMut(&GuestMemory, &Chain, u32),
) {
    let driver = Driver::new(t);
    let mut features = offered;
    if input.bool() {
        features &= !(1 << VIRTIO_RING_F_EVENT_IDX);
    }
    let size = 1u16 << input.below(9);
    let ring = Ring::new(RING_BASE, size);
    driver.try_start(features, &[ring]);
    let mut next_desc = 0u16;
    let mut disturbed = false;
    let mut last_used = 0u16;
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        let live = t.status() & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET)
            == VIRTIO_CONFIG_S_DRIVER_OK;
        match input.u8() % 16 {
            0 => {
                // The guest scribbles on its descriptor table or avail ring.
                let (start, end) = if input.bool() {
                    (ring.desc, ring.avail)
                } else {
                    (ring.avail, ring.used)
                };
                let at = start + u64::from(input.below((end - start) as u32));
                let bytes = input.chunk(16);
                let _ = mem.write_slice(bytes, GuestAddress(at));
                disturbed = true;
            }
            1 => {
                // Reset and start over on clean rings.
                driver.write(VIRTIO_MMIO_STATUS, 0);
                let zero =
                    vec![0u8; (ring.used + 4 + 8 * u64::from(size) + 8 - ring.desc) as usize];
                let _ = mem.write_slice(&zero, GuestAddress(ring.desc));
                driver.try_start(features, &[ring]);
                (next_desc, last_used, disturbed) = (0, 0, false);
            }
            2 => {
                driver.take_interrupt();
            }
            3 if features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 => {
                ring.set_used_event(mem, input.u16());
            }
            _ => {
                let mut alloc = Alloc::new();
                let mut offered = Vec::new();
                let mut descs = 0usize;
                for _ in 0..=input.below(4) {
                    let chain = make(input, &mut alloc, mem);
                    ring.set_chain(mem, next_desc, &chain);
                    offered.push((next_desc, chain.clone()));
                    descs += chain.len().max(1);
                    next_desc =
                        ((usize::from(next_desc) + chain.len().max(1)) % usize::from(size)) as u16;
                }
                let heads: Vec<u16> = offered.iter().map(|(h, _)| *h).collect();
                ring.publish(mem, &heads);
                if input.bool() {
                    driver.kick(0);
                }
                t.queue_event(0);
                t.quiesce();
                // A scribbled descriptor may point the device's writes at the
                // used ring itself (legal, if unwise): then memory shows
                // nothing reliable and only the absence of a panic counts.
                let faulted = t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0;
                // A driver that keeps its rings consistent never sees a fault.
                assert!(
                    !(live && !disturbed && offered.len() <= usize::from(size) && faulted),
                    "NEEDS_RESET on well-formed rings"
                );
                if !live || disturbed || faulted {
                    continue;
                }
                let used = ring.used_idx(mem);
                assert_eq!(
                    used,
                    ring.avail_idx(mem),
                    "a live device left offered chains unused"
                );
                let clean = !alloc.wrapped && descs <= usize::from(size);
                let mut slot = last_used;
                let mut expected = offered;
                while slot != used {
                    let (id, len) = ring.used(mem, slot);
                    assert!(
                        id < u32::from(size),
                        "used id {id} outside a queue of {size}"
                    );
                    if clean {
                        let at = expected
                            .iter()
                            .position(|(head, _)| u32::from(*head) == id)
                            .expect("a chain used twice, or one never offered");
                        let (_, chain) = expected.swap_remove(at);
                        check(mem, &chain, len);
                    }
                    slot = slot.wrapping_add(1);
                }
                last_used = used;
            }
        }
    }
}

/// A buffer length: mostly small and sector-shaped, sometimes anything.
pub fn length(input: &mut Input) -> u32 {
    match input.u8() % 8 {
        0 => 1,
        1 => 16,
        2 => 512,
        3 => 4096,
        4 => 512 * (input.below(64) + 1),
        5 => input.below(70_000),
        6 => input.u32(),
        _ => input.below(600) + 1,
    }
}
