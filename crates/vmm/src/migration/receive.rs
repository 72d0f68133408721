//! The receiving end: accept one sender, check its protocol version before
//! anything else, take guest RAM's layout and map fresh memory for it,
//! write every page that arrives, and on the state hand the VM to the VMM
//! thread to build, paused; answer `Ready`, and run it only on the
//! sender's `Go` (then answer `Done`). Without a `Go` the VM never runs
//! here and sie ends with one line. In local mode ([`super::local`])
//! guest RAM is the source's memfds, mapped here, and no page arrives.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::postcopy::FaultLink;
use super::progress::{self, MigrationState, SharedProgress};
use super::wire::{self, Message, PREPARED_MINOR, PROTOCOL_MAJOR};
use super::{Conn, Listener, ToVmm, VmmLink, readable};
use crate::snapshot::lazy;

/// Everything the receiving thread needs.
pub struct Receiver {
    /// Already listening (so `PUT /migration/receive` answered 204).
    pub listener: Listener,
    /// The VMM thread.
    pub link: VmmLink,
    /// Figures for `GET /migration`.
    pub progress: SharedProgress,
}

impl Receiver {
    /// Gives up before accepting anyone: sie ends with `why`.
    pub fn fail(self, why: String) {
        progress::update(&self.progress, |p| {
            p.state = MigrationState::Failed;
            p.error = Some(why.clone());
        });
        self.link.send(ToVmm::ReceiveFailed(why));
    }

    /// Takes in one VM; on failure the VMM thread ends sie with the reason.
    pub fn run(self) {
        let started = std::time::Instant::now();
        let result = self
            .listener
            .accept()
            .map_err(|e| format!("accepting a migration: {e}"))
            .and_then(|mut conn| {
                let result = self.converse(conn.as_mut());
                if let Err(error) = &result {
                    let _ = wire::write_message(conn.as_mut(), &Message::Abort(error.clone()));
                }
                result
            });
        let total_ms = started.elapsed().as_millis() as u64;
        progress::update(&self.progress, |p| {
            p.total_ms = Some(total_ms);
            match &result {
                Ok(()) => p.state = MigrationState::Completed,
                Err(error) => {
                    p.state = MigrationState::Failed;
                    p.error = Some(error.clone());
                }
            }
        });
        if let Err(error) = result {
            self.link.send(ToVmm::ReceiveFailed(error));
        }
    }

    fn converse(&self, conn: &mut dyn Conn) -> Result<(), String> {
        let refused = |e: wire::WireError| match e {
            wire::WireError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the source closed the stream mid-transfer".to_string()
            }
            other => other.to_string(),
        };
        // The sender's version is checked before this side says anything,
        // so a mismatch is refused before any memory moves.
        let sender_minor = match wire::read_message(conn).map_err(refused)? {
            Message::Hello(PROTOCOL_MAJOR, minor) => minor,
            Message::Hello(major, minor) => {
                return Err(refused(wire::WireError::Version {
                    found: format!("{major}.{minor}"),
                }));
            }
            other => {
                return Err(refused(wire::WireError::Unexpected {
                    found: other.name(),
                    expected: "hello",
                }));
            }
        };
        wire::send_hello(conn).map_err(|e| format!("migration stream: {e}"))?;
        let (layout, local) = match wire::read_message(conn).map_err(refused)? {
            Message::Layout(layout) => (layout, false),
            Message::LocalLayout(layout) => (layout, true),
            Message::Abort(reason) => return Err(format!("the source aborted: {reason}")),
            other => return Err(unexpected(other.name(), "layout")),
        };
        let memory = if local {
            super::local::take_memory(conn, &layout)?
        } else {
            lazy::anonymous(&layout)
                .map_err(|e| format!("mapping {} bytes of guest RAM: {e}", total(&layout)))?
        };
        // The VMM thread makes the VM and maps this RAM: a copy goes on
        // meanwhile (`Arrived`, later on the same channel, is served after
        // it); a local sender that knows `Prepared` pauses only after it.
        let (reply, made) = std::sync::mpsc::channel();
        self.link.send(ToVmm::Premake {
            memory: memory.clone(),
            reply,
        });
        if local && sender_minor >= PREPARED_MINOR {
            made.recv()
                .unwrap_or_else(|_| Err("the VMM stopped".to_string()))?;
            wire::write_message(conn, &Message::Prepared)
                .map_err(|e| format!("telling the source the VM is made: {e}"))?;
        }
        let mut postcopy = false;
        // Pages go from the stream's buffer straight into guest RAM.
        let mut frames = wire::FrameReader::default();
        loop {
            let message = match frames.read(conn).map_err(refused)? {
                // Local mode's RAM is the source's own: nothing is copied,
                // before the state or after it.
                wire::Frame::Pages(_) if local => return Err(unexpected("pages", "state")),
                wire::Frame::Pages(_) if postcopy => {
                    return Err(unexpected("pages", "discard or state"));
                }
                wire::Frame::Pages(runs) => {
                    self.write_pages(&memory, runs)?;
                    continue;
                }
                wire::Frame::Other(message) => message,
            };
            match message {
                found @ Message::Postcopy if local => {
                    return Err(unexpected(found.name(), "state"));
                }
                Message::Postcopy if !postcopy => postcopy = true,
                Message::Discard(runs) if postcopy => discard(&memory, &runs)?,
                Message::State(bytes) => {
                    let snapshot =
                        crate::snapshot::decode_snapshot(Path::new("(migration stream)"), &bytes)
                            .map_err(|e| crate::error::error_chain(&e))?;
                    if snapshot.memory != layout {
                        return Err("the state's RAM layout differs from the pages sent".into());
                    }
                    if !postcopy {
                        self.link.ask(|reply| ToVmm::Arrived {
                            snapshot: Box::new(snapshot),
                            memory,
                            reply,
                        })?;
                        return self.switch_over(conn, None);
                    }
                    let stream = conn.as_raw_fd();
                    let faults = self.link.ask(|reply| ToVmm::StartFaults {
                        memory: memory.clone(),
                        stream,
                        reply,
                    })?;
                    self.build_serving(conn, &faults, snapshot, memory)?;
                    return self.switch_over(conn, Some(&faults));
                }
                Message::Abort(reason) => return Err(format!("the source aborted: {reason}")),
                other => return Err(unexpected(other.name(), "pages or state")),
            }
        }
    }

    /// Post-copy: the VMM thread builds the VM while pages it faults on
    /// (restoring a device may read guest memory) are asked for and
    /// installed here.
    fn build_serving(
        &self,
        conn: &mut dyn Conn,
        faults: &FaultLink,
        snapshot: crate::snapshot::Snapshot,
        memory: sie_hv::GuestMemory,
    ) -> Result<(), String> {
        let (reply, built) = std::sync::mpsc::channel();
        self.link.send(ToVmm::Arrived {
            snapshot: Box::new(snapshot),
            memory,
            reply,
        });
        loop {
            match built.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("the VMM stopped".into());
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            if !readable(conn) {
                continue;
            }
            match wire::read_message(conn) {
                Ok(Message::Pages(runs)) => self.install(Some(faults), &runs)?,
                Ok(Message::Abort(reason)) => return Err(format!("the source aborted: {reason}")),
                Ok(other) => return Err(unexpected(other.name(), "pages")),
                Err(error) => {
                    return Err(format!(
                        "no go from the source (the VM never ran here): {}",
                        closed(error)
                    ));
                }
            }
        }
    }

    /// Pre-copy pages into guest RAM (the VM does not run here yet).
    fn write_pages(
        &self,
        memory: &sie_hv::GuestMemory,
        runs: wire::PageRuns<'_>,
    ) -> Result<(), String> {
        let mut total = 0;
        for (guest_addr, bytes) in runs.iter() {
            memory
                .write_slice(bytes, GuestAddress(guest_addr))
                .map_err(|_| {
                    format!(
                        "{} bytes at {guest_addr:#x} are outside guest RAM",
                        bytes.len()
                    )
                })?;
            total += bytes.len() as u64;
        }
        self.count(total);
        Ok(())
    }

    fn count(&self, bytes: u64) {
        progress::update(&self.progress, |p| {
            p.bytes += bytes;
            p.pages += bytes / 4096;
        });
    }
}

impl Receiver {
    /// The VM is built, paused: `Ready`, then it runs only on the
    /// sender's `Go` (anything else ends sie without it ever running).
    /// Post-copy, pages asked for meanwhile are installed as they come.
    fn switch_over(&self, conn: &mut dyn Conn, faults: Option<&FaultLink>) -> Result<(), String> {
        let ready = match faults {
            Some(faults) => faults.send(&Message::Ready),
            None => wire::write_message(conn, &Message::Ready),
        };
        ready.map_err(|e| format!("telling the source the VM is ready: {e}"))?;
        loop {
            match wire::read_message(conn) {
                Ok(Message::Go) => break,
                Ok(Message::Pages(runs)) if faults.is_some() => self.install(faults, &runs)?,
                Ok(Message::Abort(reason)) => {
                    return Err(format!(
                        "the source aborted before the go (the VM never ran here): {reason}"
                    ));
                }
                Ok(other) => return Err(unexpected(other.name(), "go")),
                Err(error) => {
                    return Err(format!(
                        "no go from the source (the VM never ran here): {}",
                        closed(error)
                    ));
                }
            }
        }
        self.link.ask(ToVmm::Go)?;
        let Some(faults) = faults else {
            // The VM runs here whether or not this reaches the source.
            let _ = wire::write_message(conn, &Message::Done);
            return Ok(());
        };
        loop {
            match wire::read_message(conn) {
                Ok(Message::Pages(runs)) => self.install(Some(faults), &runs)?,
                Ok(Message::Complete) => break,
                Ok(other) => return Err(unexpected(other.name(), "pages or complete")),
                Err(error) => {
                    return Err(format!(
                        "the link to the source was lost during post-copy, the guest is lost \
                         (neither side has all its memory): {}",
                        closed(error)
                    ));
                }
            }
        }
        faults
            .complete()
            .map_err(|e| format!("telling the source every page arrived: {e}"))?;
        // Pages asked for before `Complete` was seen still come; the
        // sender closes the stream after `Done`.
        while let Ok(Message::Pages(runs)) = wire::read_message(conn) {
            self.install(Some(faults), &runs)?;
        }
        Ok(())
    }

    fn install(&self, faults: Option<&FaultLink>, runs: &[wire::PageRun]) -> Result<(), String> {
        if let Some(faults) = faults {
            faults.install(runs)?;
            self.count(runs.iter().map(|r| r.bytes.len() as u64).sum());
        }
        Ok(())
    }
}

/// Drops the stale copies of pages dirtied since they came: they read as
/// missing again, and fault once the userfaultfd is on.
fn discard(
    memory: &sie_hv::GuestMemory,
    runs: &[crate::snapshot::memory_file::RegionEntry],
) -> Result<(), String> {
    for run in runs {
        let host = super::postcopy::host_of(memory, run.guest_addr, run.len).ok_or_else(|| {
            format!(
                "{} bytes at {:#x} are outside guest RAM",
                run.len, run.guest_addr
            )
        })?;
        // SAFETY: the range lies inside guest RAM's private anonymous
        // mapping (checked above), which no vCPU runs on yet; dropping its
        // pages only makes them read as missing.
        let rc = unsafe {
            libc::madvise(
                host as *mut libc::c_void,
                run.len as usize,
                libc::MADV_DONTNEED,
            )
        };
        if rc != 0 {
            return Err(format!(
                "dropping stale guest pages: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

fn closed(error: wire::WireError) -> String {
    match error {
        wire::WireError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "it closed the stream".to_string()
        }
        other => other.to_string(),
    }
}

fn unexpected(found: &str, expected: &str) -> String {
    format!("unexpected {found} message in the migration stream (expected {expected})")
}

fn total(layout: &[crate::snapshot::memory_file::RegionEntry]) -> u64 {
    layout.iter().map(|r| r.len).sum()
}
