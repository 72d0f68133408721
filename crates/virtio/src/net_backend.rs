//! The host side of a virtio-net device (what crosses it: frames with
//! their virtio-net header), and the switch that stops the event thread
//! from spinning on it. Apart from `net/` so the test backend in
//! `testing/` implements it without reaching up into the device.

use std::error::Error;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`): the header
/// every frame carries once VERSION_1 is negotiated.
pub const NET_HDR_LEN: usize = 12;
/// Largest frame with its header: 65550 bytes (a 64 KiB GSO frame with
/// Ethernet and VLAN headers) plus the virtio-net header.
pub const MAX_FRAME_LEN: usize = NET_HDR_LEN + 65550;

/// Where guest frames go and host frames come from: a tap in production,
/// a socket pair in tests. Every frame crosses it *with* its 12-byte
/// `virtio_net_hdr_v1` in front, as a tap with `IFF_VNET_HDR` expects.
pub trait NetBackend: Send {
    /// Reads one whole frame (header included) into `buf`; `WouldBlock`
    /// when none is waiting. The descriptor must be non-blocking.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends the concatenation of `parts` as one frame (header included).
    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize>;
    /// The descriptor that becomes readable when a frame is waiting.
    fn raw_fd(&self) -> RawFd;
    /// The driver accepted `acked_features`: offer it only offloaded
    /// frames it can take. Backends without offloads ignore this.
    fn set_offloads(&mut self, _acked_features: u64) -> io::Result<()> {
        Ok(())
    }
    /// The guest is offered an MTU of `mtu` bytes: make the host side
    /// carry frames that large, and no larger. The error names the host
    /// interface. Backends without an MTU accept any.
    fn set_mtu(&mut self, _mtu: u16) -> Result<(), Box<dyn Error + Send + Sync>> {
        Ok(())
    }
}

/// Whether the event thread listens to the backend.
///
/// The worker's event loop is level-triggered, so a readable tap with no
/// receive buffers to put frames in would wake it forever. Rather than
/// dropping frames the guest is merely slow to take, the device watches the
/// backend through a private epoll set (the descriptor the worker sees) and
/// takes the backend out of that set while it cannot receive: no receive
/// buffers, device not live, or the backend failing. A receive-queue
/// notification (the driver posted buffers) or activation puts it back.
/// Frames wait in the tap meanwhile, and the kernel drops them there once
/// its queue is full, as it would for a slow reader.
pub struct RxGate {
    epoll: Epoll,
    backend: RawFd,
    open: bool,
}

impl RxGate {
    /// A closed gate for `backend`.
    pub fn new(backend: RawFd) -> io::Result<Self> {
        Ok(Self {
            epoll: Epoll::new()?,
            backend,
            open: false,
        })
    }

    /// The descriptor for the event loop: readable while the gate is open
    /// and the backend has a frame waiting.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Whether the backend is being listened to.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Listen to the backend (again).
    pub fn open(&mut self) {
        if self.open {
            return;
        }
        let event = EpollEvent::new(EventSet::IN, 0);
        match self.epoll.ctl(ControlOperation::Add, self.backend, event) {
            Ok(()) => self.open = true,
            // Left registered by a failed removal: listening already.
            Err(error) if error.raw_os_error() == Some(libc::EEXIST) => self.open = true,
            Err(error) => tracing::warn!(%error, "cannot watch the net backend"),
        }
    }

    /// Stop listening until [`Self::open`].
    pub fn close(&mut self) {
        if !self.open {
            return;
        }
        // Removal rather than an empty event mask: errors and hang-ups are
        // reported whatever the mask, and would wake the loop just the same.
        let event = EpollEvent::default();
        if let Err(error) = self
            .epoll
            .ctl(ControlOperation::Delete, self.backend, event)
        {
            tracing::warn!(%error, "cannot stop watching the net backend");
        }
        self.open = false;
    }
}
