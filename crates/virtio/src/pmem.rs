//! virtio-pmem (device type 27, virtio 1.3 §5.19): a host file the VMM has
//! mapped into the guest's physical address space, which Linux's
//! `virtio_pmem` turns into an NVDIMM region (`/dev/pmem0`, DAX-capable).
//!
//! The guest reads and writes the mapping directly; the device itself only
//! describes where it is (configuration space `{start, size}`, two
//! little-endian u64s) and serves the one request the driver sends on its
//! one queue: FLUSH, answered after `fsync(2)` on the file, so what the
//! guest wrote through the shared mapping is on the host's disk.
//!
//! A request is a device-readable `le32 type` and a device-writable
//! `le32 ret` (0 on success); a chain without both, or with a type other
//! than FLUSH, is answered with an error and counted.

use std::fs::File;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_PMEM;
use vm_memory::{Bytes, GuestAddress};

use crate::chain::Segment;
use crate::counters::VirtioCounters;
use crate::device::{ActivateError, Activation, SingleQueue, VirtioDevice, read_config_bytes};
use crate::fault::DeviceFault;
use crate::memory::GuestMemory;

/// Queue size offered to the driver.
pub const PMEM_QUEUE_SIZE: u16 = 256;
/// The only request type (`VIRTIO_PMEM_REQ_TYPE_FLUSH`).
pub const PMEM_REQ_FLUSH: u32 = 0;
/// `ret` of a flush that reached the file.
pub const PMEM_RET_OK: u32 = 0;
/// `ret` of a failed or unknown request (Linux reads any non-zero as EIO).
pub const PMEM_RET_ERROR: u32 = 1;
/// Configuration space: `le64 start`, `le64 size`.
const CONFIG_LEN: usize = 16;

/// The persistent-memory device. The mapping itself belongs to the VMM
/// (a memory slot of its own); this holds the file to flush.
pub struct Pmem {
    file: File,
    config: [u8; CONFIG_LEN],
    counters: Arc<VirtioCounters>,
    active: Option<SingleQueue>,
}

impl Pmem {
    /// A device for `file`, mapped at guest-physical `start` for `size`
    /// bytes.
    pub fn new(file: File, start: u64, size: u64) -> Self {
        let mut config = [0u8; CONFIG_LEN];
        config[..8].copy_from_slice(&start.to_le_bytes());
        config[8..].copy_from_slice(&size.to_le_bytes());
        Self {
            file,
            config,
            counters: Arc::default(),
            active: None,
        }
    }
}

/// Serves one chain: returns the bytes written to the guest (4 when an
/// answer was written, 0 when the chain had no room for one).
fn serve(file: &File, mem: &GuestMemory, buffers: &[Segment], counters: &VirtioCounters) -> u32 {
    let request = buffers.iter().find(|s| !s.writable && s.len >= 4);
    let Some(answer) = buffers.iter().find(|s| s.writable && s.len >= 4) else {
        counters.error();
        return 0;
    };
    let kind = request.and_then(|s| mem.read_obj::<u32>(s.addr).ok().map(u32::from_le));
    let ret = match kind {
        Some(PMEM_REQ_FLUSH) => match file.sync_all() {
            Ok(()) => PMEM_RET_OK,
            Err(error) => {
                tracing::warn!(%error, "virtio-pmem flush failed");
                counters.error();
                PMEM_RET_ERROR
            }
        },
        // No request, or one the specification does not define.
        _ => {
            counters.error();
            PMEM_RET_ERROR
        }
    };
    if mem
        .write_obj(ret.to_le(), GuestAddress(answer.addr.0))
        .is_err()
    {
        counters.error();
        return 0;
    }
    4
}

impl VirtioDevice for Pmem {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_PMEM
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[PMEM_QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(activation.single_queue()?);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut().filter(|_| index == 0) else {
            return Ok(());
        };
        let (file, counters) = (&self.file, &self.counters);
        active.drain(counters, |mem, buffers| match buffers {
            Ok(buffers) => serve(file, mem, &buffers, counters),
            Err(_) => 0,
        })
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }
}

#[cfg(test)]
mod tests {
    use virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;

    use super::*;
    use crate::testing::{DATA, Driver, Ring, transport};

    fn device() -> Pmem {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sie-pmem-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        let _ = std::fs::remove_file(&path);
        Pmem::new(file, 0x1_0000_0000, 2 << 20)
    }

    fn answer(mem: &GuestMemory, at: u64) -> u32 {
        mem.read_obj::<u32>(GuestAddress(at)).expect("read")
    }

    #[test]
    fn config_space_holds_start_and_size() {
        let pmem = device();
        let mut start = [0u8; 8];
        pmem.read_config(0, &mut start);
        assert_eq!(u64::from_le_bytes(start), 0x1_0000_0000);
        let mut size = [0u8; 8];
        pmem.read_config(8, &mut size);
        assert_eq!(u64::from_le_bytes(size), 2 << 20);
        assert_eq!(pmem.device_type(), 27);
    }

    #[test]
    fn a_flush_is_answered_ok() {
        let (t, mem, irq) = transport(device());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        mem.write_obj(PMEM_REQ_FLUSH, GuestAddress(DATA)).unwrap();
        mem.write_obj(0xffff_ffffu32, GuestAddress(DATA + 0x100))
            .unwrap();
        ring.set_chain(&mem, 0, &[(DATA, 4, false), (DATA + 0x100, 4, true)]);
        ring.publish(&mem, &[0]);
        d.notify(0);
        assert_eq!(ring.used(&mem, 0), (0, 4));
        assert_eq!(answer(&mem, DATA + 0x100), PMEM_RET_OK);
        assert_eq!(irq.count(), 1);
        assert_eq!(t.counters().errors, 0);
    }

    #[test]
    fn an_unknown_request_type_is_an_error_answer() {
        let (t, mem, _irq) = transport(device());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        mem.write_obj(7u32, GuestAddress(DATA)).unwrap();
        ring.set_chain(&mem, 0, &[(DATA, 4, false), (DATA + 0x100, 4, true)]);
        ring.publish(&mem, &[0]);
        d.notify(0);
        assert_eq!(ring.used(&mem, 0), (0, 4));
        assert_eq!(answer(&mem, DATA + 0x100), PMEM_RET_ERROR);
        assert_eq!(t.counters().errors, 1);
        assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }

    #[test]
    fn short_or_missing_buffers_are_refused_without_a_fault() {
        let (t, mem, _irq) = transport(device());
        let d = Driver::new(&t);
        let ring = Ring::new(0x1000, 16);
        d.start(&[ring]);
        // A 2-byte request and a 2-byte answer: no room for either.
        ring.set_chain(&mem, 0, &[(DATA, 2, false), (DATA + 0x100, 2, true)]);
        // No request at all: answered with an error.
        ring.set_chain(&mem, 2, &[(DATA + 0x200, 4, true)]);
        // No answer buffer: nothing written.
        ring.set_chain(&mem, 3, &[(DATA, 4, false)]);
        ring.publish(&mem, &[0, 2, 3]);
        d.notify(0);
        assert_eq!(ring.used(&mem, 0), (0, 0));
        assert_eq!(ring.used(&mem, 1), (2, 4));
        assert_eq!(answer(&mem, DATA + 0x200), PMEM_RET_ERROR);
        assert_eq!(ring.used(&mem, 2), (3, 0));
        assert_eq!(t.counters().errors, 3);
        assert_eq!(t.status() & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
    }
}
