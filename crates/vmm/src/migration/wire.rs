//! The migration wire protocol: framed, checksummed messages between the
//! sending and the receiving sie.
//!
//! ```text
//! frame:  0  1  type         (see `Kind`)
//!         1  4  length N (LE) at most MAX_FRAME_BYTES
//!         5  8  xxh3-64 (LE) of the payload, seeded with bytes 0..5
//!        13  N  payload
//! ```
//!
//! A conversation: the sender's `Hello`, the receiver's `Hello` (each side
//! refuses the other's version before any memory moves), `Layout` (guest
//! RAM's regions), any number of `Pages`, `State` (a snapshot file's
//! bytes: configuration, vCPU, VM, device and virtio state), then the
//! two-phase switch-over: the receiver builds the VM paused and answers
//! `Ready`; the sender commits (it will never run the guest again) and
//! sends `Go`; the receiver runs the VM only then, and answers `Done`.
//! A link lost before `Go` leaves the guest on the sender alone; one lost
//! after leaves it nowhere or on the receiver, never on both. Either side
//! may send `Abort` with a one-line reason instead of its next message.
//!
//! Post-copy: `Postcopy` after `Layout` says no pages come before `State`;
//! the receiver builds the VM on empty RAM, and once it runs (on `Go`) a
//! page the guest touches first is asked for with `Request`, while the
//! sender pushes every page that holds data (the requested ones first),
//! then `Complete`; the receiver answers `Done` once it has them all.
//! `auto` sends `Postcopy` after pre-copy rounds instead, and `Discard`
//! (the pages dirtied since they were sent) before `State`.
//!
//! Local mode (2.1, same host): `LocalLayout` instead of `Layout`, its
//! memfds (one per region) passed right after it as `SCM_RIGHTS` on one
//! byte (see `super::local`), then `State` with no `Pages`, and the same
//! `Ready`/`Go`/`Done` switch-over. The sender only sends it to a peer
//! whose `Hello` says 2.1 or later, and refuses an older one before
//! anything moves (that peer would refuse the unknown type anyway).
//!
//! ```
//! use sie_vmm::migration::wire::{Message, read_message, write_message};
//! let mut stream = Vec::new();
//! write_message(&mut stream, &Message::Done).unwrap();
//! assert_eq!(read_message(&mut stream.as_slice()).unwrap(), Message::Done);
//! ```

use std::io::{self, Read, Write};

use twox_hash::XxHash3_64;

use crate::snapshot::memory_file::RegionEntry;

/// The protocol's major version: a peer with another one is refused.
/// 2: `Ready` and `Go` (the two-phase switch-over); a version 1 peer
/// would run the VM on `State` alone, so it is refused.
pub const PROTOCOL_MAJOR: u16 = 2;
/// The protocol's minor version (additions a same-major peer may ignore,
/// or that the sender only uses with a peer that announced them).
pub const PROTOCOL_MINOR: u16 = 2;
/// The first minor version that knows local mode (`LocalLayout`).
pub const LOCAL_MINOR: u16 = 1;
/// The first minor version whose receiver, in local mode, answers the
/// memfds with `Prepared` once it made the VM on them; a sender whose peer
/// speaks it pauses the guest only then.
pub const PREPARED_MINOR: u16 = 2;
/// What a `Hello` starts with, so a stranger talking is told apart from
/// an old sie.
const HELLO_MAGIC: &[u8; 8] = b"SIEMIGR\n";
/// The largest payload read: a batch of pages or a snapshot's state.
pub const MAX_FRAME_BYTES: usize = 64 << 20;
const HEADER_BYTES: usize = 13;
/// A run's address (u64) and length (u32) before its bytes.
const RUN_HEADER_BYTES: usize = 12;
const PAGE: usize = 4096;

/// Why a stream was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed early.
    #[error("migration stream: {0}")]
    Io(#[from] io::Error),
    /// A frame's checksum does not match: the stream is damaged.
    #[error("migration stream damaged (frame checksum mismatch)")]
    Checksum,
    /// A frame longer than any sie sends.
    #[error("migration frame of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame type this version does not know.
    #[error("unknown migration message type {0}")]
    UnknownType(u8),
    /// A payload that does not parse.
    #[error("malformed migration {0} message")]
    Malformed(&'static str),
    /// The peer speaks another protocol version.
    #[error(
        "peer speaks migration protocol {found}; this sie speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}"
    )]
    Version {
        /// "major.minor" the peer sent.
        found: String,
    },
    /// The peer is not a sie migration endpoint.
    #[error("peer is not a sie migration endpoint (bad hello)")]
    NotSie,
    /// A message other than the one the conversation expects.
    #[error("unexpected migration message {found} (expected {expected})")]
    Unexpected {
        /// What came.
        found: &'static str,
        /// What should have.
        expected: &'static str,
    },
    /// The peer gave up.
    #[error("the peer aborted: {0}")]
    Aborted(String),
}

/// A run of whole guest pages at `guest_addr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageRun {
    /// Guest-physical address of the first page (page-aligned).
    pub guest_addr: u64,
    /// The pages' bytes (a multiple of 4096).
    pub bytes: Vec<u8>,
}

/// One message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The protocol version (major, minor).
    Hello(u16, u16),
    /// Guest RAM's regions.
    Layout(Vec<RegionEntry>),
    /// Guest pages.
    Pages(Vec<PageRun>),
    /// A snapshot file's bytes.
    State(Vec<u8>),
    /// The receiver holds the VM built and paused, waiting for `Go`.
    Ready,
    /// The sender committed: the receiver may run the VM.
    Go,
    /// The VM runs on the receiver (post-copy: and it has every page).
    Done,
    /// Post-copy: no pages come before the state; the receiver runs the
    /// VM on `Go` and fetches missing pages with `Request`.
    Postcopy,
    /// Post-copy: the receiver's guest waits for the page at this
    /// guest-physical address.
    Request(u64),
    /// Post-copy: every page that holds data was sent.
    Complete,
    /// Post-copy after pre-copy (`auto`): pages the receiver holds stale
    /// copies of; it drops them, and they come again after the go.
    Discard(Vec<RegionEntry>),
    /// The sender gives up, or the receiver refuses (one line).
    Abort(String),
    /// Local mode: guest RAM's regions, whose memfds follow.
    LocalLayout(Vec<RegionEntry>),
    /// Local mode (2.2): the receiver made the VM on the RAM it was
    /// handed, so the switch-over does not wait for that.
    Prepared,
}

impl Message {
    fn kind(&self) -> u8 {
        match self {
            Message::Hello(..) => 1,
            Message::Layout(_) => 2,
            Message::Pages(_) => 3,
            Message::State(_) => 4,
            Message::Done => 5,
            Message::Abort(_) => 6,
            Message::Ready => 7,
            Message::Go => 8,
            Message::Postcopy => 9,
            Message::Request(_) => 10,
            Message::Complete => 11,
            Message::Discard(_) => 12,
            Message::LocalLayout(_) => 13,
            Message::Prepared => 14,
        }
    }

    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(..) => "hello",
            Message::Layout(_) => "layout",
            Message::Pages(_) => "pages",
            Message::State(_) => "state",
            Message::Done => "done",
            Message::Abort(_) => "abort",
            Message::Ready => "ready",
            Message::Go => "go",
            Message::Postcopy => "postcopy",
            Message::Request(_) => "request",
            Message::Complete => "complete",
            Message::Discard(_) => "discard",
            Message::LocalLayout(_) => "local layout",
            Message::Prepared => "prepared",
        }
    }

    fn payload(&self) -> Vec<u8> {
        match self {
            Message::Hello(major, minor) => {
                let mut out = HELLO_MAGIC.to_vec();
                out.extend_from_slice(&major.to_le_bytes());
                out.extend_from_slice(&minor.to_le_bytes());
                out
            }
            Message::Layout(regions)
            | Message::Discard(regions)
            | Message::LocalLayout(regions) => {
                let mut out = Vec::with_capacity(regions.len() * 16);
                for region in regions {
                    out.extend_from_slice(&region.guest_addr.to_le_bytes());
                    out.extend_from_slice(&region.len.to_le_bytes());
                }
                out
            }
            Message::Pages(runs) => {
                let mut batch = PageBatch::default();
                for run in runs {
                    batch.push(run.guest_addr, &run.bytes);
                }
                batch.into_payload()
            }
            Message::State(bytes) => bytes.clone(),
            Message::Done
            | Message::Ready
            | Message::Go
            | Message::Postcopy
            | Message::Complete
            | Message::Prepared => Vec::new(),
            Message::Request(guest_addr) => guest_addr.to_le_bytes().to_vec(),
            Message::Abort(reason) => reason.as_bytes().to_vec(),
        }
    }
}

/// A `Pages` payload built in place: the sender copies guest memory
/// straight into it. Each run is its address (u64 LE), its length in bytes
/// (u32 LE) and the bytes. Its buffer is kept between frames, so a batch
/// after the first costs no allocation and no zeroing.
#[derive(Default)]
pub struct PageBatch {
    payload: Vec<u8>,
    used: usize,
    pages: u64,
}

impl PageBatch {
    /// Appends a run of pages.
    pub fn push(&mut self, guest_addr: u64, bytes: &[u8]) {
        let pushed = self.push_with(guest_addr, bytes.len(), |run| {
            run.copy_from_slice(bytes);
            Ok::<(), ()>(())
        });
        debug_assert!(pushed.is_ok());
    }

    /// Appends a run of `len` bytes at `guest_addr` that `fill` writes
    /// (nothing is appended when it fails).
    pub fn push_with<E>(
        &mut self,
        guest_addr: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let start = self.used;
        let end = start + RUN_HEADER_BYTES + len;
        if self.payload.len() < end {
            self.payload.resize(end, 0);
        }
        let run = &mut self.payload[start..end];
        run[..8].copy_from_slice(&guest_addr.to_le_bytes());
        run[8..12].copy_from_slice(&(len as u32).to_le_bytes());
        fill(&mut run[RUN_HEADER_BYTES..])?;
        self.used = end;
        self.pages += (len / PAGE) as u64;
        Ok(())
    }

    /// Payload bytes so far.
    pub fn len(&self) -> usize {
        self.used
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.used == 0
    }

    /// Pages pushed so far.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Sends the batch as one `Pages` frame and empties it.
    pub fn flush(&mut self, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
        if self.used == 0 {
            return Ok(());
        }
        write_frame(out, 3, &self.payload[..self.used])?;
        self.used = 0;
        self.pages = 0;
        Ok(())
    }

    fn into_payload(mut self) -> Vec<u8> {
        self.payload.truncate(self.used);
        self.payload
    }
}

/// A `Pages` payload that was checked whole (page-aligned runs of whole
/// pages, nothing left over), borrowed from the buffer it was read into.
#[derive(Clone, Copy, Debug)]
pub struct PageRuns<'a> {
    payload: &'a [u8],
}

impl<'a> PageRuns<'a> {
    fn check(payload: &'a [u8]) -> Option<Self> {
        let mut at = 0;
        while at < payload.len() {
            let (_, bytes) = run_at(payload, at)?;
            at += RUN_HEADER_BYTES + bytes.len();
        }
        Some(PageRuns { payload })
    }

    /// Each run's guest-physical address and bytes.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &'a [u8])> + use<'a> {
        let payload = self.payload;
        let mut at = 0;
        std::iter::from_fn(move || {
            let (guest_addr, bytes) = run_at(payload, at)?;
            at += RUN_HEADER_BYTES + bytes.len();
            Some((guest_addr, bytes))
        })
    }

    /// The runs, copied out.
    pub fn to_vec(&self) -> Vec<PageRun> {
        self.iter()
            .map(|(guest_addr, bytes)| PageRun {
                guest_addr,
                bytes: bytes.to_vec(),
            })
            .collect()
    }
}

/// The run at `at`: its address and bytes, when both are whole pages and
/// inside the payload.
fn run_at(payload: &[u8], at: usize) -> Option<(u64, &[u8])> {
    let guest_addr = u64_at(payload, at)?;
    let len = usize::try_from(u32_at(payload, at + 8)?).ok()?;
    if !guest_addr.is_multiple_of(PAGE as u64) || !len.is_multiple_of(PAGE) {
        return None;
    }
    let start = at.checked_add(RUN_HEADER_BYTES)?;
    Some((guest_addr, payload.get(start..start.checked_add(len)?)?))
}

/// Reads frames into one buffer kept between them, so a stream of `Pages`
/// reaches guest RAM with no allocation, no zeroing and no copy on the way.
#[derive(Default)]
pub struct FrameReader {
    buffer: Vec<u8>,
}

/// A frame read by a [`FrameReader`].
pub enum Frame<'a> {
    /// Pages, borrowed from the reader's buffer.
    Pages(PageRuns<'a>),
    /// Any other message.
    Other(Message),
}

impl FrameReader {
    /// Reads one frame, refusing damaged, oversized or unknown ones.
    pub fn read(&mut self, input: &mut (impl Read + ?Sized)) -> Result<Frame<'_>, WireError> {
        let mut header = [0u8; HEADER_BYTES];
        input.read_exact(&mut header)?;
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(WireError::TooLarge(len));
        }
        if self.buffer.len() < len {
            self.buffer.resize(len, 0);
        }
        let payload = &mut self.buffer[..len];
        input.read_exact(payload)?;
        let sum = u64::from_le_bytes(header[5..].try_into().unwrap_or_default());
        if checksum(&header[..5], payload) != sum {
            return Err(WireError::Checksum);
        }
        if header[0] == 3 {
            return PageRuns::check(payload)
                .map(Frame::Pages)
                .ok_or(WireError::Malformed("pages"));
        }
        parse(header[0], payload.to_vec()).map(Frame::Other)
    }
}

/// The frame's checksum: the payload's xxh3, seeded with the type and
/// length so a damaged header is caught too.
fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut seed = [0u8; 8];
    seed[..header.len().min(8)].copy_from_slice(&header[..header.len().min(8)]);
    XxHash3_64::oneshot_with_seed(u64::from_le_bytes(seed), payload)
}

fn write_frame(out: &mut (impl Write + ?Sized), kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut header = [0u8; HEADER_BYTES];
    header[0] = kind;
    header[1..5].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let sum = checksum(&header[..5], payload);
    header[5..].copy_from_slice(&sum.to_le_bytes());
    out.write_all(&header)?;
    out.write_all(payload)?;
    out.flush()
}

/// Sends one message.
pub fn write_message(out: &mut (impl Write + ?Sized), message: &Message) -> io::Result<()> {
    write_frame(out, message.kind(), &message.payload())
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The most RAM regions (and so memfds) a local layout may name.
pub const MAX_LOCAL_REGIONS: usize = 16;

/// Address and length pairs (u64 LE each).
fn regions(payload: &[u8]) -> Option<Vec<RegionEntry>> {
    if !payload.len().is_multiple_of(16) {
        return None;
    }
    payload
        .chunks_exact(16)
        .map(|c| {
            Some(RegionEntry {
                guest_addr: u64_at(c, 0)?,
                len: u64_at(c, 8)?,
            })
        })
        .collect()
}

fn parse(kind: u8, payload: Vec<u8>) -> Result<Message, WireError> {
    match kind {
        1 => {
            if payload.len() != 12 || &payload[..8] != HELLO_MAGIC {
                return Err(WireError::NotSie);
            }
            let major = u16::from_le_bytes([payload[8], payload[9]]);
            let minor = u16::from_le_bytes([payload[10], payload[11]]);
            Ok(Message::Hello(major, minor))
        }
        2 => regions(&payload)
            .map(Message::Layout)
            .ok_or(WireError::Malformed("layout")),
        3 => PageRuns::check(&payload)
            .map(|runs| Message::Pages(runs.to_vec()))
            .ok_or(WireError::Malformed("pages")),
        4 => Ok(Message::State(payload)),
        5 if payload.is_empty() => Ok(Message::Done),
        5 => Err(WireError::Malformed("done")),
        6 => Ok(Message::Abort(
            String::from_utf8_lossy(&payload).into_owned(),
        )),
        7 if payload.is_empty() => Ok(Message::Ready),
        7 => Err(WireError::Malformed("ready")),
        8 if payload.is_empty() => Ok(Message::Go),
        8 => Err(WireError::Malformed("go")),
        9 if payload.is_empty() => Ok(Message::Postcopy),
        9 => Err(WireError::Malformed("postcopy")),
        10 => match u64_at(&payload, 0) {
            Some(guest_addr) if payload.len() == 8 && guest_addr.is_multiple_of(PAGE as u64) => {
                Ok(Message::Request(guest_addr))
            }
            _ => Err(WireError::Malformed("request")),
        },
        11 if payload.is_empty() => Ok(Message::Complete),
        11 => Err(WireError::Malformed("complete")),
        12 => {
            let runs = regions(&payload).ok_or(WireError::Malformed("discard"))?;
            let aligned = |n: u64| n.is_multiple_of(PAGE as u64);
            if runs.iter().all(|r| aligned(r.guest_addr) && aligned(r.len)) {
                Ok(Message::Discard(runs))
            } else {
                Err(WireError::Malformed("discard"))
            }
        }
        13 => regions(&payload)
            .filter(|regions| !regions.is_empty() && regions.len() <= MAX_LOCAL_REGIONS)
            .map(Message::LocalLayout)
            .ok_or(WireError::Malformed("local layout")),
        14 if payload.is_empty() => Ok(Message::Prepared),
        14 => Err(WireError::Malformed("prepared")),
        other => Err(WireError::UnknownType(other)),
    }
}

/// Reads one message, refusing damaged, oversized or unknown frames.
pub fn read_message(input: &mut (impl Read + ?Sized)) -> Result<Message, WireError> {
    match FrameReader::default().read(input)? {
        Frame::Pages(runs) => Ok(Message::Pages(runs.to_vec())),
        Frame::Other(message) => Ok(message),
    }
}

/// Sends this side's `Hello`.
pub fn send_hello(out: &mut (impl Write + ?Sized)) -> io::Result<()> {
    write_message(out, &Message::Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR))
}

/// Reads the peer's `Hello` and refuses another major version.
pub fn expect_hello(input: &mut (impl Read + ?Sized)) -> Result<(), WireError> {
    expect_hello_minor(input).map(drop)
}

/// [`expect_hello`], returning the peer's minor version (what it knows).
pub fn expect_hello_minor(input: &mut (impl Read + ?Sized)) -> Result<u16, WireError> {
    match read_message(input)? {
        Message::Hello(PROTOCOL_MAJOR, minor) => Ok(minor),
        Message::Hello(major, minor) => Err(WireError::Version {
            found: format!("{major}.{minor}"),
        }),
        Message::Abort(reason) => Err(WireError::Aborted(reason)),
        other => Err(WireError::Unexpected {
            found: other.name(),
            expected: "hello",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation() -> Vec<Message> {
        vec![
            Message::Hello(PROTOCOL_MAJOR, PROTOCOL_MINOR),
            Message::Layout(vec![RegionEntry {
                guest_addr: 0,
                len: 1 << 20,
            }]),
            Message::Pages(vec![
                PageRun {
                    guest_addr: 0x1000,
                    bytes: vec![0xab; 2 * PAGE],
                },
                PageRun {
                    guest_addr: 0x8000,
                    bytes: vec![7; PAGE],
                },
            ]),
            Message::State(b"SIESNAP\n...".to_vec()),
            Message::Postcopy,
            Message::Ready,
            Message::Go,
            Message::Request(0x7000),
            Message::Discard(vec![RegionEntry {
                guest_addr: 0x3000,
                len: 2 * PAGE as u64,
            }]),
            Message::Complete,
            Message::Done,
            Message::Abort("no room".into()),
            Message::LocalLayout(vec![
                RegionEntry {
                    guest_addr: 0,
                    len: 1 << 20,
                },
                RegionEntry {
                    guest_addr: 1 << 32,
                    len: 2 << 20,
                },
            ]),
            Message::Prepared,
        ]
    }

    #[test]
    fn every_message_reads_back_as_written() {
        let mut stream = Vec::new();
        for message in conversation() {
            write_message(&mut stream, &message).unwrap();
        }
        let mut input = stream.as_slice();
        for message in conversation() {
            assert_eq!(read_message(&mut input).unwrap(), message);
        }
        assert!(matches!(read_message(&mut input), Err(WireError::Io(_))));
    }

    #[test]
    fn a_damaged_or_empty_local_layout_is_refused() {
        let mut good = Vec::new();
        let local = conversation()
            .into_iter()
            .find(|message| matches!(message, Message::LocalLayout(_)))
            .unwrap();
        write_message(&mut good, &local).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(
                read_message(&mut bad.as_slice()).is_err(),
                "flipped byte {at} was accepted"
            );
        }
        let mut stream = Vec::new();
        write_frame(&mut stream, 13, &[0; 15]).unwrap();
        write_frame(&mut stream, 13, &[]).unwrap();
        write_frame(&mut stream, 13, &[0; 16 * (MAX_LOCAL_REGIONS + 1)]).unwrap();
        let mut input = stream.as_slice();
        for _ in 0..3 {
            assert!(matches!(
                read_message(&mut input),
                Err(WireError::Malformed("local layout"))
            ));
        }
    }

    #[test]
    fn a_batch_built_in_place_is_a_pages_message() {
        let mut batch = PageBatch::default();
        batch.push(0x2000, &[1; PAGE]);
        batch
            .push_with(0x5000, PAGE, |page| {
                page.fill(2);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(batch.pages(), 2);
        let mut stream = Vec::new();
        batch.flush(&mut stream).unwrap();
        assert!(batch.is_empty());
        let Message::Pages(runs) = read_message(&mut stream.as_slice()).unwrap() else {
            panic!("not pages");
        };
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].guest_addr, 0x5000);
        assert_eq!(runs[1].bytes, vec![2; PAGE]);
    }

    #[test]
    fn a_frame_reader_reuses_its_buffer_for_frames_of_any_size() {
        let big = Message::Pages(vec![PageRun {
            guest_addr: 0x10000,
            bytes: vec![3; 4 * PAGE],
        }]);
        let small = Message::Pages(vec![
            PageRun {
                guest_addr: 0x2000,
                bytes: vec![4; PAGE],
            },
            PageRun {
                guest_addr: 0x9000,
                bytes: vec![5; PAGE],
            },
        ]);
        let mut stream = Vec::new();
        for message in [&big, &small, &Message::Done, &big] {
            write_message(&mut stream, message).unwrap();
        }
        let mut input = stream.as_slice();
        let mut frames = FrameReader::default();
        for expected in [&big, &small, &Message::Done, &big] {
            let read = match frames.read(&mut input).unwrap() {
                Frame::Pages(runs) => Message::Pages(runs.to_vec()),
                Frame::Other(message) => message,
            };
            assert_eq!(&read, expected);
        }
        let mut fresh = FrameReader::default();
        let Frame::Pages(runs) = fresh.read(&mut stream.as_slice()).unwrap() else {
            panic!("not pages");
        };
        let runs: Vec<(u64, usize)> = runs.iter().map(|(at, b)| (at, b.len())).collect();
        assert_eq!(runs, [(0x10000, 4 * PAGE)]);
    }

    #[test]
    fn every_flipped_byte_of_a_frame_is_refused() {
        let mut good = Vec::new();
        write_message(&mut good, &conversation()[2]).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(
                read_message(&mut bad.as_slice()).is_err(),
                "flipped byte {at} was accepted"
            );
        }
        for len in 0..good.len() {
            assert!(read_message(&mut &good[..len]).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn another_major_version_is_refused_in_one_line() {
        let mut stream = Vec::new();
        write_message(&mut stream, &Message::Hello(PROTOCOL_MAJOR + 1, 3)).unwrap();
        let error = expect_hello(&mut stream.as_slice())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            format!(
                "peer speaks migration protocol {}.3; this sie speaks {PROTOCOL_MAJOR}.{PROTOCOL_MINOR}",
                PROTOCOL_MAJOR + 1
            )
        );
        let mut stream = Vec::new();
        send_hello(&mut stream).unwrap();
        expect_hello(&mut stream.as_slice()).unwrap();
    }

    #[test]
    fn oversized_unknown_and_misaligned_frames_are_refused() {
        let mut header = vec![3u8];
        header.extend_from_slice(&(MAX_FRAME_BYTES as u32 + 1).to_le_bytes());
        header.extend_from_slice(&[0; 8]);
        assert!(matches!(
            read_message(&mut header.as_slice()),
            Err(WireError::TooLarge(_))
        ));
        let mut stream = Vec::new();
        write_frame(&mut stream, 99, b"").unwrap();
        assert!(matches!(
            read_message(&mut stream.as_slice()),
            Err(WireError::UnknownType(99))
        ));
        let mut payload = 0x1001u64.to_le_bytes().to_vec();
        payload.extend_from_slice(&(PAGE as u32).to_le_bytes());
        payload.extend_from_slice(&[0; PAGE]);
        let mut stream = Vec::new();
        write_frame(&mut stream, 3, &payload).unwrap();
        assert!(matches!(
            read_message(&mut stream.as_slice()),
            Err(WireError::Malformed("pages"))
        ));
        let mut stream = Vec::new();
        write_frame(&mut stream, 1, b"HTTP/1.1 200").unwrap();
        assert!(matches!(
            expect_hello(&mut stream.as_slice()),
            Err(WireError::NotSie)
        ));
    }
}
