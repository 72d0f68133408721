//! A socket pair standing in for a tap: each datagram is one frame,
//! header included, as a tap with IFF_VNET_HDR would deliver it. The test
//! (or fuzz target) plays the host network at the other end, never the
//! real one.

use std::error::Error;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::net_backend::{MAX_FRAME_LEN, NET_HDR_LEN, NetBackend};

/// The device's end of the pair.
pub struct PairBackend {
    socket: UnixDatagram,
    /// The last features passed to `set_offloads`.
    pub offloads: Arc<Mutex<Option<u64>>>,
    /// Makes reads fail with EIO (a tap whose interface went away).
    pub fail_reads: Arc<AtomicBool>,
    /// The last MTU passed to `set_mtu`.
    pub mtu: Arc<Mutex<Option<u16>>>,
    /// Makes `set_mtu` fail (a tap without CAP_NET_ADMIN).
    pub refuse_mtu: Arc<AtomicBool>,
}

/// The test's end: plays the host network.
pub struct Peer {
    /// The host network's socket: send frames (header included) to the
    /// device, receive what it transmitted.
    pub socket: UnixDatagram,
    /// What the device last passed to `set_offloads`.
    pub offloads: Arc<Mutex<Option<u64>>>,
    /// Set to make the device's reads fail with EIO.
    pub fail_reads: Arc<AtomicBool>,
    /// What the device last passed to `set_mtu`.
    pub mtu: Arc<Mutex<Option<u16>>>,
    /// Set to make the device's `set_mtu` fail.
    pub refuse_mtu: Arc<AtomicBool>,
}

impl Peer {
    /// Sends `frame` behind a zeroed 12-byte header.
    pub fn send(&self, frame: &[u8]) {
        let mut datagram = vec![0u8; NET_HDR_LEN];
        datagram.extend_from_slice(frame);
        self.socket.send(&datagram).expect("peer send");
    }

    /// The next datagram the device sent, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_FRAME_LEN + 100];
        match self.socket.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("peer recv: {e}"),
        }
    }
}

/// A connected (device, peer) pair, both non-blocking.
pub fn pair() -> (PairBackend, Peer) {
    let (a, b) = UnixDatagram::pair().expect("socketpair");
    a.set_nonblocking(true).expect("nonblocking");
    b.set_nonblocking(true).expect("nonblocking");
    let offloads = Arc::new(Mutex::new(None));
    let fail_reads = Arc::new(AtomicBool::new(false));
    let mtu = Arc::new(Mutex::new(None));
    let refuse_mtu = Arc::new(AtomicBool::new(false));
    (
        PairBackend {
            socket: a,
            offloads: offloads.clone(),
            fail_reads: fail_reads.clone(),
            mtu: mtu.clone(),
            refuse_mtu: refuse_mtu.clone(),
        },
        Peer {
            socket: b,
            offloads,
            fail_reads,
            mtu,
            refuse_mtu,
        },
    )
}

impl NetBackend for PairBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        self.socket.recv(buf)
    }

    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        self.socket.send(&parts.concat())
    }

    fn raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn set_offloads(&mut self, acked_features: u64) -> io::Result<()> {
        *self.offloads.lock().expect("offloads") = Some(acked_features);
        Ok(())
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), Box<dyn Error + Send + Sync>> {
        if self.refuse_mtu.load(Ordering::SeqCst) {
            return Err("socket pair: MTU refused".into());
        }
        *self.mtu.lock().expect("mtu") = Some(mtu);
        Ok(())
    }
}
