//! userfaultfd(2): anonymous guest RAM whose missing pages a handler fills
//! (`UFFDIO_COPY`, `UFFDIO_ZEROPAGE`), so a restore need not read the
//! memory file before the guest runs.
//!
//! The kernel interface is small and stable (linux/userfaultfd.h); it is
//! spoken here directly through vmm-sys-util's ioctl helpers because the
//! `userfaultfd` crate generates its bindings with bindgen at build time,
//! which would make libclang a build dependency of sie.
//!
//! The descriptor is made without `UFFD_USER_MODE_ONLY`: KVM touches guest
//! RAM from the kernel, and those faults must reach the handler too. Whoever
//! may open `/dev/userfaultfd` (Linux 6.1; the jailer gives it to the jailed
//! user) gets one from it; otherwise the system call gives one to root, or
//! to anyone with `vm.unprivileged_userfaultfd = 1`.
//!
//! [`handoff`] speaks Firecracker's `Uffd` backend protocol: one message on
//! a Unix socket with the JSON region list and the descriptor.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sie_hv::GuestMemory;
use sie_seccomp::{Seccomp, ThreadKind};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iowr_nr};

/// The page size the handlers serve.
pub const PAGE: usize = 4096;

const UFFD_API: u64 = 0xAA;
const UFFDIO: u32 = 0xAA;
const REGISTER_MODE_MISSING: u64 = 1;
/// Tell the handler when guest RAM is discarded (`madvise`), so it serves
/// zeros afterwards instead of the file's old contents.
pub const FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// Tell the handler when guest RAM is unmapped, so it knows when to stop.
pub const FEATURE_EVENT_UNMAP: u64 = 1 << 6;
/// Say which thread faulted (a vCPU, or sie's own VMM thread).
pub const FEATURE_THREAD_ID: u64 = 1 << 8;
const EVENT_PAGEFAULT: u8 = 0x12;
const EVENT_REMOVE: u8 = 0x15;
const EVENT_UNMAP: u8 = 0x16;

#[repr(C)]
#[derive(Default)]
struct ApiArg {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct Range {
    start: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct RegisterArg {
    range: Range,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct CopyArg {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct ZeroPageArg {
    range: Range,
    mode: u64,
    zeropage: i64,
}

/// `struct uffd_msg`: an event byte, padding, then 24 bytes whose meaning
/// the event gives (a fault's flags and address; a range's start and end).
#[repr(C)]
#[derive(Default)]
struct Message {
    event: u8,
    _reserved1: u8,
    _reserved2: u16,
    _reserved3: u32,
    arg: [u64; 3],
}

ioctl_io_nr!(USERFAULTFD_IOC_NEW, UFFDIO, 0x00);
ioctl_iowr_nr!(UFFDIO_API, UFFDIO, 0x3f, ApiArg);
ioctl_iowr_nr!(UFFDIO_REGISTER, UFFDIO, 0x00, RegisterArg);
ioctl_ior_nr!(UFFDIO_WAKE, UFFDIO, 0x02, Range);
ioctl_iowr_nr!(UFFDIO_COPY, UFFDIO, 0x03, CopyArg);
ioctl_iowr_nr!(UFFDIO_ZEROPAGE, UFFDIO, 0x04, ZeroPageArg);

/// What the kernel reports on a userfaultfd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A thread (or KVM on a vCPU thread's behalf) touched a missing page:
    /// its host address, and the thread's id when [`FEATURE_THREAD_ID`]
    /// was asked for (else 0).
    PageFault(u64, u32),
    /// `[start, end)` was discarded; it reads as zeros from now on.
    Remove(u64, u64),
    /// `[start, end)` was unmapped.
    Unmap(u64, u64),
    /// An event sie did not ask for.
    Other(u8),
}

/// A userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

fn check(rc: i32) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// A new non-blocking userfaultfd with the `features` (`FEATURE_*`)
    /// events enabled.
    pub fn new(features: u64) -> io::Result<Self> {
        let fd = Self::from_device().or_else(|device| {
            Self::from_syscall().map_err(|syscall| {
                io::Error::new(
                    syscall.kind(),
                    format!(
                        "{syscall} (/dev/userfaultfd: {device}; faults from KVM need root, \
                         vm.unprivileged_userfaultfd = 1, or access to /dev/userfaultfd)"
                    ),
                )
            })
        })?;
        let mut api = ApiArg {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes exactly one `ApiArg`.
        check(unsafe { ioctl_with_mut_ref(&fd, UFFDIO_API(), &mut api) })?;
        Ok(Self { fd })
    }

    fn from_device() -> io::Result<OwnedFd> {
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/userfaultfd")?;
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as libc::c_ulong;
        // SAFETY: USERFAULTFD_IOC_NEW takes the flags by value and returns a
        // new descriptor or -1.
        let fd = unsafe { ioctl_with_val(&device, USERFAULTFD_IOC_NEW(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn from_syscall() -> io::Result<OwnedFd> {
        // SAFETY: the system call takes only flags and returns a new
        // descriptor or -1.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    /// A userfaultfd received from elsewhere (a page-fault handler gets
    /// sie's over its socket).
    pub fn from_fd(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Sends faults on missing pages of `[addr, addr + len)` here.
    pub fn register(&self, addr: u64, len: u64) -> io::Result<()> {
        let mut register = RegisterArg {
            range: Range { start: addr, len },
            mode: REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes exactly one `RegisterArg`;
        // the kernel checks the range is mapped.
        check(unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_REGISTER(), &mut register) })
    }

    /// Fills the missing pages at `dst` with `bytes` (whole pages) and wakes
    /// the threads waiting on them. Pages already there are left alone.
    pub fn copy(&self, dst: u64, bytes: &[u8]) -> io::Result<()> {
        let mut copy = CopyArg {
            dst,
            src: bytes.as_ptr() as u64,
            len: bytes.len() as u64,
            mode: 0,
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads `len` bytes from `src`, which `bytes`
        // keeps alive, into a registered range; the kernel checks `dst`.
        let rc = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_COPY(), &mut copy) };
        self.settled(rc, dst, bytes.len() as u64)
    }

    /// Fills the missing pages of `[dst, dst + len)` with zeros and wakes
    /// the threads waiting on them.
    pub fn zero(&self, dst: u64, len: u64) -> io::Result<()> {
        let mut zero = ZeroPageArg {
            range: Range { start: dst, len },
            mode: 0,
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes exactly one `ZeroPageArg`.
        let rc = unsafe { ioctl_with_mut_ref(&self.fd, UFFDIO_ZEROPAGE(), &mut zero) };
        self.settled(rc, dst, len)
    }

    /// A page someone else filled first (EEXIST), or a range being unmapped
    /// (EAGAIN, ENOENT) is not an error; whoever waits is woken all the same.
    fn settled(&self, rc: i32, dst: u64, len: u64) -> io::Result<()> {
        if rc >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EEXIST | libc::EAGAIN | libc::ENOENT) => {
                let range = Range { start: dst, len };
                // SAFETY: UFFDIO_WAKE reads exactly one `Range`.
                let _ = unsafe { ioctl_with_ref(&self.fd, UFFDIO_WAKE(), &range) };
                Ok(())
            }
            _ => Err(error),
        }
    }

    /// The next event, or `None` when there is none yet.
    pub fn read_event(&self) -> io::Result<Option<Event>> {
        let mut message = Message::default();
        let size = std::mem::size_of::<Message>();
        // SAFETY: reads at most `size` bytes into `message`, a plain struct.
        let got = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut message as *mut Message).cast(),
                size,
            )
        };
        if got < 0 {
            let error = io::Error::last_os_error();
            return match error.raw_os_error() {
                Some(libc::EAGAIN | libc::EINTR) => Ok(None),
                _ => Err(error),
            };
        }
        if got as usize != size {
            return Err(io::Error::other(format!(
                "a userfaultfd message of {got} bytes"
            )));
        }
        Ok(Some(match message.event {
            EVENT_PAGEFAULT => Event::PageFault(message.arg[1], message.arg[2] as u32),
            EVENT_REMOVE => Event::Remove(message.arg[0], message.arg[1]),
            EVENT_UNMAP => Event::Unmap(message.arg[0], message.arg[1]),
            other => Event::Other(other),
        }))
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Registers every region of `memory` with a new userfaultfd.
/// Starts the `sie_uffd` thread that runs `serve` under the uffd seccomp
/// filter, and returns once the filter is on (or with why it could not be).
pub fn spawn_fault_thread(
    seccomp: &Seccomp,
    serve: impl FnOnce() + Send + 'static,
) -> io::Result<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let seccomp = seccomp.clone();
    std::thread::Builder::new()
        .name("sie_uffd".into())
        .spawn(move || {
            let installed = seccomp.install(ThreadKind::Uffd);
            let ok = installed.is_ok();
            let _ = ready_tx.send(installed.map_err(|e| e.to_string()));
            if ok {
                serve();
            }
        })?;
    ready_rx
        .recv()
        .map_err(io::Error::other)?
        .map_err(io::Error::other)
}

pub fn register_all(memory: &GuestMemory, features: u64) -> io::Result<Uffd> {
    let uffd = Uffd::new(features)?;
    for region in memory.iter() {
        uffd.register(region.as_ptr() as u64, region.len())?;
    }
    Ok(uffd)
}

/// Keeps sie's end of a handed-off userfaultfd open for the life of the
/// process (one restore per process, as in Firecracker): closed, a dead
/// handler's guest would read zeros instead of waiting.
pub fn keep(uffd: Uffd) {
    static KEPT: std::sync::Mutex<Vec<Uffd>> = std::sync::Mutex::new(Vec::new());
    KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(uffd);
}

/// One guest RAM region as Firecracker describes it to a page-fault
/// handler (`GuestRegionUffdMapping`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UffdRegion {
    /// Where the region is mapped in sie (fault addresses are in these).
    pub base_host_virt_addr: u64,
    /// Its length in bytes.
    pub size: usize,
    /// Where its contents start in the memory file.
    pub offset: u64,
    /// Its page size in bytes.
    pub page_size: usize,
    /// The same page size in bytes: Firecracker's deprecated name.
    pub page_size_kib: usize,
}

/// The region list of `memory` (file offset = guest-physical address).
pub fn regions_of(memory: &GuestMemory) -> Vec<UffdRegion> {
    memory
        .iter()
        .map(|region| UffdRegion {
            base_host_virt_addr: region.as_ptr() as u64,
            size: region.len() as usize,
            offset: region.start_addr().0,
            page_size: PAGE,
            page_size_kib: PAGE,
        })
        .collect()
}

/// Hands `uffd` and `memory`'s region list to the page-fault handler
/// listening on `socket` (Firecracker's protocol: one message, nothing
/// else, ever).
pub fn handoff(socket: &Path, memory: &GuestMemory, uffd: &Uffd) -> io::Result<()> {
    let stream = UnixStream::connect(socket)?;
    let json = serde_json::to_vec(&regions_of(memory)).map_err(io::Error::other)?;
    let sent = stream
        .send_with_fd(json.as_slice(), uffd.as_raw_fd())
        .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
    if sent != json.len() {
        return Err(io::Error::other(format!(
            "sent {sent} of {} bytes",
            json.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn missing_pages_fault_into_the_handler() {
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), 4 * PAGE)]).unwrap();
        let uffd = register_all(&memory, FEATURE_EVENT_REMOVE).unwrap();
        let base = memory.iter().next().unwrap().as_ptr() as u64;
        let handler = std::thread::spawn(move || {
            let mut served = Vec::new();
            while served.len() < 2 {
                match uffd.read_event().unwrap() {
                    Some(Event::PageFault(address, _)) => {
                        let page = address & !(PAGE as u64 - 1);
                        if page == base {
                            uffd.copy(page, &[7u8; PAGE]).unwrap();
                        } else {
                            uffd.zero(page, PAGE as u64).unwrap();
                        }
                        served.push(page - base);
                    }
                    Some(other) => panic!("{other:?}"),
                    None => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
            served
        });
        assert_eq!(memory.read_obj::<u8>(GuestAddress(10)).unwrap(), 7);
        assert_eq!(
            memory
                .read_obj::<u64>(GuestAddress(2 * PAGE as u64))
                .unwrap(),
            0
        );
        assert_eq!(handler.join().unwrap(), vec![0, 2 * PAGE as u64]);
    }

    #[test]
    fn the_device_and_the_system_call_both_give_a_userfaultfd() {
        // Root on this machine may use either; each must speak the API.
        if std::path::Path::new("/dev/userfaultfd").exists() {
            let fd = Uffd::from_device().unwrap();
            assert!(fd.as_raw_fd() >= 0);
        }
        let fd = Uffd::from_syscall().unwrap();
        assert!(fd.as_raw_fd() >= 0);
        Uffd::new(FEATURE_THREAD_ID).unwrap();
    }

    #[test]
    fn no_handler_listening_is_an_error_not_a_hang() {
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0), PAGE)]).unwrap();
        let uffd = register_all(&memory, 0).unwrap();
        let error = handoff(Path::new("/nonexistent/uffd.sock"), &memory, &uffd).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        // A socket file whose handler is gone refuses the connection.
        let path = std::env::temp_dir().join(format!("sie-uffd-gone-{}", std::process::id()));
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let error = handoff(&path, &memory, &uffd).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn the_region_list_has_firecrackers_field_names() {
        let memory = GuestMemory::from_ranges(&[(GuestAddress(0x1000), PAGE)]).unwrap();
        let json = serde_json::to_value(regions_of(&memory)).unwrap();
        let region = &json[0];
        for field in [
            "base_host_virt_addr",
            "size",
            "offset",
            "page_size",
            "page_size_kib",
        ] {
            assert!(region.get(field).is_some(), "{field}");
        }
        assert_eq!(region["offset"], 0x1000);
        assert_eq!(region["page_size_kib"], 4096);
    }
}
