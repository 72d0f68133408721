//! Guest memory as every virtio device and the transport see it.
//!
//! Its own module so the chain walker and the device contract, which both
//! need it, depend on it rather than on each other.

use vm_memory::GuestMemoryMmap;

/// Guest RAM: mmap-backed regions, no dirty-page bitmap.
pub type GuestMemory = GuestMemoryMmap<()>;
