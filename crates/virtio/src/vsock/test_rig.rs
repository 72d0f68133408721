//! A guest driver for vsock tests: the three rings in real guest memory,
//! packets written and read the way a driver would, and a scratch
//! directory for the Unix sockets.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::Vsock;
use super::packet::{HEADER_LEN, HOST_CID, Header, Op, TYPE_STREAM};
use crate::pci::VirtioPciDevice;
use crate::testing::{DATA, Driver, PciDriver, Ring, pci_transport, transport};
use crate::{GuestMemory, VirtioCore, VirtioMmioTransport};

pub const GUEST_CID: u64 = 3;
pub const SIZE: u16 = 16;
/// Each rx buffer (one descriptor, header and payload together).
pub const RX_BUF: u32 = 0x1000;
const RX_BASE: u64 = DATA;
const TX_BASE: u64 = DATA + 0x2_0000;
/// Room for each tx packet.
pub const TX_BUF: u64 = 0x1000;

/// A directory removed when the test ends.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sie-vsock-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The transport the rig drives the device through: the same scenarios
/// run over virtio-MMIO and virtio-PCI.
pub enum Transport {
    Mmio(VirtioMmioTransport<Vsock>),
    Pci(VirtioPciDevice<Vsock>),
}

impl std::ops::Deref for Transport {
    type Target = VirtioCore<Vsock>;

    fn deref(&self) -> &VirtioCore<Vsock> {
        match self {
            Self::Mmio(t) => t,
            Self::Pci(t) => t,
        }
    }
}

impl Transport {
    /// The driver's notification of `queue`, and the worker's step for it.
    fn notify(&self, queue: u16) {
        match self {
            Self::Mmio(t) => Driver::new(t).notify(u32::from(queue)),
            Self::Pci(t) => PciDriver::new(t).notify(queue),
        }
    }
}

pub struct Rig {
    pub t: Transport,
    pub mem: GuestMemory,
    pub uds: PathBuf,
    rings: [Ring; 3],
    rx_posted: u16,
    rx_seen: u16,
    /// Rx buffers the device returned empty.
    pub rx_empty: u32,
    tx_next: u16,
    _dir: TempDir,
}

/// A guest packet header from the guest's CID to the host.
pub fn guest_header(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        kind: TYPE_STREAM,
        op: op as u16,
        buf_alloc: 64 * 1024,
        ..Header::default()
    }
}

impl Rig {
    /// A live device on virtio-MMIO with `rx` rx buffers posted.
    pub fn new(rx: u16) -> Self {
        Self::over(rx, false)
    }

    /// The same on virtio-PCI.
    pub fn new_pci(rx: u16) -> Self {
        Self::over(rx, true)
    }

    fn over(rx: u16, pci: bool) -> Self {
        let dir = TempDir::new();
        let uds = dir.0.join("v.sock");
        let vsock = Vsock::new(GUEST_CID, &uds).expect("vsock");
        let rings = [
            Ring::new(0x1000, SIZE),
            Ring::new(0x2000, SIZE),
            Ring::new(0x3000, SIZE),
        ];
        let (t, mem) = if pci {
            let (t, mem, _msi) = pci_transport(vsock);
            PciDriver::new(&t).start(&rings);
            (Transport::Pci(t), mem)
        } else {
            let (t, mem, _irq) = transport(vsock);
            Driver::new(&t).start(&rings);
            (Transport::Mmio(t), mem)
        };
        let mut rig = Self {
            t,
            mem,
            uds,
            rings,
            rx_posted: 0,
            rx_seen: 0,
            rx_empty: 0,
            tx_next: 0,
            _dir: dir,
        };
        rig.post_rx(rx);
        rig
    }

    /// The register-level driver of a rig on virtio-MMIO.
    pub fn driver(&self) -> Driver<'_, Vsock> {
        match &self.t {
            Transport::Mmio(t) => Driver::new(t),
            Transport::Pci(_) => panic!("a virtio-MMIO rig"),
        }
    }

    /// Posts `n` rx buffers of [`RX_BUF`] bytes and notifies.
    pub fn post_rx(&mut self, n: u16) {
        self.post_rx_sized(n, RX_BUF);
    }

    pub fn post_rx_sized(&mut self, n: u16, len: u32) {
        let ring = self.rings[0];
        for _ in 0..n {
            let head = self.rx_posted % SIZE;
            let addr = RX_BASE + u64::from(head) * u64::from(RX_BUF);
            ring.set_chain(&self.mem, head, &[(addr, len, true)]);
            ring.publish(&self.mem, &[head]);
            self.rx_posted = self.rx_posted.wrapping_add(1);
        }
        self.t.notify(0);
    }

    /// Packets the device put in rx buffers since the last call.
    pub fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        let ring = self.rings[0];
        let mut out = Vec::new();
        while self.rx_seen != ring.used_idx(&self.mem) {
            let (head, len) = ring.used(&self.mem, self.rx_seen);
            self.rx_seen = self.rx_seen.wrapping_add(1);
            if len == 0 {
                self.rx_empty += 1;
                continue;
            }
            let addr = RX_BASE + u64::from(head) * u64::from(RX_BUF);
            let mut raw = [0u8; HEADER_LEN];
            self.mem
                .read_slice(&mut raw, GuestAddress(addr))
                .expect("rx header");
            let header = Header::from_bytes(&raw);
            assert_eq!(len as usize, HEADER_LEN + header.len as usize);
            let mut data = vec![0u8; header.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(addr + HEADER_LEN as u64))
                .expect("rx data");
            out.push((header, data));
        }
        out
    }

    /// Sends one packet on the tx queue as header + payload in two
    /// descriptors, the second `chain_payload` bytes long (none if 0),
    /// whatever `header.len` claims.
    pub fn send_raw(&mut self, header: &Header, payload: &[u8], chain_payload: u32) {
        let mut bytes = header.to_bytes().to_vec();
        bytes.extend_from_slice(payload);
        let mut chain = vec![(HEADER_LEN as u32, false)];
        if chain_payload != 0 {
            chain.push((chain_payload, false));
        }
        self.send_bytes(&bytes, &chain);
    }

    /// Puts `bytes` in a tx buffer and offers it as a chain of descriptors
    /// of the given (length, device-writable) in order.
    pub fn send_bytes(&mut self, bytes: &[u8], chain: &[(u32, bool)]) {
        let ring = self.rings[1];
        let slot = self.tx_next % (SIZE / 2);
        self.tx_next = self.tx_next.wrapping_add(1);
        let mut addr = TX_BASE + u64::from(slot) * TX_BUF;
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .expect("tx bytes");
        let mut buffers = Vec::new();
        for &(len, writable) in chain {
            buffers.push((addr, len, writable));
            addr += u64::from(len);
        }
        let head = slot * 2;
        ring.set_chain(&self.mem, head, &buffers);
        ring.publish(&self.mem, &[head]);
        self.t.notify(1);
    }

    /// Sends a well-formed packet.
    pub fn send(&mut self, mut header: Header, payload: &[u8]) {
        header.len = payload.len() as u32;
        self.send_raw(&header, payload, payload.len() as u32);
    }

    /// Lets the device serve its host side (as the worker would).
    pub fn backend(&self) {
        for _ in 0..4 {
            self.t.backend_event();
        }
    }

    /// A host client that has sent `line`.
    pub fn client(&self, line: &[u8]) -> UnixStream {
        use std::io::Write;
        let mut client = UnixStream::connect(&self.uds).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        client.write_all(line).expect("line");
        client
    }

    pub fn errors(&self) -> u64 {
        self.t.counters().errors
    }
}

/// Reads exactly `n` bytes (with the stream's timeout).
pub fn read_n(stream: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    stream.read_exact(&mut buf).expect("read");
    buf
}

/// Whether the peer closed `stream` (EOF or reset within the timeout).
pub fn closed(stream: &mut UnixStream) -> bool {
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(n) => n == 0,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}
