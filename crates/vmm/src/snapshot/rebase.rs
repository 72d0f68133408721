//! `sie snapshot rebase DIFF BASE`: a Diff memory file merged onto the
//! memory file it was taken after, so the base then restores the VM as the
//! Diff's snapshot file describes it.
//!
//! Every data extent of the Diff (found with `SEEK_DATA`/`SEEK_HOLE`, so
//! the holes are never read) is copied to the base at the same offset; the
//! Diff's holes leave the base as it was. The base is fsynced before the
//! call returns, and then carries the Diff's pair id (see
//! [`super::pairing`]); while the merge runs it carries one no snapshot
//! has, so a base a crash left half merged restores nothing.
//!
//! ```no_run
//! let copied = sie_vmm::snapshot::rebase::rebase(
//!     "diff.mem".as_ref(),
//!     "base.mem".as_ref(),
//! )?;
//! println!("{copied} bytes merged");
//! # Ok::<(), sie_vmm::snapshot::rebase::RebaseError>(())
//! ```

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Bytes copied per read and write.
const CHUNK: usize = 1 << 20;

/// Why a rebase did not happen (or did not finish).
#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    /// A file could not be opened, read or written.
    #[error("{what} {path}")]
    Io {
        /// "diff memory file" or "base memory file".
        what: &'static str,
        /// Its path.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// The two files are not the memory of the same VM.
    #[error(
        "diff memory file {diff} has {diff_len} bytes but base memory file {base} has {base_len}: not the same VM's memory"
    )]
    SizeMismatch {
        /// The diff's path.
        diff: String,
        /// Its size.
        diff_len: u64,
        /// The base's path.
        base: String,
        /// Its size.
        base_len: u64,
    },
}

/// Copies every data extent of `diff` onto `base` at the same offsets and
/// fsyncs `base`. Returns the bytes copied. Nothing is written unless both
/// files open and have the same size.
pub fn rebase(diff: &Path, base: &Path) -> Result<u64, RebaseError> {
    let diff_error = |source| RebaseError::Io {
        what: "diff memory file",
        path: diff.display().to_string(),
        source,
    };
    let base_error = |source| RebaseError::Io {
        what: "base memory file",
        path: base.display().to_string(),
        source,
    };
    let diff_file = File::open(diff).map_err(diff_error)?;
    let base_file = OpenOptions::new()
        .write(true)
        .open(base)
        .map_err(base_error)?;
    let diff_len = diff_file.metadata().map_err(diff_error)?.len();
    let base_len = base_file.metadata().map_err(base_error)?.len();
    if diff_len != base_len {
        return Err(RebaseError::SizeMismatch {
            diff: diff.display().to_string(),
            diff_len,
            base: base.display().to_string(),
            base_len,
        });
    }
    // Until the merge is complete the base belongs to neither snapshot: a
    // crash partway leaves a file both refuse rather than one that
    // restores into a mixture.
    let diff_pair = super::pairing::read(&diff_file).map_err(diff_error)?;
    super::pairing::tag(&base_file, super::pairing::REBASING).map_err(base_error)?;
    base_file.sync_all().map_err(base_error)?;
    let mut copied = 0u64;
    let mut buffer = vec![0u8; CHUNK];
    for (start, end) in
        super::memory_file::data_extents(&diff_file, diff_len).map_err(diff_error)?
    {
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at).unwrap_or(CHUNK).min(CHUNK);
            let chunk = &mut buffer[..want];
            diff_file.read_exact_at(chunk, at).map_err(diff_error)?;
            base_file.write_all_at(chunk, at).map_err(base_error)?;
            at += want as u64;
        }
        copied += end - start;
    }
    base_file.sync_all().map_err(base_error)?;
    // The base now holds the Diff snapshot's memory: it pairs with that
    // snapshot file from here on.
    super::pairing::retag(&base_file, diff_pair.as_deref()).map_err(base_error)?;
    base_file.sync_all().map_err(base_error)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::snapshot::memory_file::data_extents;

    const PAGE: u64 = 4096;
    const SIZE: u64 = 1 << 20;

    fn sparse(path: &Path, pages: &[(u64, u8)]) {
        let file = File::create(path).unwrap();
        file.set_len(SIZE).unwrap();
        for &(page, byte) in pages {
            file.write_all_at(&[byte; PAGE as usize], page * PAGE)
                .unwrap();
        }
    }

    fn page_of(path: &Path, page: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; PAGE as usize];
        File::open(path)
            .unwrap()
            .read_exact_at(&mut bytes, page * PAGE)
            .unwrap();
        bytes
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sie-rebase-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_rebased_base_pairs_with_the_diffs_snapshot() {
        use crate::snapshot::pairing;
        let dir = dir("pair");
        let (diff, base) = (dir.join("diff"), dir.join("base"));
        sparse(&base, &[(1, 0xb1)]);
        sparse(&diff, &[(2, 0xd2)]);
        pairing::tag(&File::open(&base).unwrap(), "base-id").unwrap();
        pairing::tag(&File::open(&diff).unwrap(), "diff-id").unwrap();
        rebase(&diff, &base).unwrap();
        assert!(pairing::check(&base, Some("diff-id")).is_ok());
        assert!(pairing::check(&base, Some("base-id")).is_err());
        // A diff without a pair id leaves the base without one.
        pairing::retag(&File::open(&diff).unwrap(), None).unwrap();
        rebase(&diff, &base).unwrap();
        assert_eq!(pairing::read(&File::open(&base).unwrap()).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_diffs_pages_replace_the_bases_and_its_holes_change_nothing() {
        let dir = dir("merge");
        let (diff, base) = (dir.join("diff"), dir.join("base"));
        sparse(&base, &[(1, 0xb1), (2, 0xb2), (9, 0xb9)]);
        // Page 2 written again, page 5 new, page 9 zeroed (a written page
        // of zeros is data in a Diff, and must reach the base).
        sparse(&diff, &[(2, 0xd2), (5, 0xd5), (9, 0)]);
        assert_eq!(rebase(&diff, &base).unwrap(), 3 * PAGE);
        assert_eq!(page_of(&base, 1), vec![0xb1; 4096], "a hole in the diff");
        assert_eq!(page_of(&base, 2), vec![0xd2; 4096]);
        assert_eq!(page_of(&base, 5), vec![0xd5; 4096]);
        assert_eq!(page_of(&base, 9), vec![0; 4096]);
        assert_eq!(page_of(&base, 3), vec![0; 4096]);
        let extents = data_extents(&File::open(&base).unwrap(), SIZE).unwrap();
        let data: u64 = extents.iter().map(|(s, e)| e - s).sum();
        assert!(data <= 8 * PAGE, "holes in both stay holes: {extents:?}");
        assert!(std::fs::metadata(&base).unwrap().blocks() * 512 < SIZE / 4);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn files_of_different_sizes_are_refused_and_the_base_is_untouched() {
        let dir = dir("size");
        let (diff, base) = (dir.join("diff"), dir.join("base"));
        sparse(&base, &[(1, 0xb1)]);
        sparse(&diff, &[(1, 0xd1)]);
        File::options()
            .write(true)
            .open(&diff)
            .unwrap()
            .set_len(SIZE + PAGE)
            .unwrap();
        let error = rebase(&diff, &base).unwrap_err().to_string();
        assert!(error.contains("not the same VM's memory"), "{error}");
        assert_eq!(page_of(&base, 1), vec![0xb1; 4096]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = dir("missing");
        let (diff, base) = (dir.join("diff"), dir.join("base"));
        sparse(&base, &[]);
        let error = rebase(&diff, &base).unwrap_err().to_string();
        assert!(error.starts_with("diff memory file"), "{error}");
        let error = rebase(&base, &dir.join("nope")).unwrap_err().to_string();
        assert!(error.starts_with("base memory file"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
