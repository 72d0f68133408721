//! virtio-mem (device type 24, virtio 1.3 §5.15): a hotpluggable memory
//! region past RAM whose blocks the guest plugs and unplugs to follow the
//! size the host requests.
//!
//! The VMM backs the whole region with anonymous memory from the start,
//! part of the guest memory every device is given (so plugged memory is
//! reachable by I/O like RAM) though not of the guest's boot memory map;
//! the device keeps a bitmap of plugged blocks
//! and serves the driver's PLUG, UNPLUG, UNPLUG_ALL and STATE requests.
//! Unplugged blocks are handed to `discard` (`madvise(MADV_DONTNEED)` in
//! the VMM), so the host gets their memory back. The host changes the
//! requested size with [`Mem::set_requested_size`] and then raises a
//! configuration-change interrupt.
//!
//! A request is 24 device-readable bytes (`le16 type`, padding, `le64
//! addr`, `le16 nb_blocks`, padding) and a device-writable answer of at
//! least 10 bytes (`le16 type`, padding, `le16 state`). A range outside the
//! usable region, misaligned, or of zero blocks is answered ERROR; a plug
//! beyond the requested size NACK; nothing the guest sends panics or
//! marks the device NEEDS_RESET.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_MEM;
use vm_memory::Bytes;

use crate::chain::Segment;
use crate::counters::VirtioCounters;
use crate::device::{ActivateError, Activation, SingleQueue, VirtioDevice, read_config_bytes};
use crate::fault::DeviceFault;
use crate::memory::GuestMemory;

/// Queue size offered to the driver.
pub const MEM_QUEUE_SIZE: u16 = 128;
/// Request types.
const REQ_PLUG: u16 = 0;
const REQ_UNPLUG: u16 = 1;
const REQ_UNPLUG_ALL: u16 = 2;
const REQ_STATE: u16 = 3;
/// Response types.
pub const RESP_ACK: u16 = 0;
/// The request is valid but refused (a plug beyond the requested size).
pub const RESP_NACK: u16 = 1;
/// The request is invalid.
pub const RESP_ERROR: u16 = 3;
/// STATE answers.
pub const STATE_PLUGGED: u16 = 0;
/// Every block in the range is unplugged.
pub const STATE_UNPLUGGED: u16 = 1;
/// Some blocks are plugged, some not.
pub const STATE_MIXED: u16 = 2;
const REQUEST_LEN: usize = 24;
const RESPONSE_LEN: usize = 10;
const CONFIG_LEN: usize = 56;

/// Gives the host memory behind `(offset, len)` of the region back.
pub type Discard = Box<dyn Fn(u64, u64) -> std::io::Result<()> + Send>;

/// The hotplug device.
pub struct Mem {
    addr: u64,
    block_size: u64,
    plugged: Vec<bool>,
    requested_size: u64,
    discard: Discard,
    counters: Arc<VirtioCounters>,
    active: Option<SingleQueue>,
}

/// A device-side answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Answer {
    kind: u16,
    state: u16,
}

impl Answer {
    const fn of(kind: u16) -> Self {
        Self { kind, state: 0 }
    }
}

impl Mem {
    /// A device for the region at guest-physical `addr` of `region_size`
    /// bytes in blocks of `block_size` (a power of two dividing the size),
    /// nothing plugged or requested yet.
    pub fn new(addr: u64, region_size: u64, block_size: u64, discard: Discard) -> Self {
        let blocks = region_size.checked_div(block_size).unwrap_or(0);
        Self {
            addr,
            block_size,
            plugged: vec![false; usize::try_from(blocks).unwrap_or(0)],
            requested_size: 0,
            discard,
            counters: Arc::default(),
            active: None,
        }
    }

    fn region_size(&self) -> u64 {
        self.plugged.len() as u64 * self.block_size
    }

    /// Bytes plugged now.
    pub fn plugged_size(&self) -> u64 {
        self.plugged.iter().filter(|p| **p).count() as u64 * self.block_size
    }

    /// Bytes the host asks the guest to have plugged.
    pub fn requested_size(&self) -> u64 {
        self.requested_size
    }

    /// Sets the requested size (a multiple of the block size, at most the
    /// region); the caller then raises the configuration interrupt.
    pub fn set_requested_size(&mut self, bytes: u64) -> Result<(), String> {
        if bytes > self.region_size() || !bytes.is_multiple_of(self.block_size.max(1)) {
            return Err(format!(
                "requested size {bytes:#x} is not a multiple of the block size {:#x} within the region of {:#x} bytes",
                self.block_size,
                self.region_size()
            ));
        }
        self.requested_size = bytes;
        Ok(())
    }

    /// The blocks `addr..addr + n * block_size`, if that lies in the
    /// region on block boundaries and is not empty.
    fn blocks(&self, addr: u64, count: u16) -> Option<std::ops::Range<usize>> {
        let offset = addr.checked_sub(self.addr)?;
        if count == 0 || !offset.is_multiple_of(self.block_size) {
            return None;
        }
        let first = usize::try_from(offset / self.block_size).ok()?;
        let end = first.checked_add(usize::from(count))?;
        (end <= self.plugged.len()).then_some(first..end)
    }

    fn discard_blocks(&self, blocks: std::ops::Range<usize>) {
        let (offset, len) = (
            blocks.start as u64 * self.block_size,
            blocks.len() as u64 * self.block_size,
        );
        if let Err(error) = (self.discard)(offset, len) {
            tracing::warn!(%error, "virtio-mem: giving unplugged memory back failed");
            self.counters.error();
        }
    }

    fn request(&mut self, kind: u16, addr: u64, count: u16) -> Answer {
        if kind == REQ_UNPLUG_ALL {
            self.discard_blocks(0..self.plugged.len());
            self.plugged.iter_mut().for_each(|p| *p = false);
            return Answer::of(RESP_ACK);
        }
        let Some(blocks) = self.blocks(addr, count) else {
            return Answer::of(RESP_ERROR);
        };
        let range = &mut self.plugged[blocks.clone()];
        match kind {
            REQ_PLUG => {
                if range.iter().any(|p| *p) {
                    return Answer::of(RESP_ERROR);
                }
                let size = blocks.len() as u64 * self.block_size;
                let plugged = self.plugged_size();
                if plugged.saturating_add(size) > self.requested_size {
                    return Answer::of(RESP_NACK);
                }
                self.plugged[blocks].iter_mut().for_each(|p| *p = true);
                Answer::of(RESP_ACK)
            }
            REQ_UNPLUG => {
                if range.iter().any(|p| !*p) {
                    return Answer::of(RESP_ERROR);
                }
                range.iter_mut().for_each(|p| *p = false);
                self.discard_blocks(blocks);
                Answer::of(RESP_ACK)
            }
            REQ_STATE => {
                let state = if range.iter().all(|p| *p) {
                    STATE_PLUGGED
                } else if range.iter().all(|p| !*p) {
                    STATE_UNPLUGGED
                } else {
                    STATE_MIXED
                };
                Answer {
                    kind: RESP_ACK,
                    state,
                }
            }
            _ => Answer::of(RESP_ERROR),
        }
    }

    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        let mut put =
            |at: usize, value: u64| config[at..at + 8].copy_from_slice(&value.to_le_bytes());
        put(0, self.block_size);
        // node_id (8) and padding stay 0: no VIRTIO_MEM_F_ACPI_PXM.
        put(16, self.addr);
        put(24, self.region_size());
        // The whole region is usable: it is all backed from the start.
        put(32, self.region_size());
        put(40, self.plugged_size());
        put(48, self.requested_size);
        config
    }
}

/// Serves one chain: the answer's length, 0 when there is no room for one.
fn serve(mem_dev: &mut Mem, mem: &GuestMemory, buffers: &[Segment]) -> u32 {
    let Some(answer_at) = buffers
        .iter()
        .find(|s| s.writable && s.len as usize >= RESPONSE_LEN)
    else {
        mem_dev.counters.error();
        return 0;
    };
    let mut raw = [0u8; REQUEST_LEN];
    let request = buffers
        .iter()
        .find(|s| !s.writable && s.len as usize >= REQUEST_LEN)
        .and_then(|s| mem.read_slice(&mut raw, s.addr).ok());
    let answer = match request {
        Some(()) => {
            let kind = u16::from_le_bytes([raw[0], raw[1]]);
            let mut addr = [0u8; 8];
            addr.copy_from_slice(&raw[8..16]);
            let count = u16::from_le_bytes([raw[16], raw[17]]);
            mem_dev.request(kind, u64::from_le_bytes(addr), count)
        }
        None => Answer::of(RESP_ERROR),
    };
    if answer.kind == RESP_ERROR {
        mem_dev.counters.error();
    }
    let mut out = [0u8; RESPONSE_LEN];
    out[..2].copy_from_slice(&answer.kind.to_le_bytes());
    out[8..].copy_from_slice(&answer.state.to_le_bytes());
    if mem.write_slice(&out, answer_at.addr).is_err() {
        mem_dev.counters.error();
        return 0;
    }
    RESPONSE_LEN as u32
}

impl VirtioDevice for Mem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_MEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[MEM_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.single_queue()?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        if index != 0 {
            return Ok(());
        }
        let Some(mut active) = self.active.take() else {
            return Ok(());
        };
        let counters = self.counters.clone();
        let result = active.drain(&counters, |mem, buffers| match buffers {
            Ok(buffers) => serve(self, mem, &buffers),
            Err(_) => 0,
        });
        self.active = Some(active);
        result
    }

    fn reset(&mut self) {
        // A driver that resets starts over with nothing plugged (the spec
        // lets a device keep the state, but then a new driver would meet
        // memory it does not know).
        self.active = None;
        if self.plugged.iter().any(|p| *p) {
            self.discard_blocks(0..self.plugged.len());
            self.plugged.iter_mut().for_each(|p| *p = false);
        }
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }
}

#[cfg(test)]
#[path = "mem_tests.rs"]
mod tests;
