//! VFIO passthrough: a host PCI device bound to vfio-pci, handed to the
//! guest. [`sysfs`] refuses a device that cannot be passed (with the fix in
//! the message), [`host`] holds the opened device (DMA map, BAR mmaps,
//! interrupts), [`config`] is the guest's view of its configuration space,
//! and [`pci::VfioPciDevice`] puts it all on sie's PCI bus.
//! KVM never appears here: the VMM maps BARs and routes interrupts through
//! `sie-hv`.

pub mod config;
pub mod host;
pub mod pci;
pub mod sysfs;

pub use pci::{VfioPciDevice, VfioPciError};
