//! The device on a real tap (the test machine runs tests as root, so the
//! tap is created on the fly and vanishes with its descriptor): the frame
//! format and offload ioctls as the kernel checks them, not as a socket
//! pair would.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{MAX_FRAME_LEN, Net, RX_QUEUE, Tap};
use crate::VirtioMmioTransport;
use crate::testing::{DATA, Driver, Ring, VIRTIO_RING_F_EVENT_IDX, transport};

/// A tap name no other test (or concurrent test run) uses.
fn unique_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    format!("sietsd{}{n}", std::process::id() % 10000)
}

fn set_up(name: &str) {
    let status = Command::new("ip")
        .args(["link", "set", name, "up"])
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip link set {name} up");
}

/// A broadcast Ethernet frame of `len` bytes behind a header of `header`.
fn tx_frame(header: [u8; 12], len: usize) -> Vec<u8> {
    let mut out = header.to_vec();
    out.extend_from_slice(&[0xff; 6]);
    out.extend_from_slice(&[0x06, 0, 0, 0, 0, 1]);
    // EtherType 0x88b5: local experimental, ignored by the host stack.
    out.extend_from_slice(&[0x88, 0xb5]);
    out.resize(12 + len, 0x5a);
    out
}

struct TapRig {
    t: VirtioMmioTransport<Net<Tap>>,
    mem: crate::GuestMemory,
    tx: Ring,
    rx: Ring,
    name: String,
}

impl TapRig {
    fn new() -> Self {
        let name = unique_name();
        let tap = Tap::open(&name).expect("create tap (needs CAP_NET_ADMIN)");
        let (t, mem, _irq) = transport(Net::new(tap, None, None).expect("net"));
        let (rx, tx) = (Ring::new(0x1000, 16), Ring::new(0x2000, 16));
        let d = Driver::new(&t);
        // Every offload the device offers, as Linux would accept them.
        let features = d.device_features() & !(1 << VIRTIO_RING_F_EVENT_IDX);
        d.start_with(features, &[rx, tx]);
        Self {
            t,
            mem,
            tx,
            rx,
            name,
        }
    }

    fn send(&self, head: u16, bytes: &[u8]) {
        use vm_memory::Bytes;
        let at = DATA + 0x2_0000 * u64::from(head % 2);
        self.mem
            .write_slice(bytes, vm_memory::GuestAddress(at))
            .expect("guest write");
        self.tx
            .set_chain(&self.mem, head, &[(at, bytes.len() as u32, false)]);
        self.tx.publish(&self.mem, &[head]);
        Driver::new(&self.t).notify(1);
    }

    fn tx_counts(&self) -> (u64, u64) {
        let s = self.t.with_device(|n| n.stats().snapshot());
        (s.tx_frames, s.tx_dropped)
    }
}

#[test]
fn transmits_and_receives_through_a_real_tap() {
    let rig = TapRig::new();
    // A tap whose interface is down refuses frames (EIO): dropped, counted,
    // and the chain still comes back.
    rig.send(0, &tx_frame([0; 12], 60));
    assert_eq!(rig.tx_counts(), (0, 1));
    assert_eq!(rig.tx.used(&rig.mem, 0), (0, 0));
    set_up(&rig.name);
    rig.send(1, &tx_frame([0; 12], 60));
    assert_eq!(rig.tx_counts(), (1, 1));
    // The largest frame the guest may send: a GSO header the kernel checks
    // (TCPv4, 1448-byte segments, partial checksum); the bytes behind it
    // are not a real TCP packet, so the host stack drops them later.
    let gso = [1, 1, 54, 0, 0xa8, 0x05, 34, 0, 16, 0, 0, 0];
    rig.send(2, &tx_frame(gso, MAX_FRAME_LEN - 12));
    // A header the kernel rejects (GSO type it does not know).
    rig.send(3, &tx_frame([0, 0x7e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 60));
    // The GSO frame went out, the bad header was refused.
    assert_eq!(rig.tx_counts(), (2, 2));

    // Bringing the interface up makes the host send IPv6 housekeeping
    // (MLD reports, neighbour solicitations) into the tap within a second
    // or so: it must land in a posted buffer with num_buffers = 1.
    rig.rx
        .set_chain(&rig.mem, 0, &[(DATA + 0x8_0000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[0]);
    Driver::new(&rig.t).notify(RX_QUEUE as u32);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.rx.used_idx(&rig.mem) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        rig.t.backend_event();
    }
    let (head, len) = rig.rx.used(&rig.mem, 0);
    assert_eq!(head, 0);
    assert!(len as usize > 12 + 14, "frame of {len} bytes");
    let mut num_buffers = [0u8; 2];
    vm_memory::Bytes::read_slice(
        &rig.mem,
        &mut num_buffers,
        vm_memory::GuestAddress(DATA + 0x8_0000 + 10),
    )
    .expect("read");
    assert_eq!(num_buffers, [1, 0]);
}

/// The interface's MTU as the kernel reports it.
fn kernel_mtu(name: &str) -> String {
    let path = format!("/sys/class/net/{name}/mtu");
    std::fs::read_to_string(&path)
        .expect("read the tap's MTU")
        .trim()
        .to_owned()
}

#[test]
fn an_mtu_is_set_on_the_real_tap_and_a_refusal_names_it() {
    let name = unique_name();
    let tap = Tap::open(&name).expect("create tap (needs CAP_NET_ADMIN)");
    assert_eq!(kernel_mtu(&name), "1500");
    let net = Net::new(tap, None, Some(9000)).expect("net with MTU 9000");
    assert_eq!(kernel_mtu(&name), "9000");
    // The kernel's own floor for a tap is 68 too: below it, its EINVAL
    // comes back naming the tap and the step.
    let error = net.backend().set_mtu(67).expect_err("MTU 67");
    assert_eq!(error.source.raw_os_error(), Some(libc::EINVAL));
    assert!(
        error
            .to_string()
            .starts_with(&format!("tap {name}: set the MTU: ")),
        "{error}"
    );
    assert_eq!(kernel_mtu(&name), "9000");
}

/// Whether the event loop would wake for the device's backend now.
fn backend_wakes(t: &VirtioMmioTransport<Net<Tap>>) -> bool {
    use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
    let fd = t.backend_fd().expect("net has a backend fd");
    let epoll = Epoll::new().expect("epoll");
    epoll
        .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, 0))
        .expect("watch");
    let mut events = [EpollEvent::default()];
    epoll.wait(0, &mut events).expect("epoll wait") > 0
}

/// `ip link delete` on the tap under a live device: the descriptor stays
/// open but every read and write fails (EBADFD) and poll reports an error
/// for good. The device must count the failures, stop listening (or the
/// level-triggered loop would spin at 100%), drop the guest's frames while
/// still returning their chains, and need no reset.
#[test]
fn a_tap_deleted_under_the_device_is_dropped_counted_and_not_polled() {
    let rig = TapRig::new();
    set_up(&rig.name);
    rig.send(0, &tx_frame([0; 12], 60));
    assert_eq!(rig.tx_counts(), (1, 0));
    let errors_before = rig.t.counters().errors;
    // The driver has posted receive buffers: the gate is open.
    rig.rx
        .set_chain(&rig.mem, 0, &[(DATA + 0x8_0000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[0]);
    Driver::new(&rig.t).notify(RX_QUEUE as u32);

    let status = Command::new("ip")
        .args(["link", "delete", &rig.name])
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip link delete {}", rig.name);
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&rig.name)
            .exists(),
        "the interface is gone"
    );

    // The dead tap polls as an error: the loop wakes once, the read fails,
    // and the device stops listening.
    assert!(backend_wakes(&rig.t), "the dead tap reports an error");
    rig.t.backend_event();
    assert!(
        !backend_wakes(&rig.t),
        "a dead tap must not keep waking the loop"
    );
    assert!(rig.t.counters().errors > errors_before);
    // Guest frames are dropped and counted; their chains still come back.
    rig.send(1, &tx_frame([0; 12], 60));
    rig.send(2, &tx_frame([0; 12], 60));
    assert_eq!(rig.tx_counts(), (1, 2));
    assert_eq!(rig.tx.used_idx(&rig.mem), 3);
    // More receive buffers retry the read once, and stop listening again.
    rig.rx
        .set_chain(&rig.mem, 1, &[(DATA + 0x9_0000, 2048, true)]);
    rig.rx.publish(&rig.mem, &[1]);
    Driver::new(&rig.t).notify(RX_QUEUE as u32);
    assert!(!backend_wakes(&rig.t));
    assert_eq!(rig.rx.used_idx(&rig.mem), 0, "nothing was received");
    assert_eq!(
        rig.t.status() & virtio_bindings::virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET,
        0,
        "a host fault is not the driver's doing: no reset needed"
    );
}
