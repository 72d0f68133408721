//! Guest memory as every virtio device and the transport see it.
//!
//! Its own module so the chain walker and the device contract, which both
//! need it, depend on it rather than on each other.

use vm_memory::GuestMemoryMmap;
use vm_memory::bitmap::AtomicBitmap;

/// Guest RAM: mmap-backed regions with a page bitmap that every device
/// write marks (for Diff snapshots). The same type as `sie_hv::GuestMemory`
/// (this crate sits beside hv, not above it); the VMM hands one to the
/// other, so a mismatch fails to compile.
pub type GuestMemory = GuestMemoryMmap<AtomicBitmap>;
