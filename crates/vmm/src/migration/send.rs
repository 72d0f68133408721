//! The sending end: connect, agree on the protocol, send every populated
//! page while the guest runs, then rounds of what it dirtied until the
//! rest fits the allowed downtime, then the two-phase switch-over: pause,
//! last pages, state; the receiver's `Ready` (it holds the VM, paused);
//! `Go`, after which the guest never resumes here; the receiver's `Done`.
//!
//! A round that does not shrink enough raises the vCPUs' throttle
//! ([`super::converge`], unless the send asked for no auto-converge); the
//! VMM thread applies it and lifts it when the send ends, however it ends.
//! A bandwidth cap ([`super::pace`]) paces the batches.
//!
//! Guest memory is read while the vCPUs run (that is what pre-copy is): a
//! page written after it was read is in the next round's dirty pages,
//! because each round's pages are taken before they are read. vCPU and
//! device state is only read by the VMM thread, paused, at the switch-over.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sie_config::MigrationMode;
use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::converge::AutoConverge;
use super::pace::Pacer;
use super::progress::{self, MigrationState, SharedProgress};
use super::wire::{self, Message, PageBatch};
use super::{Conn, Endpoint, SendEnd, ToVmm, VmmLink, readable};
use crate::snapshot::dirty::RegionPages;
use crate::snapshot::memory_file::{self, RegionEntry};

const PAGE: u64 = 4096;
/// Pages per `Pages` frame.
const BATCH_BYTES: usize = 1 << 20;
/// Bytes per `Pages` frame post-copy: small, so a request waits little
/// behind the push.
const PUSH_BATCH_BYTES: usize = 64 << 10;
/// Rounds after the first pass before the switch-over happens anyway (a
/// guest that dirties faster than the link carries never converges).
pub const MAX_ROUNDS: u32 = 30;

/// What `PUT /migration/send` asked for.
#[derive(Clone, Debug)]
pub struct SendPlan {
    /// The receiver.
    pub destination: Endpoint,
    /// The pause allowed at the switch-over.
    pub downtime: Duration,
    /// Give up before the switch-over after this long.
    pub timeout: Duration,
    /// Throttle the vCPUs when the rounds do not converge.
    pub auto_converge: bool,
    /// Pre-copy, post-copy, or pre-copy turning to post-copy when the
    /// rounds run out (or the timeout passes) without converging.
    pub mode: MigrationMode,
}

/// Everything the sending thread needs.
pub struct Sender {
    /// What to do.
    pub plan: SendPlan,
    /// Guest RAM (read while the guest runs).
    pub memory: GuestMemory,
    /// RAM came from a snapshot's file: every page may hold data.
    pub scan_contents: bool,
    /// The VMM thread.
    pub link: VmmLink,
    /// Figures for `GET /migration`.
    pub progress: SharedProgress,
    /// Set by `PUT /migration/cancel`.
    pub cancel: Arc<AtomicBool>,
    /// The bandwidth cap, if the send asked for one.
    pub pace: Option<Pacer>,
    /// Post-copy from the switch-over on (the mode asked, or `auto` once
    /// it turned).
    pub postcopy: Cell<bool>,
}

impl Sender {
    /// Runs the migration and tells the VMM thread how it ended.
    pub fn run(self) {
        let started = Instant::now();
        let result = self.converse(started);
        let end = ended(
            result,
            &self.plan.destination,
            &self.progress,
            &self.cancel,
            started,
        );
        self.link.send(ToVmm::SendFinished(end));
    }

    fn check_going(&self, started: Instant) -> Result<(), String> {
        if self.cancel.load(Ordering::Acquire) {
            return Err("migration cancelled".into());
        }
        // `auto` turns to post-copy instead (once the first pass is over).
        if self.plan.mode != MigrationMode::Auto && started.elapsed() > self.plan.timeout {
            return Err(format!(
                "migration timed out after {} s before the switch-over",
                self.plan.timeout.as_secs()
            ));
        }
        Ok(())
    }

    fn converse(&self, started: Instant) -> Result<(), Failure> {
        let destination = &self.plan.destination;
        let mut conn = destination
            .connect()
            .map_err(|e| format!("connecting to {destination}: {e}"))?;
        let conn = conn.as_mut();
        let result = self.precopy(conn, started);
        let result = match result {
            Ok(pending) => self.switchover(conn, pending),
            Err(error) => Err(Failure::BeforeGo(error)),
        };
        if let Err(Failure::BeforeGo(error)) = &result {
            // Best effort: the receiver learns why instead of seeing EOF
            // (and never runs the VM: it has had no `Go`).
            let _ = wire::write_message(conn, &Message::Abort(error.clone()));
        }
        result
    }

    /// The two-phase switch-over: pause, last pages, state; the
    /// receiver's `Ready`; `Go` (the commit); its `Done`.
    fn switchover(
        &self,
        conn: &mut dyn Conn,
        mut pending: Vec<RegionPages>,
    ) -> Result<(), Failure> {
        let destination = &self.plan.destination;
        let sent = |e: std::io::Error| format!("sending to {destination}: {e}");
        // From here the guest is paused until the receiver holds it (or
        // this fails before the go and it resumes here).
        let paused_at = Instant::now();
        let mut clock = progress::SwitchoverClock::start();
        // Guest RAM holds still here while `release` lives: until the last
        // pages are read (pre-copy), or the whole send (post-copy pushes
        // pages after the go).
        let (release, held) = std::sync::mpsc::channel::<()>();
        let last = self.link.ask(|reply| ToVmm::Switchover {
            reply,
            release: held,
        })?;
        clock.mark(|p| &mut p.pause_and_state_ms);
        pending.extend(last.pages);
        let postcopy = self.postcopy.get();
        if !postcopy {
            self.send_pages(conn, &pending, None, false)?;
            drop(release);
        } else if self.plan.mode == MigrationMode::Auto {
            // What the receiver holds of these is stale: it drops them,
            // and they come again after the go.
            wire::write_message(conn, &Message::Discard(runs_of(&pending))).map_err(sent)?;
        }
        clock.mark(|p| &mut p.last_pages_ms);
        let state_len = last.state.len() as u64;
        wire::write_message(conn, &Message::State(last.state)).map_err(sent)?;
        progress::update(&self.progress, |p| p.bytes += state_len);
        expect_ready(self.read_serving(conn))?;
        clock.mark(|p| &mut p.receiver_ms);
        // The commit. A `Go` whose write failed never reached the receiver
        // whole (a cut frame fails its checksum or its read), so the guest
        // may still resume here; once the write succeeded it may not.
        wire::write_message(conn, &Message::Go)
            .map_err(|e| format!("sending the go to {destination}: {e}"))?;
        if postcopy {
            // The guest runs there from now on.
            let downtime_ms = paused_at.elapsed().as_millis() as u64;
            progress::update(&self.progress, |p| {
                p.downtime_ms = Some(downtime_ms);
                p.downtime_parts = Some(clock.parts());
            });
            let pushed = if self.plan.mode == MigrationMode::Auto {
                self.send_pages(conn, &pending, None, true)
                    .and_then(|_| self.finish_push(conn))
            } else {
                self.push_all(conn)
            };
            pushed.map_err(|e| {
                Failure::AfterGo(format!(
                    "post-copy to {destination} failed, the guest is lost \
                     (neither side has all its memory): {e}"
                ))
            })?;
        }
        expect_done(self.read_serving(conn), destination)?;
        if !postcopy {
            clock.mark(|p| &mut p.commit_ms);
            let downtime_ms = paused_at.elapsed().as_millis() as u64;
            progress::update(&self.progress, |p| {
                p.downtime_ms = Some(downtime_ms);
                p.downtime_parts = Some(clock.parts());
            });
        }
        Ok(())
    }

    /// Tells the receiver the rest comes after the state.
    fn turn_postcopy(&self, conn: &mut dyn Conn) -> Result<(), String> {
        wire::write_message(conn, &Message::Postcopy)
            .map_err(|e| format!("{}: {e}", self.plan.destination))?;
        self.postcopy.set(true);
        progress::update(&self.progress, |p| p.postcopy = true);
        Ok(())
    }

    /// The next message, post-copy answering the receiver's page requests
    /// on the way.
    fn read_serving(&self, conn: &mut dyn Conn) -> Result<Message, wire::WireError> {
        loop {
            match wire::read_message(conn)? {
                Message::Request(guest_addr) if self.postcopy.get() => self
                    .serve_request(conn, guest_addr)
                    .map_err(|e| wire::WireError::Io(std::io::Error::other(e)))?,
                other => return Ok(other),
            }
        }
    }

    fn serve_request(&self, conn: &mut dyn Conn, guest_addr: u64) -> Result<(), String> {
        let mut batch = PageBatch::default();
        self.push_page(&mut batch, GuestAddress(guest_addr))?;
        self.flush(conn, &mut batch)?;
        progress::update(&self.progress, |p| p.requested_pages += 1);
        Ok(())
    }

    /// Post-copy, the guest paused here for good: every page that holds
    /// data, a few at a time, the receiver's requests answered between
    /// batches; then `Complete`.
    fn push_all(&self, conn: &mut dyn Conn) -> Result<(), String> {
        let mut batch = PageBatch::default();
        self.for_each_data_page(|at| {
            self.push_page(&mut batch, at)?;
            if batch.len() >= PUSH_BATCH_BYTES {
                self.flush(conn, &mut batch)?;
                self.serve_waiting(conn)?;
            }
            Ok(())
        })?;
        self.flush(conn, &mut batch)?;
        self.finish_push(conn)
    }

    /// The last requests waiting, then `Complete`.
    fn finish_push(&self, conn: &mut dyn Conn) -> Result<(), String> {
        self.serve_waiting(conn)?;
        wire::write_message(conn, &Message::Complete)
            .map_err(|e| format!("sending to {}: {e}", self.plan.destination))
    }

    /// Answers every request already waiting on the stream (urgent: a
    /// vCPU there waits for each).
    fn serve_waiting(&self, conn: &mut dyn Conn) -> Result<(), String> {
        while readable(conn) {
            match wire::read_message(conn).map_err(|e| e.to_string())? {
                Message::Request(guest_addr) => self.serve_request(conn, guest_addr)?,
                Message::Abort(reason) => return Err(format!("the destination aborted: {reason}")),
                other => return Err(format!("the destination sent {}", other.name())),
            }
        }
        Ok(())
    }

    /// Hello, layout, the first pass and the rounds: returns the dirty
    /// pages the switch-over must send.
    fn precopy(&self, conn: &mut dyn Conn, started: Instant) -> Result<Vec<RegionPages>, String> {
        let destination = &self.plan.destination;
        let io = |e: std::io::Error| format!("{destination}: {e}");
        wire::send_hello(conn).map_err(io)?;
        wire::expect_hello(conn).map_err(|e| format!("{destination}: {e}"))?;
        wire::write_message(conn, &Message::Layout(memory_file::layout_of(&self.memory)))
            .map_err(io)?;
        if self.plan.mode == MigrationMode::Postcopy {
            // No pages before the state: all of them follow it. The log
            // is on only so the switch-over can take it.
            self.turn_postcopy(conn)?;
            self.link.ask(ToVmm::StartDirtyLog)?;
            return Ok(Vec::new());
        }
        // Logging starts before the first page is read, so every write
        // from here on is in some round.
        self.link.ask(ToVmm::StartDirtyLog)?;
        let first = Instant::now();
        let bytes = self.send_populated(conn, started)?;
        let mut bandwidth = rate(bytes, first.elapsed());
        let target = self.plan.downtime.as_millis() as u64;
        let mut converge = AutoConverge::new(self.plan.auto_converge);
        let mut last_sent = bytes;
        let mut round = 0;
        loop {
            self.check_going(started)?;
            let round_started = Instant::now();
            let pages = self.link.ask(ToVmm::TakeDirty)?;
            let dirty_bytes = pages.iter().map(RegionPages::count).sum::<u64>() * PAGE;
            let estimate = dirty_bytes.saturating_mul(1000) / bandwidth.max(1);
            progress::update(&self.progress, |p| {
                p.round = round;
                p.bandwidth_bytes_per_s = bandwidth;
                p.estimated_downtime_ms = estimate;
            });
            if estimate <= target {
                return Ok(pages);
            }
            let out_of_time = started.elapsed() > self.plan.timeout;
            if self.plan.mode == MigrationMode::Auto && (round >= MAX_ROUNDS || out_of_time) {
                tracing::info!(
                    "migration: pre-copy did not converge after {round} rounds; post-copy"
                );
                self.turn_postcopy(conn)?;
                return Ok(pages);
            }
            if round >= MAX_ROUNDS {
                return Ok(pages);
            }
            if let Some(percent) = converge.after_round(last_sent, dirty_bytes, estimate) {
                // The VMM thread applies it and reports it.
                self.link.send(ToVmm::Throttle(percent));
            }
            round += 1;
            let sent = self.send_pages(conn, &pages, Some(started), false)?;
            last_sent = sent;
            let elapsed = round_started.elapsed();
            bandwidth = rate(sent, elapsed).max(bandwidth / 2);
            progress::update(&self.progress, |p| {
                p.dirty_rate_bytes_per_s = rate(dirty_bytes, elapsed);
            });
        }
    }

    /// Calls `each` with every page of guest RAM that holds data: populated
    /// (every page when the contents are scanned) and not all zeros, which
    /// the receiver has already.
    fn for_each_data_page(
        &self,
        mut each: impl FnMut(GuestAddress) -> Result<(), String>,
    ) -> Result<(), String> {
        for region in self.memory.iter() {
            let resident = if self.scan_contents {
                vec![true; region.len().div_ceil(PAGE) as usize]
            } else {
                memory_file::resident_pages(region)
                    .map_err(|e| format!("reading guest RAM's residency: {e}"))?
            };
            let base = region.start_addr().0;
            for (page, _) in resident.iter().enumerate().filter(|(_, r)| **r) {
                let at = GuestAddress(base + page as u64 * PAGE);
                if !memory_file::is_zero_page(&self.memory, at)
                    .map_err(|e| format!("reading guest RAM: {e}"))?
                {
                    each(at)?;
                }
            }
        }
        Ok(())
    }

    /// The first pass: every page the guest (or a restore) populated;
    /// never-touched pages are zeros on the receiver already.
    fn send_populated(&self, conn: &mut dyn Conn, started: Instant) -> Result<u64, String> {
        let mut batch = PageBatch::default();
        let mut bytes = 0;
        self.for_each_data_page(|at| {
            self.push_page(&mut batch, at)?;
            if batch.len() >= BATCH_BYTES {
                bytes += self.flush(conn, &mut batch)?;
                self.check_going(started)?;
            }
            Ok(())
        })?;
        bytes += self.flush(conn, &mut batch)?;
        Ok(bytes)
    }

    /// Sends the marked pages of `pages` (checking for cancel and timeout
    /// between batches when `started` is given: not after the switch-over;
    /// post-copy, when `serve`, in small batches with the receiver's
    /// requests answered between them).
    fn send_pages(
        &self,
        conn: &mut dyn Conn,
        pages: &[RegionPages],
        started: Option<Instant>,
        serve: bool,
    ) -> Result<u64, String> {
        let limit = if serve { PUSH_BATCH_BYTES } else { BATCH_BYTES };
        let mut batch = PageBatch::default();
        let mut bytes = 0;
        // Neighbouring dirty pages go as one run (one header, one copy), at
        // most a batch long.
        for run in runs_of(pages) {
            let end = run.guest_addr + run.len;
            let mut at = run.guest_addr;
            while at < end {
                let len = (end - at).min(limit as u64);
                self.push_run(&mut batch, GuestAddress(at), len)?;
                at += len;
                if batch.len() >= limit {
                    bytes += self.flush(conn, &mut batch)?;
                    if let Some(started) = started {
                        self.check_going(started)?;
                    }
                    if serve {
                        self.serve_waiting(conn)?;
                    }
                }
            }
        }
        bytes += self.flush(conn, &mut batch)?;
        Ok(bytes)
    }

    fn push_run(&self, batch: &mut PageBatch, at: GuestAddress, len: u64) -> Result<(), String> {
        batch.push_with(at.0, len as usize, |run| {
            self.memory
                .read_slice(run, at)
                .map_err(|e| format!("reading guest pages at {:#x}: {e}", at.0))
        })
    }

    fn push_page(&self, batch: &mut PageBatch, at: GuestAddress) -> Result<(), String> {
        self.push_run(batch, at, PAGE)
    }

    fn flush(&self, conn: &mut dyn Conn, batch: &mut PageBatch) -> Result<u64, String> {
        let (bytes, pages) = (batch.len() as u64, batch.pages());
        batch
            .flush(conn)
            .map_err(|e| format!("sending to {}: {e}", self.plan.destination))?;
        progress::update(&self.progress, |p| {
            p.bytes += bytes;
            p.pages += pages;
        });
        if let Some(pace) = &self.pace {
            pace.sent(bytes);
        }
        Ok(bytes)
    }
}

/// The destination's answer to the state: `Ready` (it built the VM,
/// paused), or why the switch-over stops here (the guest resumes here).
pub(super) fn expect_ready(answer: Result<Message, wire::WireError>) -> Result<(), Failure> {
    match answer {
        Ok(Message::Ready) => Ok(()),
        Ok(Message::Abort(reason)) => Err(format!("the destination refused: {reason}").into()),
        Ok(other) => Err(format!("the destination sent {} instead of ready", other.name()).into()),
        Err(error) => Err(format!("waiting for the destination: {error}").into()),
    }
}

/// The destination's answer after the go: `Done`, or why not (the guest
/// may run there already, so a failure here is [`Failure::AfterGo`]).
pub(super) fn expect_done(
    answer: Result<Message, wire::WireError>,
    destination: &Endpoint,
) -> Result<(), Failure> {
    match answer {
        Ok(Message::Done) => Ok(()),
        Ok(Message::Abort(reason)) => Err(format!("the destination failed after the go: {reason}")),
        Ok(other) => Err(format!(
            "the destination sent {} instead of done",
            other.name()
        )),
        Err(error) => Err(format!(
            "the link to {destination} was lost after the go: {error}"
        )),
    }
    .map_err(Failure::AfterGo)
}

/// How a send (this one or a local one) ended, as the VMM thread must
/// act on it; `GET /migration`'s figures say so too.
pub(super) fn ended(
    result: Result<(), Failure>,
    destination: &Endpoint,
    progress: &SharedProgress,
    cancel: &AtomicBool,
    started: Instant,
) -> SendEnd {
    let end = match result {
        Ok(()) => SendEnd::Moved(destination.to_string()),
        Err(Failure::BeforeGo(why)) => SendEnd::Failed(why),
        Err(Failure::AfterGo(why)) => SendEnd::Unconfirmed(format!(
            "{why}: the destination may be running the VM, so it stays paused here"
        )),
    };
    let total_ms = started.elapsed().as_millis() as u64;
    let cancelled = cancel.load(Ordering::Acquire);
    progress::update(progress, |p| {
        p.total_ms = Some(total_ms);
        match &end {
            SendEnd::Moved(_) => p.state = MigrationState::Completed,
            SendEnd::Failed(why) => {
                p.state = if cancelled {
                    MigrationState::Cancelled
                } else {
                    MigrationState::Failed
                };
                p.error = Some(why.clone());
            }
            SendEnd::Unconfirmed(why) => {
                p.state = MigrationState::Failed;
                p.error = Some(why.clone());
            }
        }
    });
    end
}

/// Why a send failed, on which side of the commit.
pub(super) enum Failure {
    /// Before `Go` left: the guest resumes here.
    BeforeGo(String),
    /// After: the destination may run it.
    AfterGo(String),
}

impl From<String> for Failure {
    fn from(why: String) -> Self {
        Failure::BeforeGo(why)
    }
}

/// The marked pages as runs of guest-physical addresses.
fn runs_of(pages: &[RegionPages]) -> Vec<RegionEntry> {
    let mut runs: Vec<RegionEntry> = Vec::new();
    for at in marked_pages(pages) {
        match runs.last_mut() {
            Some(last) if last.guest_addr + last.len == at => last.len += PAGE,
            _ => runs.push(RegionEntry {
                guest_addr: at,
                len: PAGE,
            }),
        }
    }
    runs
}

/// The guest-physical address of every marked page of `pages`, in order.
fn marked_pages(pages: &[RegionPages]) -> impl Iterator<Item = u64> + '_ {
    pages.iter().flat_map(|region| {
        region
            .bits
            .iter()
            .enumerate()
            .flat_map(|(word_index, &word)| {
                let mut word = word;
                std::iter::from_fn(move || {
                    if word == 0 {
                        return None;
                    }
                    let bit = u64::from(word.trailing_zeros());
                    word &= word - 1;
                    Some(word_index as u64 * 64 + bit)
                })
            })
            .filter(|page| page * PAGE < region.len)
            .map(|page| region.guest_addr + page * PAGE)
    })
}

/// Bytes per second.
fn rate(bytes: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1) as u64;
    bytes.saturating_mul(1_000_000) / micros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marked_pages_come_in_order_and_stop_at_the_region_end() {
        let pages = [
            RegionPages {
                guest_addr: 0,
                len: 70 * PAGE,
                // Pages 0, 1, 2, 63 and 64; 127 lies past the region.
                bits: vec![0b111 | 1 << 63, 1 | 1 << 63],
            },
            RegionPages {
                guest_addr: 1 << 32,
                len: 64 * PAGE,
                bits: vec![1 << 5],
            },
        ];
        let marked: Vec<u64> = marked_pages(&pages).collect();
        assert_eq!(
            marked,
            [
                0,
                PAGE,
                2 * PAGE,
                63 * PAGE,
                64 * PAGE,
                (1 << 32) + 5 * PAGE
            ]
        );
        let runs = runs_of(&pages);
        let runs: Vec<(u64, u64)> = runs.iter().map(|r| (r.guest_addr, r.len)).collect();
        assert_eq!(
            runs,
            [
                (0, 3 * PAGE),
                (63 * PAGE, 2 * PAGE),
                ((1 << 32) + 5 * PAGE, PAGE)
            ]
        );
    }
}
