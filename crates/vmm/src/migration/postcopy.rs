//! The receiving end of a post-copy migration: guest RAM starts empty and
//! registered with a userfaultfd; a `sie_uffd` thread turns each fault
//! into a `Request` to the sender, and the receiving thread installs the
//! pages that arrive (`UFFDIO_COPY`), requested or pushed, which wakes the
//! faulting thread.
//!
//! Once the sender said `Complete`, every page that held data is here: a
//! fault from then on is a page the sender never had (zeros), filled
//! locally. The flag and the requests share one lock with the stream's
//! writer, so a request is either on the wire before the final `Done` (and
//! answered: the sender reads until `Done`) or not sent at all.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use sie_hv::GuestMemory;
use sie_seccomp::Seccomp;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::wire::{self, Message, PageRun};
use crate::snapshot::uffd::{self, Event, PAGE, Uffd};

/// The stream's writing half, shared by the fault thread (requests) and
/// the receiving thread (`Ready`, `Done`).
pub struct Outgoing {
    out: File,
    /// The sender said `Complete`: no page is asked for any more.
    complete: bool,
}

impl Outgoing {
    /// Sends one message.
    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        wire::write_message(&mut self.out, message)?;
        self.out.flush()
    }
}

/// What the receiving thread needs once the VM is built on post-copy RAM.
#[derive(Clone)]
pub struct FaultLink {
    /// Guest RAM's userfaultfd (pages are installed through it).
    pub uffd: Arc<Uffd>,
    /// The stream's writer.
    pub out: Arc<Mutex<Outgoing>>,
    memory: GuestMemory,
}

impl FaultLink {
    /// Installs `runs` into guest RAM; a page already there (asked for
    /// and pushed) is left as it is.
    pub fn install(&self, runs: &[PageRun]) -> Result<(), String> {
        for run in runs {
            let host =
                host_of(&self.memory, run.guest_addr, run.bytes.len() as u64).ok_or_else(|| {
                    format!(
                        "{} bytes at {:#x} are outside guest RAM",
                        run.bytes.len(),
                        run.guest_addr
                    )
                })?;
            self.uffd
                .copy(host, &run.bytes)
                .map_err(|e| format!("installing guest page {:#x}: {e}", run.guest_addr))?;
        }
        Ok(())
    }

    /// The sender pushed everything: later faults are filled with zeros
    /// here, and `Done` goes out after any request already sent.
    pub fn complete(&self) -> io::Result<()> {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.complete = true;
        out.send(&Message::Done)
    }

    /// Sends `message` in turn with the fault thread's requests.
    pub fn send(&self, message: &Message) -> io::Result<()> {
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(message)
    }
}

/// The host address of `len` bytes of guest RAM at `guest_addr`, if they
/// lie in one region.
pub(super) fn host_of(memory: &GuestMemory, guest_addr: u64, len: u64) -> Option<u64> {
    memory.iter().find_map(|region| {
        let start = region.start_addr().0;
        let offset = guest_addr.checked_sub(start)?;
        (offset.checked_add(len)? <= region.len()).then(|| region.as_ptr() as u64 + offset)
    })
}

fn guest_of(memory: &GuestMemory, host: u64) -> Option<GuestAddress> {
    memory.iter().find_map(|region| {
        let base = region.as_ptr() as u64;
        (host >= base && host < base + region.len())
            .then(|| GuestAddress(region.start_addr().0 + (host - base)))
    })
}

/// Registers `memory` (empty) with a userfaultfd and starts the thread
/// that asks `stream` (the migration's socket, duplicated here) for each
/// missing page. Runs on the VMM thread before its own filter goes on
/// (it creates a descriptor and a thread).
pub fn start(memory: &GuestMemory, stream: RawFd, seccomp: &Seccomp) -> io::Result<FaultLink> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the receiving thread keeps
    // open for the call; the kernel returns a new one or -1.
    let fd = unsafe { libc::fcntl(stream, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    let out = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let uffd = Arc::new(uffd::register_all(memory, 0)?);
    let link = FaultLink {
        uffd: uffd.clone(),
        out: Arc::new(Mutex::new(Outgoing {
            out,
            complete: false,
        })),
        memory: memory.clone(),
    };
    let faults = link.clone();
    uffd::spawn_fault_thread(seccomp, move || serve_faults(&faults))?;
    Ok(link)
}

/// Until guest RAM goes away (or the stream does): each fault becomes a
/// request, or, after `Complete`, a zero page.
fn serve_faults(link: &FaultLink) {
    let fd = link.uffd.as_raw_fd();
    loop {
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, -1) };
        let event = match link.uffd.read_event() {
            Ok(Some(event)) => event,
            Ok(None) => continue,
            Err(_) => return,
        };
        let Event::PageFault(host, _) = event else {
            continue;
        };
        let page = host & !(PAGE as u64 - 1);
        let Some(guest) = guest_of(&link.memory, page) else {
            return;
        };
        let mut out = link.out.lock().unwrap_or_else(|e| e.into_inner());
        let served = if out.complete {
            link.uffd.zero(page, PAGE as u64)
        } else {
            out.send(&Message::Request(guest.0))
        };
        if served.is_err() {
            // The stream is gone: the faulting thread waits for ever, and
            // the receiving thread ends sie with the reason.
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::memory_file::RegionEntry;
    use std::os::unix::net::UnixStream;
    use vm_memory::Bytes;

    #[test]
    fn a_fault_becomes_a_request_and_the_page_that_comes_wakes_it() {
        let layout = [RegionEntry {
            guest_addr: 0,
            len: 16 * PAGE as u64,
        }];
        let memory = crate::snapshot::lazy::anonymous(&layout).unwrap();
        let (ours, mut sender) = UnixStream::pair().unwrap();
        let link = start(&memory, ours.as_raw_fd(), &Seccomp::disabled()).unwrap();
        // A vCPU (or the VMM thread restoring a device) touches page 5.
        let toucher = {
            let memory = memory.clone();
            std::thread::spawn(move || memory.read_obj::<u64>(GuestAddress(5 * 4096 + 8)))
        };
        assert_eq!(
            wire::read_message(&mut sender).unwrap(),
            Message::Request(5 * 4096)
        );
        let mut page = vec![0u8; PAGE];
        page[8..16].copy_from_slice(&0x5eed_u64.to_le_bytes());
        link.install(&[PageRun {
            guest_addr: 5 * 4096,
            bytes: page.clone(),
        }])
        .unwrap();
        assert_eq!(toucher.join().unwrap().unwrap(), 0x5eed);
        // Pushed again (it was asked for and pushed): left as it is.
        link.install(&[PageRun {
            guest_addr: 5 * 4096,
            bytes: vec![0xff; PAGE],
        }])
        .unwrap();
        assert_eq!(
            memory.read_obj::<u64>(GuestAddress(5 * 4096 + 8)).unwrap(),
            0x5eed
        );
        // Outside guest RAM: refused.
        assert!(
            link.install(&[PageRun {
                guest_addr: 16 * 4096,
                bytes: page,
            }])
            .is_err()
        );
        // After `Complete`, a fault is filled with zeros here, and `Done`
        // is the last word.
        link.complete().unwrap();
        assert_eq!(wire::read_message(&mut sender).unwrap(), Message::Done);
        assert_eq!(memory.read_obj::<u64>(GuestAddress(9 * 4096)).unwrap(), 0);
    }
}
