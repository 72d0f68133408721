//! VFIO passthrough: a host PCI device bound to vfio-pci, handed to the
//! guest. [`sysfs`] refuses a device that cannot be passed (with the fix in
//! the message), [`config`] is the guest's view of its configuration space.
//! KVM never appears here: the VMM maps BARs and routes interrupts through
//! `sie-hv`.

pub mod config;
pub mod host;
pub mod sysfs;
