//! What a function on the PCI bus implements ([`PciDevice`]) and what the
//! VMM implements for it when a BAR moves ([`BarMapper`]).

use std::io;

use vmm_sys_util::eventfd::EventFd;

use crate::config_space::{BarInfo, BarMove, ConfigWriteOutcome};

/// A function on the root bus (function 0 of a slot).
///
/// Like [`sie_devices::BusDevice`], methods take `&self`: vCPU threads call
/// them concurrently and the device keeps its mutable state behind its own
/// lock(s). Offsets and lengths come from the guest: a device must treat
/// them as hostile (the root only guarantees `offset < 4096` and
/// `1 <= data.len() <= 4` for configuration accesses, and that BAR
/// accesses fall inside the BAR).
pub trait PciDevice: Send + Sync {
    /// A guest configuration read at `offset` (below 4096) of 1..=4 bytes.
    fn read_config(&self, offset: u16, data: &mut [u8]);

    /// A guest configuration write. The root itself finds BAR moves (it
    /// asks [`Self::bars`] after a write that touched the command register
    /// or a BAR), so the outcome is informational for the device; it is
    /// returned for tests and for wrappers.
    fn write_config(&self, offset: u16, data: &[u8]) -> ConfigWriteOutcome;

    /// A guest read at `offset` within BAR `bar` (the access fits the BAR).
    fn read_bar(&self, bar: u8, offset: u64, data: &mut [u8]);

    /// A guest write at `offset` within BAR `bar`.
    fn write_bar(&self, bar: u8, offset: u64, data: &[u8]);

    /// The device's BARs as its configuration space holds them now.
    fn bars(&self) -> Vec<BarInfo>;

    /// Where BAR `moved.index` decodes changed (placed by the root at
    /// addition, moved or switched on or off by the guest, or removed with
    /// the device); `to` is `None` while it does not decode (or decodes
    /// outside the root's windows). A device with ioeventfds or host
    /// memory in that BAR moves them with `mapper`. Runs on the vCPU
    /// thread that wrote the configuration space; errors are logged and
    /// counted by the root, the guest's write stands.
    fn bar_moved(&self, _moved: &BarMove, _mapper: &dyn BarMapper) -> io::Result<()> {
        Ok(())
    }

    /// A short name for logs ("virtio-blk", "host bridge", "vfio 0000:01:00.0").
    fn name(&self) -> &str;
}

/// Which address space an ioeventfd or BAR lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    /// Guest physical memory (MMIO).
    Memory,
    /// x86 I/O ports.
    Io,
}

/// What the VMM does for a device whose BAR moved: the KVM side of a BAR
/// (ioeventfds, memory slots), which devices never touch themselves.
/// Methods the VMM does not support return `ErrorKind::Unsupported` by
/// default.
pub trait BarMapper: Send + Sync {
    /// Signals `fd` on every guest write of `len` bytes at `addr` (any
    /// value; `len` 0: a write of any width), without an exit to the VMM.
    fn register_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        len: u32,
    ) -> io::Result<()>;

    /// Undoes [`Self::register_ioevent`] with the same arguments.
    fn unregister_ioevent(
        &self,
        fd: &EventFd,
        space: AddressSpace,
        addr: u64,
        len: u32,
    ) -> io::Result<()>;

    /// Maps `size` bytes of host memory at `host_addr` into the guest at
    /// `guest_addr` (a passed-through device's BAR), so guest accesses
    /// reach it without exits.
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` must stay mapped in the VMM (and not
    /// be reused for anything else) until [`Self::unmap_memory`] is called
    /// for `guest_addr`.
    unsafe fn map_memory(
        &self,
        _guest_addr: u64,
        _size: u64,
        _host_addr: *mut u8,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Undoes [`Self::map_memory`] at `guest_addr`.
    fn unmap_memory(&self, _guest_addr: u64, _size: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// A [`BarMapper`] that registers nothing and says it did: notifications
/// then reach devices through the bus (tests, fuzzing). Memory mapping
/// stays unsupported.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBarMapper;

impl BarMapper for NoBarMapper {
    fn register_ioevent(&self, _: &EventFd, _: AddressSpace, _: u64, _: u32) -> io::Result<()> {
        Ok(())
    }

    fn unregister_ioevent(&self, _: &EventFd, _: AddressSpace, _: u64, _: u32) -> io::Result<()> {
        Ok(())
    }
}
