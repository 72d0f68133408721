//! The guest driver of [`super::scenario`] for devices with several queues
//! (net, vsock), where some queues are drained at once (transmit: every
//! chain offered is used on the kick) and others hold buffers posted ahead
//! (receive: chains are used as host data arrives, in the order offered).
//!
//! The target owns the action loop; this keeps the rings, what is
//! outstanding on each, and checks every used element against it: a used
//! id is the next outstanding head, its length fits the chain, a drained
//! queue has nothing outstanding after its kick, and a driver that never
//! scribbled on its rings nor overfilled them never sees NEEDS_RESET.

use std::collections::VecDeque;

use sie_virtio::testing::{Driver, MEM_SIZE, Ring, VIRTIO_RING_F_EVENT_IDX};
use sie_virtio::{GuestMemory, VirtioDevice, VirtioMmioTransport};
use virtio_bindings::virtio_config::{VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_NEEDS_RESET};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_STATUS;
use vm_memory::{Bytes, GuestAddress};

use super::scenario::{Alloc, Chain};
use crate::input::Input;
use crate::layout::RING_BASE;

/// Room for one ring of up to 256 entries (about 6.7 KiB).
const RING_STRIDE: u64 = 0x2000;

/// A chain the device has not used yet.
pub struct Outstanding {
    pub head: u16,
    pub chain: Chain,
    /// Its buffers overlap no other chain's (content checks are valid).
    pub clean: bool,
}

/// One queue as the driver sees it.
pub struct QueueState {
    pub ring: Ring,
    next_desc: u16,
    last_used: u16,
    descs: usize,
    pub outstanding: VecDeque<Outstanding>,
}

/// The rings of every queue of a transport, and the driver's bookkeeping.
pub struct Queues<'a, D: VirtioDevice> {
    pub t: &'a VirtioMmioTransport<D>,
    pub mem: &'a GuestMemory,
    pub driver: Driver<'a, D>,
    pub features: u64,
    pub queues: Vec<QueueState>,
    /// The guest wrote over ring memory (or overfilled a ring): nothing the
    /// device does is checked until the next reset.
    pub disturbed: bool,
    /// Data buffers, shared by all queues; reset once nothing is
    /// outstanding.
    pub alloc: Alloc,
}

impl<'a, D: VirtioDevice> Queues<'a, D> {
    /// Brings the transport up with `count` queues of input-chosen sizes
    /// (powers of two up to 256, and up to what the device offers, as a
    /// driver reads QueueNumMax) and the device's features, EVENT_IDX
    /// perhaps declined.
    pub fn start(
        t: &'a VirtioMmioTransport<D>,
        mem: &'a GuestMemory,
        offered: u64,
        count: usize,
        input: &mut Input,
    ) -> Self {
        let mut features = offered;
        if input.bool() {
            features &= !(1 << VIRTIO_RING_F_EVENT_IDX);
        }
        let max_sizes = t.with_device(|d| d.queue_max_sizes().to_vec());
        let queues = (0..count)
            .map(|i| QueueState {
                ring: Ring::new(
                    RING_BASE + RING_STRIDE * i as u64,
                    (1u16 << input.below(9)).min(max_sizes.get(i).copied().unwrap_or(256)),
                ),
                next_desc: 0,
                last_used: 0,
                descs: 0,
                outstanding: VecDeque::new(),
            })
            .collect();
        let q = Self {
            t,
            mem,
            driver: Driver::new(t),
            features,
            queues,
            disturbed: false,
            alloc: Alloc::new(),
        };
        q.bring_up();
        q
    }

    fn rings(&self) -> Vec<Ring> {
        self.queues.iter().map(|q| q.ring).collect()
    }

    fn bring_up(&self) {
        self.driver.try_start(self.features, &self.rings());
    }

    /// DRIVER_OK and not NEEDS_RESET.
    pub fn live(&self) -> bool {
        self.t.status() & (VIRTIO_CONFIG_S_DRIVER_OK | VIRTIO_CONFIG_S_NEEDS_RESET)
            == VIRTIO_CONFIG_S_DRIVER_OK
    }

    /// Whether the device declared NEEDS_RESET.
    pub fn faulted(&self) -> bool {
        self.t.status() & VIRTIO_CONFIG_S_NEEDS_RESET != 0
    }

    /// Whether the device's work since the last look can be checked.
    pub fn checkable(&self) -> bool {
        self.live() && !self.disturbed
    }

    /// Writes input bytes over a descriptor table or avail ring.
    pub fn scribble(&mut self, input: &mut Input) {
        let q = input.below(self.queues.len() as u32) as usize;
        let ring = self.queues[q].ring;
        let (start, end) = if input.bool() {
            (ring.desc, ring.avail)
        } else {
            (ring.avail, ring.used)
        };
        let at = start + u64::from(input.below((end - start) as u32));
        let _ = self.mem.write_slice(input.chunk(16), GuestAddress(at));
        self.disturbed = true;
    }

    /// Sets a queue's `used_event` (with EVENT_IDX).
    pub fn set_used_event(&self, q: usize, idx: u16) {
        if self.features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0 {
            self.queues[q].ring.set_used_event(self.mem, idx);
        }
    }

    /// Resets the device, zeroes every ring and brings it up again.
    pub fn reset(&mut self) {
        self.driver.write(VIRTIO_MMIO_STATUS, 0);
        for q in &mut self.queues {
            let r = q.ring;
            let end = r.used + 4 + 8 * u64::from(r.size) + 8;
            let _ = self
                .mem
                .write_slice(&vec![0u8; (end - r.desc) as usize], GuestAddress(r.desc));
            (q.next_desc, q.last_used, q.descs) = (0, 0, 0);
            q.outstanding.clear();
        }
        self.disturbed = false;
        self.alloc = Alloc::new();
        self.bring_up();
    }

    /// Starts a batch of chains: a fresh allocator when nothing is
    /// outstanding anywhere.
    pub fn begin_batch(&mut self) {
        if self.queues.iter().all(|q| q.outstanding.is_empty()) {
            self.alloc = Alloc::new();
        }
    }

    /// Offers `chains` on queue `q` (one avail index update). Chains that
    /// would not fit beside the outstanding ones are still offered (what a
    /// broken driver does) but turn every check off.
    pub fn offer(&mut self, q: usize, chains: Vec<Chain>) {
        let clean = !self.alloc.wrapped;
        if !clean {
            // Buffers now overlap earlier ones, outstanding ones included.
            for o in self
                .queues
                .iter_mut()
                .flat_map(|q| q.outstanding.iter_mut())
            {
                o.clean = false;
            }
        }
        let mem = self.mem;
        let state = &mut self.queues[q];
        let size = usize::from(state.ring.size);
        let mut heads = Vec::new();
        for chain in chains {
            let n = chain.len().max(1);
            if state.descs + n > size || state.outstanding.len() >= size {
                self.disturbed = true;
            }
            state.ring.set_chain(mem, state.next_desc, &chain);
            heads.push(state.next_desc);
            state.outstanding.push_back(Outstanding {
                head: state.next_desc,
                chain,
                clean,
            });
            state.descs += n;
            state.next_desc = ((usize::from(state.next_desc) + n) % size) as u16;
        }
        state.ring.publish(mem, &heads);
    }

    /// Checks what the device did after an event: no NEEDS_RESET for a
    /// careful driver (`was_live`: live before the event), then every new
    /// used element of every queue, in order, handed to `check` (queue,
    /// the chain, used length). Returns how many chains each queue used,
    /// or `None` when the device's work cannot be checked.
    pub fn collect(
        &mut self,
        was_live: bool,
        mut check: impl FnMut(usize, &Outstanding, u32),
    ) -> Option<Vec<usize>> {
        let faulted = self.faulted();
        assert!(
            !(was_live && !self.disturbed && faulted),
            "NEEDS_RESET on well-formed rings"
        );
        if !was_live || !self.checkable() {
            return None;
        }
        let mem = self.mem;
        let mut counts = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter_mut().enumerate() {
            let used = q.ring.used_idx(mem);
            let new = used.wrapping_sub(q.last_used);
            assert!(
                usize::from(new) <= q.outstanding.len(),
                "queue {index}: {new} chains used, {} outstanding",
                q.outstanding.len()
            );
            for _ in 0..new {
                let (id, len) = q.ring.used(mem, q.last_used);
                let o = q.outstanding.pop_front().expect("counted above");
                assert_eq!(
                    id,
                    u32::from(o.head),
                    "queue {index}: chain used out of order"
                );
                let room: u64 = o.chain.iter().map(|&(_, l, _)| u64::from(l)).sum();
                assert!(
                    u64::from(len) <= room,
                    "queue {index}: used length {len} for a {room}-byte chain"
                );
                check(index, &o, len);
                q.descs -= o.chain.len().max(1);
                q.last_used = q.last_used.wrapping_add(1);
            }
            counts.push(usize::from(new));
        }
        Some(counts)
    }

    /// Asserts that queue `q`, drained on its kick, has nothing left.
    pub fn assert_drained(&self, q: usize) {
        assert!(
            self.queues[q].outstanding.is_empty(),
            "a live device left {} chains of queue {q} unused",
            self.queues[q].outstanding.len()
        );
    }
}

/// The first `n` bytes a chain's buffers hold, in order (fewer if the
/// chain is shorter or leaves memory).
pub fn read_chain(mem: &GuestMemory, chain: &Chain, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    for &(addr, len, _) in chain {
        let want = (n - out.len()).min(len as usize);
        if out.len() == n || addr + want as u64 > MEM_SIZE {
            break;
        }
        let mut buf = vec![0u8; want];
        if mem.read_slice(&mut buf, GuestAddress(addr)).is_err() {
            break;
        }
        out.extend_from_slice(&buf);
    }
    out
}

/// A chain of up to four buffers from the input, `writable` mostly as
/// asked (one in 256 the other way).
pub fn buffers(input: &mut Input, alloc: &mut Alloc, writable: bool, max: u32) -> Chain {
    let mut chain = Chain::new();
    for _ in 0..input.below(max) + 1 {
        let len = super::scenario::length(input);
        let w = writable ^ (input.u8() == 0xff);
        chain.push((alloc.take(len), len, w));
    }
    chain
}
