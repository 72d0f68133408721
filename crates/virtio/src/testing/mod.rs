//! Test helpers, for this crate's tests and for fuzz/ (cargo feature
//! `test-util`): split virtqueues built by hand in real guest memory, a
//! driver that brings a transport up through its registers (virtio-MMIO's,
//! or a virtio-PCI device's configuration space and BAR), and a socket
//! pair standing in for a net device's tap, and a clock driven by hand
//! for rate limiters.
//!
//! ```
//! use sie_virtio::rng::Rng;
//! use sie_virtio::testing::{DATA, Driver, Ring, transport};
//!
//! let (t, mem, irq) = transport(Rng::new());
//! let ring = Ring::new(0x1000, 16);
//! Driver::new(&t).start(&[ring]);
//! ring.set_chain(&mem, 0, &[(DATA, 64, true)]);
//! ring.publish(&mem, &[0]);
//! Driver::new(&t).notify(0);
//! assert_eq!(ring.used(&mem, 0), (0, 64));
//! assert_eq!(irq.count(), 1);
//! ```

mod clock;
mod disk;
mod driver;
mod net_pair;
mod pci_driver;
mod ring;

pub use crate::pci::common;
pub use clock::ManualClock;
pub use disk::disk_image;
pub use driver::{CountingIrq, Driver, transport};
pub use net_pair::{PairBackend, Peer, pair};
pub use pci_driver::{MSI_ADDRESS, PciDriver, pci_transport};
pub use ring::{
    DATA, MEM_SIZE, Ring, VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE, memory,
};
