//! Local mode: a migration between two sie processes on one host (an
//! upgrade of sie itself) that hands guest RAM over instead of copying it.
//!
//! Guest RAM is memfds (`crate::shared_memory`). The sender agrees on the
//! protocol (the receiver must speak 2.1 or later, or it is refused before
//! anything moves), sends `LocalLayout` and passes the memfds with
//! `SCM_RIGHTS` on one byte right after it, then pauses the VM and sends
//! its state; the receiver maps the same memfds and builds the VM, paused,
//! and the two-phase switch-over follows as in a copy ([`super::send`]):
//! `Ready`, `Go`, `Done`. No page is read or written on the way, so the
//! pause does not grow with the guest's size.
//!
//! Once the state is out, the source's VMM thread serves nothing until
//! the send's [`SendEnd`] arrives: a device there must not write guest
//! RAM the receiver shares. A send that fails before `Go` left resumes
//! the guest here (the receiver never runs it); once `Go` left without a
//! `Done` back, the guest stays paused here for good, as in a copy: it
//! may run there, on this very memory.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use sie_hv::GuestMemory;

use super::progress::{self, SharedProgress};
use super::send::{self, Failure};
use super::wire::{self, LOCAL_MINOR, Message};
use super::{Conn, Endpoint, SendEnd, ToVmm, VmmLink};
use crate::snapshot::memory_file::RegionEntry;

/// The byte the memfds ride on.
const FDS_MARKER: u8 = b'M';

/// What the local sending thread needs.
pub struct LocalSender {
    /// The receiver (a Unix socket).
    pub destination: Endpoint,
    /// Guest RAM (its memfds are passed, its pages never read).
    pub memory: GuestMemory,
    /// Give up before the pause after this long.
    pub timeout: Duration,
    /// The VMM thread.
    pub link: VmmLink,
    /// Figures for `GET /migration`.
    pub progress: SharedProgress,
    /// Set by `PUT /migration/cancel`.
    pub cancel: Arc<AtomicBool>,
}

impl LocalSender {
    /// Runs the handover and tells the VMM thread how it ended: on the
    /// link before the pause, on the channel it waits on after it.
    pub fn run(self) {
        let started = Instant::now();
        let (end_tx, end_rx) = std::sync::mpsc::channel();
        let mut waiting = false;
        let result = self.converse(started, end_rx, &mut waiting);
        let end = send::ended(
            result,
            &self.destination,
            &self.progress,
            &self.cancel,
            started,
        );
        if waiting {
            let _ = end_tx.send(end);
        } else {
            self.link.send(ToVmm::SendFinished(end));
        }
    }

    /// The conversation; `waiting` is set once the VMM thread paused the
    /// guest and waits on `end`.
    fn converse(
        &self,
        started: Instant,
        end: std::sync::mpsc::Receiver<SendEnd>,
        waiting: &mut bool,
    ) -> Result<(), Failure> {
        let destination = &self.destination;
        let mut conn = destination
            .connect()
            .map_err(|e| format!("connecting to {destination}: {e}"))?;
        let conn = conn.as_mut();
        let result = self
            .hand_memory(conn, started)
            .map_err(Failure::BeforeGo)
            .and_then(|()| self.switchover(conn, end, waiting));
        if let Err(Failure::BeforeGo(why)) = &result {
            // Best effort: the receiver learns why instead of seeing EOF
            // (and never runs the VM: it has had no `Go`).
            let _ = wire::write_message(conn, &Message::Abort(why.clone()));
        }
        result
    }

    /// Pause, state, the receiver's `Ready`, `Go` (the commit), its `Done`.
    fn switchover(
        &self,
        conn: &mut dyn Conn,
        end: std::sync::mpsc::Receiver<SendEnd>,
        waiting: &mut bool,
    ) -> Result<(), Failure> {
        let destination = &self.destination;
        let paused_at = Instant::now();
        let mut clock = progress::SwitchoverClock::start();
        let state = self
            .link
            .ask(|reply| ToVmm::LocalSwitchover { reply, end })?;
        *waiting = true;
        clock.mark(|p| &mut p.pause_and_state_ms);
        let state_len = state.len() as u64;
        wire::write_message(conn, &Message::State(state))
            .map_err(|e| format!("sending to {destination}: {e}"))?;
        progress::update(&self.progress, |p| p.bytes += state_len);
        send::expect_ready(wire::read_message(conn))?;
        clock.mark(|p| &mut p.receiver_ms);
        // The commit: once this write succeeded the guest may run there,
        // on this very memory, and never resumes here.
        wire::write_message(conn, &Message::Go)
            .map_err(|e| format!("sending the go to {destination}: {e}"))?;
        send::expect_done(wire::read_message(conn), destination)?;
        clock.mark(|p| &mut p.commit_ms);
        let downtime_ms = paused_at.elapsed().as_millis() as u64;
        progress::update(&self.progress, |p| {
            p.downtime_ms = Some(downtime_ms);
            p.downtime_parts = Some(clock.parts());
        });
        Ok(())
    }

    /// Hello (refusing a receiver that has no local mode), the layout and
    /// the memfds, while the guest still runs.
    fn hand_memory(&self, conn: &mut dyn Conn, started: Instant) -> Result<(), String> {
        let destination = &self.destination;
        let io = |e: io::Error| format!("{destination}: {e}");
        let shared = crate::shared_memory::memfds(&self.memory)
            .ok_or("local migration: guest memory is not shared memory")?;
        wire::send_hello(conn).map_err(io)?;
        let minor = wire::expect_hello_minor(conn).map_err(|e| format!("{destination}: {e}"))?;
        if minor < LOCAL_MINOR {
            return Err(format!(
                "{destination} speaks migration protocol {}.{minor}, which has no local mode (upgrade it to {}.{LOCAL_MINOR} or later, or send without local)",
                wire::PROTOCOL_MAJOR,
                wire::PROTOCOL_MAJOR
            ));
        }
        let layout: Vec<RegionEntry> = shared.iter().map(|(entry, _)| *entry).collect();
        let layout_message = Message::LocalLayout(layout);
        wire::write_message(conn, &layout_message).map_err(io)?;
        let stream = conn
            .unix()
            .ok_or("local migration needs a Unix socket to pass guest memory")?;
        let fds: Vec<RawFd> = shared.iter().map(|(_, file)| file.as_raw_fd()).collect();
        send_fds(stream, &fds)
            .map_err(|e| format!("passing guest memory to {destination}: {e}"))?;
        // The receiver makes its VM on this memory while the guest runs
        // here; pausing before it said so would add that to the downtime.
        if minor >= wire::PREPARED_MINOR {
            match wire::read_message(conn) {
                Ok(Message::Prepared) => {}
                Ok(Message::Abort(reason)) => {
                    return Err(format!("{destination} refused the migration: {reason}"));
                }
                Ok(other) => {
                    return Err(format!(
                        "{destination}: unexpected {} message (expected prepared)",
                        other.name()
                    ));
                }
                Err(e) => return Err(format!("{destination}: {e}")),
            }
        }
        // The layout's frame (13-byte header, 16 bytes a region) and the
        // descriptors' byte: all that goes out for guest RAM.
        progress::update(&self.progress, |p| {
            p.bytes += 13 + 16 * fds.len() as u64 + 1
        });
        if self.cancel.load(std::sync::atomic::Ordering::Acquire) {
            return Err("migration cancelled".into());
        }
        if started.elapsed() > self.timeout {
            return Err(format!(
                "migration timed out after {} s before the switch-over",
                self.timeout.as_secs()
            ));
        }
        Ok(())
    }
}

/// The receiving side of a `LocalLayout`: takes the memfds that follow it
/// and maps them as guest RAM.
pub fn take_memory(conn: &mut dyn Conn, layout: &[RegionEntry]) -> Result<GuestMemory, String> {
    let stream = conn
        .unix()
        .ok_or("local migration arrived over TCP; it needs a Unix socket")?;
    let files = recv_fds(stream, layout.len())
        .map_err(|e| format!("taking guest memory from the source: {e}"))?;
    crate::shared_memory::map(layout, files).map_err(|e| format!("local migration: {e}"))
}

/// Sends `fds` as `SCM_RIGHTS` on one marker byte.
pub fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let mut byte = [FDS_MARKER];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    // u64 words keep the control buffer aligned for cmsghdr.
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: msg_control points at `space` bytes, enough for one header
    // with `fd_bytes` of data (CMSG_SPACE), so the first header and its
    // data lie inside `control`.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&msg);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as usize;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(header).cast(), fds.len());
    }
    // SAFETY: `msg` points at `iov`, `byte` and `control`, all alive for
    // the call; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    match sent {
        1 => Ok(()),
        -1 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::other("the descriptors' byte was not sent")),
    }
}

/// Receives exactly `count` descriptors sent by [`send_fds`], refusing a
/// message with another byte, another count or anything but `SCM_RIGHTS`.
pub fn recv_fds(stream: &UnixStream, count: usize) -> io::Result<Vec<File>> {
    let mut byte = [0u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // Room for one more than expected, so an extra one is seen (and
    // closed) rather than cut off silently.
    let fd_bytes = (count + 1) * std::mem::size_of::<RawFd>();
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is valid; the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space;
    // SAFETY: the kernel writes at most one byte into `byte` and at most
    // `space` bytes into `control`, both alive for the call.
    let got = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut files = Vec::new();
    let mut stray = false;
    // SAFETY: the headers walked are those the kernel wrote into
    // `control` (msg_controllen now says how much); each SCM_RIGHTS
    // header's data is whole descriptors, now ours, each wrapped in a
    // File exactly once so every one is closed.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&msg);
        while !header.is_null() {
            let data_len = ((*header).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<RawFd>();
                for index in 0..data_len / std::mem::size_of::<RawFd>() {
                    files.push(File::from_raw_fd(data.add(index).read_unaligned()));
                }
            } else {
                stray = true;
            }
            header = libc::CMSG_NXTHDR(&msg, header);
        }
    }
    if got != 1 || byte[0] != FDS_MARKER {
        return Err(io::Error::other(
            "expected guest memory descriptors after the local layout",
        ));
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || stray || files.len() != count {
        return Err(io::Error::other(format!(
            "expected {count} guest memory descriptors, the source passed {}",
            files.len()
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    fn memfd(len: u64) -> File {
        // SAFETY: a literal name; a new descriptor or -1.
        let fd = unsafe { libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: just created, owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }

    #[test]
    fn descriptors_cross_a_socket_and_a_wrong_count_is_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (one, two) = (memfd(4096), memfd(8192));
        send_fds(&a, &[one.as_raw_fd(), two.as_raw_fd()]).unwrap();
        let files = recv_fds(&b, 2).unwrap();
        let sizes: Vec<u64> = files.iter().map(|f| f.metadata().unwrap().len()).collect();
        assert_eq!(sizes, [4096, 8192]);

        send_fds(&a, &[one.as_raw_fd(), two.as_raw_fd()]).unwrap();
        let error = recv_fds(&b, 1).unwrap_err().to_string();
        assert_eq!(
            error,
            "expected 1 guest memory descriptors, the source passed 2"
        );
    }

    #[test]
    fn a_plain_byte_instead_of_descriptors_is_refused() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(b"M").unwrap();
        let error = recv_fds(&b, 1).unwrap_err().to_string();
        assert!(error.contains("the source passed 0"), "{error}");
        a.write_all(b"x").unwrap();
        let error = recv_fds(&b, 0).unwrap_err().to_string();
        assert!(
            error.contains("expected guest memory descriptors"),
            "{error}"
        );
        drop(a);
        let mut rest = Vec::new();
        let mut b = b;
        b.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }
}
