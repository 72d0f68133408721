//! The working set a lazy restore records: which pages of the memory file
//! the guest touched first after a restore, in the order it touched them,
//! with their contents, so the next restore reads them in one sequential
//! pass and installs them before the vCPUs run.
//!
//! It lives beside the memory file as `<memory file>.ws`:
//!
//! ```text
//! magic "SIEWSET\x01"          8 bytes
//! memory file length           u64 LE  \ which memory file it was recorded
//! memory file mtime (ns)       u64 LE  / from; another one makes it stale
//! page count N                 u64 LE
//! N page offsets in the file   u64 LE each, in the order first touched
//! N pages of 4096 bytes        the file's contents at those offsets
//! XXH3-64 of all of the above  u64 LE
//! ```
//!
//! The checksum catches damage; it is XXH3 rather than SHA-256 because the
//! whole file is checked on the load path, before the vCPUs run (on this
//! machine SHA-256 runs at ~0.6 GB/s, XXH3 at ~3 GB/s).
//!
//! A missing, damaged, short or stale file is not an error: the restore
//! says why it ignored it and records a new one.

use std::fs::{File, Metadata};
use std::hash::Hasher;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use twox_hash::XxHash3_64;

use super::durable::write_durably;
use super::uffd::PAGE;

const MAGIC: &[u8; 8] = b"SIEWSET\x01";
const HEADER: usize = 8 + 3 * 8;
const DIGEST: usize = 8;

/// The working-set file of the memory file `memory_file`.
pub fn path_for(memory_file: &Path) -> PathBuf {
    let mut name = memory_file.as_os_str().to_os_string();
    name.push(".ws");
    PathBuf::from(name)
}

/// Which memory file a working set belongs to: its length and mtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    len: u64,
    mtime_ns: u64,
}

impl Identity {
    /// The identity of the memory file whose metadata this is.
    pub fn of(metadata: &Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        let mtime_ns = (metadata.mtime() as u64)
            .wrapping_mul(1_000_000_000)
            .wrapping_add(metadata.mtime_nsec() as u64);
        Self {
            len: metadata.len(),
            mtime_ns,
        }
    }
}

/// A working set whose file was checked whole (length, checksum, which
/// memory file, offsets): page offsets in the order first touched; the
/// pages are read again a chunk at a time as they are installed, so a
/// working set of tens of MiB needs no buffer of its size (each fresh page
/// of one is a fault, and a prefetch waits for all of them).
#[derive(Debug)]
pub struct WorkingSet {
    /// Offsets in the memory file (= guest-physical addresses).
    pub offsets: Vec<u64>,
    file: File,
    /// Where the pages start in the file.
    pages_at: u64,
}

/// Pages read (checked, or installed) at a time.
const CHUNK_PAGES: usize = 64;

impl WorkingSet {
    /// Runs of adjacent pages, in order: (first offset, pages).
    pub fn runs(&self) -> impl Iterator<Item = (u64, usize)> + '_ {
        runs_of(&self.offsets)
    }

    /// Reads the pages in order, a chunk at a time, and hands each run (or
    /// the part of one inside a chunk) to `each` with its offset.
    pub fn install(
        &self,
        mut each: impl FnMut(u64, &[u8]) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut buffer = vec![0u8; CHUNK_PAGES * PAGE];
        for (index, offsets) in self.offsets.chunks(CHUNK_PAGES).enumerate() {
            let chunk = &mut buffer[..offsets.len() * PAGE];
            let at = self.pages_at + (index * CHUNK_PAGES * PAGE) as u64;
            self.file
                .read_exact_at(chunk, at)
                .map_err(|e| format!("reading its pages: {e}"))?;
            let mut first = 0;
            for (offset, pages) in runs_of(offsets) {
                each(offset, &chunk[first * PAGE..(first + pages) * PAGE])?;
                first += pages;
            }
        }
        Ok(())
    }
}

/// Runs of adjacent page offsets: (first offset, pages).
fn runs_of(offsets: &[u64]) -> impl Iterator<Item = (u64, usize)> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start >= offsets.len() {
            return None;
        }
        let mut end = start + 1;
        while end < offsets.len() && offsets[end] == offsets[end - 1] + PAGE as u64 {
            end += 1;
        }
        let run = (offsets[start], end - start);
        start = end;
        Some(run)
    })
}

/// Writes a working set to `path` crash-safely.
pub fn write(path: &Path, identity: Identity, offsets: &[u64], pages: &[u8]) -> io::Result<()> {
    debug_assert_eq!(offsets.len() * PAGE, pages.len());
    let mut bytes = Vec::with_capacity(HEADER + offsets.len() * (8 + PAGE) + DIGEST);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&identity.len.to_le_bytes());
    bytes.extend_from_slice(&identity.mtime_ns.to_le_bytes());
    bytes.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    for offset in offsets {
        bytes.extend_from_slice(&offset.to_le_bytes());
    }
    bytes.extend_from_slice(pages);
    let digest = XxHash3_64::oneshot(&bytes);
    bytes.extend_from_slice(&digest.to_le_bytes());
    write_durably(path, |file| file.write_all(&bytes))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Checks the working-set file `file` against the memory file it must
/// belong to; says in one line why it cannot be used.
fn check(file: File, identity: Identity) -> Result<WorkingSet, String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut header = [0u8; HEADER];
    if len < (HEADER + DIGEST) as u64 || file.read_exact_at(&mut header, 0).is_err() {
        return Err("not a sie working-set file".into());
    }
    if &header[..8] != MAGIC {
        return Err("not a sie working-set file".into());
    }
    let count = u64_at(&header, 24);
    let body_len = count
        .checked_mul(8 + PAGE as u64)
        .and_then(|n| n.checked_add(HEADER as u64));
    let Some(body_len) = body_len.filter(|n| n.checked_add(DIGEST as u64) == Some(len)) else {
        return Err(format!("truncated or padded ({count} pages)"));
    };
    // The whole body through the checksum, a chunk at a time.
    let mut hasher = XxHash3_64::default();
    let mut buffer = vec![0u8; CHUNK_PAGES * PAGE];
    let mut at = 0;
    while at < body_len {
        let chunk = &mut buffer[..(body_len - at).min((CHUNK_PAGES * PAGE) as u64) as usize];
        file.read_exact_at(chunk, at).map_err(|e| e.to_string())?;
        hasher.write(chunk);
        at += chunk.len() as u64;
    }
    let mut digest = [0u8; DIGEST];
    file.read_exact_at(&mut digest, body_len)
        .map_err(|e| e.to_string())?;
    if hasher.finish().to_le_bytes() != digest {
        return Err("damaged (checksum mismatch)".into());
    }
    let recorded = Identity {
        len: u64_at(&header, 8),
        mtime_ns: u64_at(&header, 16),
    };
    if recorded != identity {
        return Err("recorded from another memory file (size or mtime differ)".into());
    }
    let count = count as usize;
    let mut table = vec![0u8; count * 8];
    file.read_exact_at(&mut table, HEADER as u64)
        .map_err(|e| e.to_string())?;
    let offsets: Vec<u64> = (0..count).map(|i| u64_at(&table, i * 8)).collect();
    for &offset in &offsets {
        if offset % PAGE as u64 != 0 || offset.saturating_add(PAGE as u64) > identity.len {
            return Err(format!("page offset {offset:#x} outside the memory file"));
        }
    }
    Ok(WorkingSet {
        offsets,
        file,
        pages_at: (HEADER + count * 8) as u64,
    })
}

/// Reads and checks the working set at `path`: `Ok(None)` if there is
/// none, `Err(why)` if there is one that cannot be used.
pub fn read(path: &Path, identity: Identity) -> Result<Option<WorkingSet>, String> {
    match File::open(path) {
        Ok(file) => check(file, identity).map(Some),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity {
            len: 1 << 20,
            mtime_ns: 42,
        }
    }

    #[test]
    fn a_working_set_reads_back_and_groups_adjacent_pages() {
        let path = std::env::temp_dir().join(format!("sie-ws-{}", std::process::id()));
        let offsets = [0x5000, 0x6000, 0x1000, 0x7000];
        let mut pages = vec![0u8; 4 * PAGE];
        for (i, page) in pages.chunks_mut(PAGE).enumerate() {
            page.fill(i as u8 + 1);
        }
        write(&path, identity(), &offsets, &pages).unwrap();
        let set = read(&path, identity()).unwrap().unwrap();
        assert_eq!(set.offsets, offsets);
        assert_eq!(
            installed(&set),
            [(0x5000, 2 * PAGE, 1), (0x1000, PAGE, 3), (0x7000, PAGE, 4)]
        );
        let runs: Vec<(u64, usize)> = set.runs().collect();
        assert_eq!(runs, [(0x5000, 2), (0x1000, 1), (0x7000, 1)]);
        std::fs::remove_file(&path).unwrap();
        assert!(
            read(&path, identity()).unwrap().is_none(),
            "none is no error"
        );
    }

    /// What `install` hands over: (offset, bytes, first byte) per piece.
    fn installed(set: &WorkingSet) -> Vec<(u64, usize, u8)> {
        let mut pieces = Vec::new();
        set.install(|offset, bytes| {
            pieces.push((offset, bytes.len(), bytes[0]));
            Ok(())
        })
        .unwrap();
        pieces
    }

    #[test]
    fn a_working_set_larger_than_a_chunk_installs_every_page_in_place() {
        let path = std::env::temp_dir().join(format!("sie-ws-big-{}", std::process::id()));
        // 150 pages: one run of 100 (across the first chunk's end), then
        // 50 pages going backwards (runs of one).
        let mut offsets: Vec<u64> = (10..110).map(|p| p * PAGE as u64).collect();
        offsets.extend((200..250).rev().map(|p| p * PAGE as u64));
        let mut pages = vec![0u8; offsets.len() * PAGE];
        for (page, &offset) in pages.chunks_mut(PAGE).zip(&offsets) {
            page.fill((offset / PAGE as u64) as u8);
        }
        write(&path, identity(), &offsets, &pages).unwrap();
        let set = read(&path, identity()).unwrap().unwrap();
        let mut seen = Vec::new();
        set.install(|offset, bytes| {
            for (i, page) in bytes.chunks(PAGE).enumerate() {
                let at = offset + (i * PAGE) as u64;
                assert!(
                    page.iter().all(|&b| b == (at / PAGE as u64) as u8),
                    "{at:#x}"
                );
                seen.push(at);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, offsets);
        std::fs::remove_file(&path).unwrap();
    }

    /// `read` of a file holding `bytes`.
    fn decode(bytes: Vec<u8>, identity: Identity) -> Result<WorkingSet, String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sie-ws-dec-{}-{n}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        let read = read(&path, identity).map(|set| set.expect("a file"));
        std::fs::remove_file(&path).unwrap();
        read
    }

    #[test]
    fn damaged_short_and_stale_working_sets_are_refused_by_name() {
        let path = std::env::temp_dir().join(format!("sie-ws-bad-{}", std::process::id()));
        write(&path, identity(), &[0x2000], &[9u8; PAGE]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let mut flipped = bytes.clone();
        flipped[HEADER + 100] ^= 1;
        assert!(decode(flipped, identity()).unwrap_err().contains("damaged"));
        let short = &bytes[..bytes.len() - 10];
        assert!(
            decode(short.to_vec(), identity())
                .unwrap_err()
                .contains("truncated")
        );
        assert!(
            decode(bytes[..5].to_vec(), identity())
                .unwrap_err()
                .contains("not a sie")
        );
        let other = Identity {
            len: 1 << 20,
            mtime_ns: 43,
        };
        assert!(
            decode(bytes.clone(), other)
                .unwrap_err()
                .contains("another memory file")
        );
        let tiny = Identity {
            len: 0x2000,
            mtime_ns: 42,
        };
        let mut moved = Vec::new();
        moved.extend_from_slice(MAGIC);
        moved.extend_from_slice(&tiny.len.to_le_bytes());
        moved.extend_from_slice(&tiny.mtime_ns.to_le_bytes());
        moved.extend_from_slice(&1u64.to_le_bytes());
        moved.extend_from_slice(&0x2000u64.to_le_bytes());
        moved.extend_from_slice(&[0u8; PAGE]);
        let digest = XxHash3_64::oneshot(&moved);
        moved.extend_from_slice(&digest.to_le_bytes());
        assert!(decode(moved, tiny).unwrap_err().contains("outside"));
    }
}
