//! The receiving end: accept one sender, check its protocol version before
//! anything else, take guest RAM's layout and map fresh memory for it,
//! write every page that arrives, and on the state hand the VM to the VMM
//! thread to build and run; then tell the sender it runs here. In local
//! mode ([`super::local`]) guest RAM is the source's memfds, mapped here,
//! and no page arrives.

use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use super::progress::{self, MigrationState, SharedProgress};
use super::wire::{self, Message, PROTOCOL_MAJOR};
use super::{Conn, Listener, ToVmm, VmmLink};
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
        match wire::read_message(conn).map_err(refused)? {
            Message::Hello(PROTOCOL_MAJOR, _) => {}
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
        }
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
        loop {
            match wire::read_message(conn).map_err(refused)? {
                // Local mode's RAM is the source's own: nothing is copied.
                Message::Pages(_) if local => return Err(unexpected("pages", "state")),
                Message::Pages(runs) => {
                    let mut bytes = 0;
                    for run in &runs {
                        memory
                            .write_slice(&run.bytes, GuestAddress(run.guest_addr))
                            .map_err(|_| {
                                format!(
                                    "{} bytes at {:#x} are outside guest RAM",
                                    run.bytes.len(),
                                    run.guest_addr
                                )
                            })?;
                        bytes += run.bytes.len() as u64;
                    }
                    progress::update(&self.progress, |p| {
                        p.bytes += bytes;
                        p.pages += bytes / 4096;
                    });
                }
                Message::State(bytes) => {
                    let snapshot =
                        crate::snapshot::decode_snapshot(Path::new("(migration stream)"), &bytes)
                            .map_err(|e| crate::error::error_chain(&e))?;
                    if snapshot.memory != layout {
                        return Err("the state's RAM layout differs from the pages sent".into());
                    }
                    self.link.ask(|reply| ToVmm::Arrived {
                        snapshot: Box::new(snapshot),
                        memory,
                        reply,
                    })?;
                    return wire::write_message(conn, &Message::Done)
                        .map_err(|e| format!("telling the source the VM runs here: {e}"));
                }
                Message::Abort(reason) => return Err(format!("the source aborted: {reason}")),
                other => return Err(unexpected(other.name(), "pages or state")),
            }
        }
    }
}

fn unexpected(found: &str, expected: &str) -> String {
    format!("unexpected {found} message in the migration stream (expected {expected})")
}

fn total(layout: &[crate::snapshot::memory_file::RegionEntry]) -> u64 {
    layout.iter().map(|r| r.len).sum()
}
