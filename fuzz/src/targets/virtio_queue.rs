//! The split virtqueue itself (virtio-queue on a real `GuestMemoryMmap`),
//! used the way sie's devices use it: a queue of any size at any ring
//! addresses the transport accepts, descriptor tables and available rings
//! straight from the input, chains popped, walked, their buffers read or
//! written, and returned; the guest rewrites ring memory between rounds.

use std::io::{Read, Write};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory as _, Permissions};

use sie_virtio::GuestMemory;
use sie_virtio::testing::{MEM_SIZE, Ring, memory};

use crate::input::Input;
use crate::layout::{DATA, RING_BASE};

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mem = memory();
    let Ok(mut queue) = Queue::new(256) else {
        return;
    };
    let raw = input.u16();
    let size = if raw & 0x8000 != 0 {
        raw & 0x1ff
    } else {
        1 << (raw % 9)
    };
    let _ = queue.try_set_size(size);
    let size = queue.size();
    let layout = input.u8();
    let ring = if layout & 0x80 == 0 {
        Ring::new(RING_BASE, size)
    } else {
        // Anywhere, as long as the transport would accept it.
        let mut at = || u64::from(input.below(MEM_SIZE as u32 + 0x1000));
        Ring {
            size,
            desc: at(),
            avail: at(),
            used: at(),
        }
    };
    let _ = queue.try_set_desc_table_address(GuestAddress(ring.desc));
    let _ = queue.try_set_avail_ring_address(GuestAddress(ring.avail));
    let _ = queue.try_set_used_ring_address(GuestAddress(ring.used));
    queue.set_event_idx(layout & 1 != 0);
    if layout & 2 != 0 {
        queue.set_next_avail(input.u16());
        queue.set_next_used(input.u16());
    }
    queue.set_ready(true);
    // The transport refuses to activate a queue that is not.
    if !queue.is_valid(&mem) {
        return;
    }
    for index in 0..input.below(u32::from(size) + 1) as u16 {
        let addr = match input.u8() % 8 {
            0 => input.u64(),
            1 => u64::from(input.below(MEM_SIZE as u32)),
            _ => DATA + 16 * u64::from(input.u16()),
        };
        let len = if input.bool() {
            u32::from(input.u16())
        } else {
            input.u32()
        };
        let flags = match input.u8() {
            0xff => input.u16(),
            f => u16::from(f) & 0x7,
        };
        let next = match input.u8() {
            0xff => input.u16(),
            n => u16::from(n) % size.max(1),
        };
        ring.set_desc(&mem, index, addr, len, u32::from(flags), next);
    }
    ring.set_avail_flags(&mem, input.u16() & 1);
    let published = input.below(u32::from(size) + 2) as u16;
    for slot in 0..published {
        let head = match input.u8() {
            0xff => input.u16(),
            h => u16::from(h) % size.max(1),
        };
        ring.set_avail_slot(&mem, queue.next_avail().wrapping_add(slot), head);
    }
    ring.set_avail_idx(&mem, queue.next_avail().wrapping_add(published));
    ring.set_used_event(&mem, input.u16());

    for _ in 0..4 {
        if drain(&mut queue, &mem, &mut input).is_err() {
            // Where sie marks the device NEEDS_RESET and stops.
            return;
        }
        // The guest rewrites a few bytes of ring or buffer memory.
        for _ in 0..input.below(4) {
            let at = u64::from(input.below(MEM_SIZE as u32));
            let bytes = input.chunk(32);
            let _ = mem.write_slice(bytes, GuestAddress(at));
        }
        let more = input.below(4) as u16;
        let idx = ring.avail_idx(&mem).wrapping_add(more);
        ring.set_avail_idx(&mem, idx);
    }
}

/// One drain as `sie_virtio`'s `drain_queue` does it: notifications off,
/// pop every chain, walk and serve it, return it, notifications back on.
fn drain(queue: &mut Queue, mem: &GuestMemory, input: &mut Input) -> Result<(), ()> {
    let size = queue.size();
    let mut rounds = 0;
    loop {
        queue.disable_notification(mem).map_err(drop)?;
        for _ in 0..=u32::from(size) {
            let chain = match queue.iter(mem) {
                Ok(mut available) => available.next(),
                Err(_) => return Err(()),
            };
            let Some(chain) = chain else {
                break;
            };
            let head = chain.head_index();
            if head >= size {
                return Err(());
            }
            let mut used = 0u32;
            if input.bool() {
                // Through virtio-queue's own Reader/Writer.
                let mut buf = [0u8; 256];
                if let Ok(mut reader) = chain.clone().reader(mem) {
                    let _ = reader.read(&mut buf);
                }
                if let Ok(mut writer) = chain.writer(mem) {
                    used = writer.write(&buf).unwrap_or(0) as u32;
                }
            } else {
                used = walk(chain, mem).unwrap_or(0);
            }
            queue.add_used(mem, head, used).map_err(drop)?;
        }
        rounds += 1;
        if !queue.enable_notification(mem).map_err(drop)? || rounds > 2 {
            break;
        }
    }
    queue.needs_notification(mem).map_err(drop)?;
    Ok(())
}

/// Walks a chain as `sie_virtio`'s `segments` does: every buffer non-empty,
/// not wrapping, inside memory in the direction used; then touches it.
fn walk(chain: virtio_queue::DescriptorChain<&GuestMemory>, mem: &GuestMemory) -> Option<u32> {
    let mut written = 0u32;
    let mut ended = false;
    for desc in chain {
        let len = desc.len();
        if len == 0 {
            return None;
        }
        desc.addr().checked_add(u64::from(len))?;
        let access = if desc.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(desc.addr(), len as usize, access) {
            return None;
        }
        let mut buf = vec![0u8; (len as usize).min(512)];
        if desc.is_write_only() {
            mem.write_slice(&buf, desc.addr()).ok()?;
            written = written.saturating_add(buf.len() as u32);
        } else {
            mem.read_slice(&mut buf, desc.addr()).ok()?;
        }
        ended = !desc.has_next();
    }
    ended.then_some(written)
}
