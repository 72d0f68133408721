//! virtio-vsock (device type 19) in Firecracker's hybrid model: guest
//! stream sockets reach the host as Unix sockets.
//!
//! - Host-initiated: a client connects to `uds_path` and writes
//!   `CONNECT <guest port>\n`; once the guest accepts, sie answers
//!   `OK <host port>\n` and the socket carries the stream.
//! - Guest-initiated: a guest connection to CID 2, port P is connected to
//!   the Unix socket `<uds_path>_P`; nobody listening there means RST.
//!
//! Layout: `packet` (wire format and chains), `handshake` (the CONNECT
//! line), `conn` (one stream's credit and buffers), `connect` (connect(2)
//! that never blocks), `muxer` (routing and the epoll set), this file (the
//! virtio device and its queues).

mod conn;
mod connect;
#[cfg(test)]
mod fault_tests;
mod handshake;
#[cfg(test)]
mod hostile_tests;
mod muxer;
mod packet;
#[cfg(test)]
mod test_rig;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};

pub use conn::{BUF_ALLOC, HOST_BUF_CAP};
pub use muxer::{EPHEMERAL_BASE, MAX_CONNECTIONS};
pub use packet::{HOST_CID, MAX_PAYLOAD};

/// The packet wire format and the connection multiplexer on their own, so
/// fuzz/ can drive the guest-facing parser and the per-connection state
/// machine without a virtqueue in between. Not part of the device's API:
/// only with the `test-util` feature.
#[cfg(feature = "test-util")]
pub mod wire {
    pub use super::muxer::Muxer;
    pub use super::packet::{
        HEADER_LEN, Header, Op, PacketError, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM, capacity,
        read, write,
    };
}

use super::chain::{drain_queue, segments};
use super::{
    ActivateError, Activation, DeviceFault, GuestMemory, VirtioCounters, VirtioDevice,
    VirtioInterrupt, read_config_bytes,
};
use muxer::Muxer;
use packet::HEADER_LEN;

/// Queue size offered for each of the three queues.
pub const VSOCK_QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;
/// `virtio_vsock_event.id` of a transport reset: every connection is gone,
/// listeners stay (virtio 1.2 §5.10.6.9).
const EVENT_TRANSPORT_RESET: u32 = 0;
/// Configuration space: `guest_cid` (le64).
const CONFIG_LEN: usize = 8;

/// Why the device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0-2 are reserved (hypervisor, local, host), and the top 32 bits
    /// are reserved by the specification.
    #[error("vsock guest CID {0} is invalid: use 3..=4294967295")]
    InvalidCid(u64),
    /// Something that is not a socket is in the way; refuse to delete it.
    #[error("vsock socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// A stale socket could not be removed.
    #[error("cannot remove stale vsock socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    /// Binding or watching the listening socket failed.
    #[error("cannot listen on vsock socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
}

struct Active {
    mem: GuestMemory,
    queues: Vec<Queue>,
    interrupt: VirtioInterrupt,
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    counters: Arc<VirtioCounters>,
    muxer: Muxer,
    active: Option<Active>,
}

/// Removes a leftover socket at `path` (a previous sie that did not exit
/// cleanly); anything else there is the user's and is left alone.
fn remove_stale(path: &Path) -> Result<(), VsockError> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VsockError::RemoveStale {
            path: path.to_owned(),
            source,
        }),
        Ok(meta) if !meta.file_type().is_socket() => Err(VsockError::NotASocket(path.to_owned())),
        Ok(_) => std::fs::remove_file(path).map_err(|source| VsockError::RemoveStale {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Vsock {
    /// A device for the guest `guest_cid`, listening on `uds_path` for host
    /// clients at once (they wait until the guest driver is up).
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Self, VsockError> {
        if !(3..=u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        remove_stale(uds_path)?;
        let listen_error = |source| VsockError::Listen {
            path: uds_path.to_owned(),
            source,
        };
        let listener = UnixListener::bind(uds_path).map_err(listen_error)?;
        let counters: Arc<VirtioCounters> = Arc::default();
        let muxer = Muxer::new(
            guest_cid,
            uds_path.to_owned(),
            listener,
            Arc::clone(&counters),
        )
        .map_err(listen_error)?;
        Ok(Self {
            guest_cid,
            counters,
            muxer,
            active: None,
        })
    }

    /// The guest's CID, as in configuration space.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Live connections plus clients still sending CONNECT.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Every guest packet on the tx queue goes to the muxer; nothing is
    /// written back, so each chain is used with length 0.
    fn process_tx(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = active.queues.get_mut(TX) else {
            return Ok(());
        };
        let (mem, counters, muxer) = (&active.mem, &self.counters, &mut self.muxer);
        let notify = drain_queue(queue, mem, counters, |buffers| {
            let Ok(buffers) = buffers else {
                return 0;
            };
            match packet::read(mem, &buffers) {
                Ok((header, payload)) => muxer.handle_guest(&header, &payload),
                Err(error) => {
                    counters.error();
                    tracing::debug!(%error, "vsock tx packet dropped");
                }
            }
            0
        })?;
        if notify {
            active.interrupt.signal_used(TX);
        }
        Ok(())
    }

    /// Fills rx buffers with waiting packets while both last.
    fn process_rx(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = active.queues.get_mut(RX) else {
            return Ok(());
        };
        let (mem, counters) = (&active.mem, &self.counters);
        let mut used = false;
        while self.muxer.has_pending() {
            let Some(chain) = super::chain::next_chain(queue, mem, counters)? else {
                break;
            };
            let head = chain.head_index();
            let len = match segments(chain, mem) {
                Ok(buffers) => match fill(mem, &buffers, &mut self.muxer, counters) {
                    Some(len) => len,
                    None => {
                        // Nothing to send after all: give the buffer back.
                        queue.go_to_previous_position();
                        break;
                    }
                },
                Err(error) => {
                    counters.error();
                    tracing::debug!(%error, head, "vsock rx chain dropped");
                    0
                }
            };
            queue.add_used(mem, head, len).map_err(|_| {
                counters.error();
                DeviceFault::RingAccess
            })?;
            used = true;
        }
        if used
            && queue.needs_notification(mem).map_err(|_| {
                counters.error();
                DeviceFault::RingAccess
            })?
        {
            active.interrupt.signal_used(RX);
        }
        Ok(())
    }
}

/// Writes the next packet into one rx chain; `None` if there was none.
/// A chain that cannot hold a header is used empty (and counted), the
/// packet staying queued for the next one.
fn fill(
    mem: &GuestMemory,
    buffers: &[super::Segment],
    muxer: &mut Muxer,
    counters: &VirtioCounters,
) -> Option<u32> {
    let room = match packet::capacity(buffers, true) {
        Ok(room) if room >= HEADER_LEN => room - HEADER_LEN,
        _ => {
            counters.error();
            return Some(0);
        }
    };
    let (header, payload) = muxer.pop(room)?;
    match packet::write(mem, buffers, &header, &payload) {
        Ok(len) => {
            counters.read_bytes(payload.len() as u64);
            Some(len)
        }
        Err(error) => {
            counters.error();
            tracing::debug!(%error, "vsock rx packet lost");
            Some(0)
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[VSOCK_QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> usize {
        CONFIG_LEN
    }

    fn read_config(&self, offset: usize, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if let Some(index) = (0..3).find(|&i| !activation.queues.get(i).is_some_and(|q| q.ready()))
        {
            return Err(ActivateError::QueueNotReady(index));
        }
        self.active = Some(Active {
            mem: activation.mem,
            queues: activation.queues,
            interrupt: activation.interrupt,
        });
        // Host clients may have been waiting for the driver.
        self.process_rx()
            .map_err(|_| ActivateError::QueueInvalid(RX))
    }

    /// A restored VM's host-side connections did not survive the move:
    /// tell the driver with a transport-reset event on the event queue, so
    /// the guest closes its connections and keeps its listeners.
    fn restored(&mut self) -> Result<(), DeviceFault> {
        let Some(active) = self.active.as_mut() else {
            return Ok(());
        };
        let Some(queue) = active.queues.get_mut(EVENT) else {
            return Ok(());
        };
        let (mem, counters) = (&active.mem, &self.counters);
        let Some(chain) = super::chain::next_chain(queue, mem, counters)? else {
            tracing::info!("vsock: no event buffer posted; the guest misses the transport reset");
            return Ok(());
        };
        let head = chain.head_index();
        let written = match segments(chain, mem) {
            Ok(buffers) => match buffers.iter().find(|s| s.writable && s.len >= 4) {
                Some(segment) => {
                    vm_memory::Bytes::write_obj(mem, EVENT_TRANSPORT_RESET.to_le(), segment.addr)
                        .map_err(|_| DeviceFault::RingAccess)?;
                    4
                }
                None => 0,
            },
            Err(_) => 0,
        };
        if written == 0 {
            counters.error();
        }
        queue
            .add_used(mem, head, written)
            .map_err(|_| DeviceFault::RingAccess)?;
        active.interrupt.signal_used(EVENT);
        Ok(())
    }

    fn process_queue(&mut self, index: usize) -> Result<(), DeviceFault> {
        match index {
            TX => self.process_tx()?,
            // The event queue is used only for the transport reset after a
            // restore (`restored`): its buffers stay posted otherwise.
            EVENT => return Ok(()),
            _ => {}
        }
        self.process_rx()
    }

    fn reset(&mut self) {
        self.active = None;
        self.muxer.reset();
    }

    fn counters(&self) -> &Arc<VirtioCounters> {
        &self.counters
    }

    fn backend_fd(&self) -> Option<RawFd> {
        Some(self.muxer.epoll_fd())
    }

    fn process_backend(&mut self) -> Result<(), DeviceFault> {
        self.muxer.process_events();
        self.process_rx()
    }
}
