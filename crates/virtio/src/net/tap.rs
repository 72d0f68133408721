//! A Linux tap interface as the network backend (see the kernel's
//! `Documentation/networking/tuntap.rst`).
//!
//! The tap is opened in the mode virtio-net needs so frames cross it
//! without translation: `IFF_TAP` (Ethernet frames), `IFF_NO_PI` (no
//! packet-info prefix) and `IFF_VNET_HDR` with a 12-byte header, which is
//! exactly `struct virtio_net_hdr_v1` (VERSION_1 is always negotiated). The
//! descriptor is non-blocking: the event thread must never wait on the host
//! network. Its MTU, when the guest is given one, is set like any
//! interface's (SIOCSIFMTU on a socket).

use std::error::Error;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO,
};

use super::NET_HDR_LEN;
use crate::net_backend::NetBackend;

/// The step name of [`Tap::set_mtu`] in a [`TapError`].
const SET_MTU: &str = "set the MTU";
/// The tun/tap control device.
const TUN_PATH: &str = "/dev/net/tun";
/// Interface names are at most 15 bytes plus the terminating NUL.
const IFNAMSIZ: usize = libc::IFNAMSIZ;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags as the
/// first member of the 24-byte union (40 bytes in all on 64-bit Linux).
/// Spelled out here so filling it needs no union access.
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// `struct ifreq` as SIOCSIFMTU reads it: the name, then `ifr_mtu` as the
/// first member of the same 24-byte union.
#[repr(C)]
struct IfReqMtu {
    name: [u8; IFNAMSIZ],
    mtu: libc::c_int,
    _union_rest: [u8; 20],
}

/// Why a tap could not be opened or configured; the message names the tap
/// and, for the usual mistakes, says what to do.
#[derive(Debug, thiserror::Error)]
#[error("tap {name}: {}", describe(self.step, &self.source))]
pub struct TapError {
    /// The interface name asked for.
    pub name: String,
    /// What was being done: "open /dev/net/tun", "attach", ...
    pub step: &'static str,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

/// A user-facing explanation of `error` during `step`.
fn describe(step: &str, error: &io::Error) -> String {
    let hint = match (step, error.raw_os_error()) {
        ("open /dev/net/tun", Some(libc::EPERM | libc::EACCES)) => {
            "/dev/net/tun: permission denied (check the device node's permissions)"
        }
        (SET_MTU, Some(libc::EPERM | libc::EACCES)) => {
            "setting the MTU: permission denied (needs CAP_NET_ADMIN)"
        }
        (_, Some(libc::EPERM | libc::EACCES)) => {
            "permission denied (needs CAP_NET_ADMIN, or a persistent tap owned by this user)"
        }
        ("open /dev/net/tun", Some(libc::ENOENT | libc::ENODEV)) => {
            "/dev/net/tun is missing (is the tun module loaded?)"
        }
        ("attach", Some(libc::EBUSY)) => "busy (already in use by another process)",
        ("attach", Some(libc::EINVAL)) => {
            "exists but is not a single-queue tap (a tun or multi-queue device?)"
        }
        _ => return format!("{step}: {error}"),
    };
    hint.to_owned()
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap called `name`, creating it if it does not exist
    /// and the process has CAP_NET_ADMIN. A created tap disappears when the
    /// descriptor is closed; a persistent one (`ip tuntap add`) stays.
    pub fn open(name: &str) -> Result<Self, TapError> {
        let fail = |step, source| TapError {
            name: name.to_owned(),
            step,
            source,
        };
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
            _union_rest: [0; 22],
        };
        if name.is_empty() || name.len() >= IFNAMSIZ || name.bytes().any(|b| b == 0 || b == b'/') {
            let reason = "at most 15 bytes, no NUL or '/'";
            return Err(fail("check name", io::Error::other(reason)));
        }
        for (slot, byte) in req.name.iter_mut().zip(name.bytes()) {
            *slot = byte;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|e| fail("open /dev/net/tun", e))?;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is an open tun descriptor owned by `file`; TUNSETIFF
        // reads and writes one `struct ifreq`, which `req` is (repr(C),
        // 40 bytes, exclusively borrowed for the call).
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETIFF, &mut req as *mut IfReq) };
        check(rc).map_err(|e| fail("attach", e))?;
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which
        // points at a live local.
        let rc = unsafe { libc::ioctl(fd, libc::TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) };
        check(rc).map_err(|e| fail("set the virtio-net header size", e))?;
        let mut tap = Self {
            file,
            // The kernel may have expanded a `%d` pattern in the name.
            name: kernel_name(&req.name).unwrap_or_else(|| name.to_owned()),
        };
        tap.set_offload_flags(0)
            .map_err(|e| fail("clear offloads", e))?;
        Ok(tap)
    }

    /// The interface name as the kernel knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the interface's MTU to `mtu` bytes, as `ip link set mtu` would
    /// (needs CAP_NET_ADMIN). The kernel takes 68 to 65535 for a tap.
    pub fn set_mtu(&self, mtu: u16) -> Result<(), TapError> {
        let fail = |source| TapError {
            name: self.name.clone(),
            step: SET_MTU,
            source,
        };
        let mut req = IfReqMtu {
            name: [0; IFNAMSIZ],
            mtu: libc::c_int::from(mtu),
            _union_rest: [0; 20],
        };
        // `name` came back from the kernel: under IFNAMSIZ bytes, no NUL.
        for (slot, byte) in req.name.iter_mut().zip(self.name.bytes()) {
            *slot = byte;
        }
        // Interface ioctls go through any socket (the tap descriptor does
        // not take them); a Unix one needs no address or protocol family.
        let socket = UnixDatagram::unbound().map_err(fail)?;
        // SAFETY: `socket` is an open socket we own; SIOCSIFMTU reads one
        // `struct ifreq`, which `req` is (repr(C), 40 bytes, exclusively
        // borrowed for the call).
        let rc = unsafe {
            libc::ioctl(
                socket.as_raw_fd(),
                libc::SIOCSIFMTU,
                &mut req as *mut IfReqMtu,
            )
        };
        check(rc).map_err(fail)
    }

    /// TUNSETOFFLOAD: which offloaded (partial checksum, GSO) frames the
    /// kernel may hand us.
    fn set_offload_flags(&mut self, flags: libc::c_uint) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; the descriptor
        // is an attached tap owned by `self.file`.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        check(rc)
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn kernel_name(raw: &[u8; IFNAMSIZ]) -> Option<String> {
    let end = raw.iter().position(|&b| b == 0)?;
    let name = std::str::from_utf8(raw.get(..end)?).ok()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// The tap offloads matching what the guest driver accepted: the kernel
/// may only hand over partially checksummed or GSO frames the guest can
/// take. TSO and UFO without checksum offload are meaningless (and the
/// kernel refuses them), so nothing is offloaded without GUEST_CSUM.
pub fn offload_flags(acked_features: u64) -> libc::c_uint {
    let has = |bit: u32| acked_features & (1 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    for (bit, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if has(bit) {
            flags |= flag;
        }
    }
    flags
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        // One writev: a tap takes each write as exactly one frame.
        self.file.write_vectored(&slices)
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn set_offloads(&mut self, acked_features: u64) -> io::Result<()> {
        self.set_offload_flags(offload_flags(acked_features))
    }

    fn set_mtu(&mut self, mtu: u16) -> Result<(), Box<dyn Error + Send + Sync>> {
        Ok(Tap::set_mtu(self, mtu)?)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A tap name no other test (or test run) uses.
    fn unique_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        format!("sietst{}{n}", std::process::id() % 10000)
    }

    #[test]
    fn offloads_follow_the_guest_features() {
        let f = |bits: &[u32]| bits.iter().fold(0u64, |acc, b| acc | 1 << b);
        assert_eq!(offload_flags(0), 0);
        assert_eq!(offload_flags(f(&[VIRTIO_NET_F_GUEST_TSO4])), 0);
        assert_eq!(
            offload_flags(f(&[VIRTIO_NET_F_GUEST_CSUM])),
            libc::TUN_F_CSUM
        );
        let all = f(&[
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
        ]);
        assert_eq!(
            offload_flags(all),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO
        );
    }

    #[test]
    fn bad_names_are_refused_before_any_syscall() {
        for name in ["", "sixteen-bytes-xx", "a/b", "nul\0"] {
            let error = Tap::open(name).expect_err(name);
            assert_eq!(error.step, "check name");
            assert!(error.to_string().starts_with(&format!("tap {name}: ")));
        }
    }

    #[test]
    fn errors_explain_the_usual_mistakes() {
        let error = TapError {
            name: "tap0".into(),
            step: "attach",
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(
            error.to_string().starts_with("tap tap0: permission denied"),
            "{error}"
        );
        let error = TapError {
            name: "tap0".into(),
            step: "attach",
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        assert!(
            error.to_string().starts_with("tap tap0: attach: "),
            "{error}"
        );
        // Only CAP_NET_ADMIN sets an MTU, whoever owns the tap.
        let error = TapError {
            name: "tap0".into(),
            step: SET_MTU,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(
            error.to_string(),
            "tap tap0: setting the MTU: permission denied (needs CAP_NET_ADMIN)"
        );
    }

    /// Needs CAP_NET_ADMIN (the test machine runs tests as root).
    #[test]
    fn creates_a_real_tap_that_only_one_process_may_hold() {
        let name = unique_name();
        let mut tap = Tap::open(&name).expect("create tap (needs CAP_NET_ADMIN)");
        assert_eq!(tap.name(), name);
        assert!(Path::new("/sys/class/net").join(&name).exists());
        // A single-queue tap has one reader: a second attach is refused.
        let error = Tap::open(&name).expect_err("second attach");
        assert_eq!(error.source.raw_os_error(), Some(libc::EBUSY));
        assert!(error.to_string().contains("busy"), "{error}");
        // Offloads the kernel accepts, including none at all.
        tap.set_offloads(u64::MAX).expect("all offloads");
        tap.set_offloads(0).expect("no offloads");
        // Nothing arrives on a fresh tap, and reading does not block.
        let mut buf = [0u8; 64];
        let error = tap.read_frame(&mut buf).expect_err("empty tap");
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        drop(tap);
        // Not persistent: the interface goes with the descriptor (the
        // kernel may finish unregistering it a little later).
        let sysfs = Path::new("/sys/class/net").join(&name);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while sysfs.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!sysfs.exists());
    }
}
