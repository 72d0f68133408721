//! Cache eviction: after each new entry, keep the [`MAX_ENTRIES`] most
//! recently used entries and drop any unused for [`MAX_IDLE`]. An entry's
//! last use is its vmlinux's modification time, which a hit sets to now.
//!
//! Only names this cache writes are touched (`<64 hex>.vmlinux`, `.record`,
//! the older `.compression`, and `.tmp-*`), so a cache directory pointed at
//! a shared place loses nothing else. Files another sie process may be
//! writing right now (temporaries, a record whose vmlinux is about to be
//! renamed into place) are left alone until [`STALE_AFTER`].

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Entries kept, the newest by last use: a handful of kernels being
/// switched between stay cached, while each costs a whole vmlinux (63 MiB
/// for Debian 12's 6.1 kernel), so the cache stays around half a GiB.
pub const MAX_ENTRIES: usize = 8;
/// An entry unused this long (30 days) is dropped even when fewer than
/// [`MAX_ENTRIES`] exist: its kernel has most likely been upgraded away.
pub const MAX_IDLE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A temporary or lone record older than this belongs to no live writer.
pub(super) const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// The kind of a file in the cache directory, from its name.
#[derive(Debug, PartialEq, Eq)]
enum Name<'a> {
    /// `<key>.vmlinux`.
    Vmlinux(&'a str),
    /// `<key>.record` or `<key>.compression`: belongs to a vmlinux.
    Beside(&'a str),
    /// `.tmp-*`: a file being written.
    Temporary,
    /// Anything else: not ours.
    Foreign,
}

fn classify(name: &str) -> Name<'_> {
    if name.starts_with(".tmp-") {
        return Name::Temporary;
    }
    let Some((key, extension)) = name.split_once('.') else {
        return Name::Foreign;
    };
    let is_key = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    match extension {
        "vmlinux" if is_key => Name::Vmlinux(key),
        "record" | "compression" if is_key => Name::Beside(key),
        _ => Name::Foreign,
    }
}

/// How long ago `path` was modified, as of `now` (zero if in the future).
fn age(path: &Path, now: SystemTime) -> Option<Duration> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(now.duration_since(modified).unwrap_or(Duration::ZERO))
}

/// Removes the entry `key` from `dir`.
fn remove_entry(dir: &Path, key: &str) {
    for extension in ["vmlinux", "record", "compression"] {
        let _ = std::fs::remove_file(dir.join(format!("{key}.{extension}")));
    }
}

/// Evicts entries of the cache in `dir` as of `now`, never the entry
/// `newest` (just written). Best effort: a file that cannot be listed or
/// removed stays.
pub(super) fn evict(dir: &Path, newest: &str, now: SystemTime) {
    let Ok(listing) = std::fs::read_dir(dir) else {
        return;
    };
    let names: Vec<String> = listing
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    let mut entries: Vec<(Duration, &str)> = Vec::new();
    for name in &names {
        match classify(name) {
            Name::Vmlinux(key) if key != newest => {
                if let Some(age) = age(&dir.join(name), now) {
                    entries.push((age, key));
                }
            }
            Name::Temporary if age(&dir.join(name), now).is_some_and(|a| a > STALE_AFTER) => {
                let _ = std::fs::remove_file(dir.join(name));
            }
            _ => {}
        }
    }
    // Youngest first; the newest entry takes one of the places.
    entries.sort();
    let mut kept: HashSet<&str> = HashSet::from([newest]);
    for (rank, (age, key)) in entries.into_iter().enumerate() {
        if rank + 1 < MAX_ENTRIES && age <= MAX_IDLE {
            kept.insert(key);
        } else {
            remove_entry(dir, key);
        }
    }
    // Records whose vmlinux is gone (removed by hand, or by an older sie).
    for name in &names {
        if let Name::Beside(key) = classify(name)
            && !kept.contains(key)
            && age(&dir.join(name), now).is_some_and(|a| a > STALE_AFTER)
        {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::path::PathBuf;

    const HOUR: Duration = Duration::from_secs(60 * 60);

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sie-evict-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key(i: usize) -> String {
        format!("{i:064x}")
    }

    /// Writes `dir/name`, last modified `ago` before `now`.
    fn file(dir: &Path, name: &str, now: SystemTime, ago: Duration) {
        let path = dir.join(name);
        std::fs::write(&path, name).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(now - ago)
            .unwrap();
    }

    /// An entry (vmlinux and record) last used `ago` before `now`.
    fn entry(dir: &Path, i: usize, now: SystemTime, ago: Duration) {
        file(dir, &format!("{}.vmlinux", key(i)), now, ago);
        file(dir, &format!("{}.record", key(i)), now, ago);
    }

    fn exists(dir: &Path, name: String) -> bool {
        dir.join(name).exists()
    }

    #[test]
    fn the_newest_entries_are_kept_and_the_rest_removed() {
        let dir = scratch("count");
        let now = SystemTime::now();
        // Entry 0 was just written; 1..=10 were used 1..=10 hours ago.
        entry(&dir, 0, now, Duration::ZERO);
        for i in 1..=10 {
            entry(&dir, i, now, HOUR * i as u32);
        }
        evict(&dir, &key(0), now);
        for i in 0..MAX_ENTRIES {
            assert!(exists(&dir, format!("{}.vmlinux", key(i))), "entry {i}");
            assert!(exists(&dir, format!("{}.record", key(i))), "record {i}");
        }
        for i in MAX_ENTRIES..=10 {
            assert!(!exists(&dir, format!("{}.vmlinux", key(i))), "entry {i}");
            assert!(!exists(&dir, format!("{}.record", key(i))), "record {i}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_entry_just_written_is_kept_even_when_its_time_is_older() {
        let dir = scratch("newest");
        let now = SystemTime::now();
        // A coarse clock can give the new entry an older time than others.
        entry(&dir, 0, now, HOUR * 100);
        for i in 1..=MAX_ENTRIES {
            entry(&dir, i, now, HOUR);
        }
        evict(&dir, &key(0), now);
        assert!(exists(&dir, format!("{}.vmlinux", key(0))));
        let left = (1..=MAX_ENTRIES)
            .filter(|&i| exists(&dir, format!("{}.vmlinux", key(i))))
            .count();
        assert_eq!(left, MAX_ENTRIES - 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn entries_idle_too_long_are_removed_even_when_few() {
        let dir = scratch("idle");
        let now = SystemTime::now();
        entry(&dir, 0, now, Duration::ZERO);
        entry(&dir, 1, now, MAX_IDLE - HOUR);
        entry(&dir, 2, now, MAX_IDLE + HOUR);
        evict(&dir, &key(0), now);
        assert!(exists(&dir, format!("{}.vmlinux", key(1))));
        assert!(!exists(&dir, format!("{}.vmlinux", key(2))));
        assert!(!exists(&dir, format!("{}.record", key(2))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn stale_leftovers_go_and_live_writes_and_foreign_files_stay() {
        let dir = scratch("leftovers");
        let now = SystemTime::now();
        entry(&dir, 0, now, Duration::ZERO);
        file(&dir, ".tmp-1-1", now, STALE_AFTER + HOUR);
        file(&dir, ".tmp-2-1", now, Duration::ZERO);
        file(&dir, &format!("{}.record", key(7)), now, STALE_AFTER + HOUR);
        file(
            &dir,
            &format!("{}.compression", key(8)),
            now,
            STALE_AFTER + HOUR,
        );
        file(&dir, &format!("{}.record", key(9)), now, Duration::ZERO);
        file(&dir, "notes.txt", now, MAX_IDLE * 2);
        file(&dir, "abc.vmlinux", now, MAX_IDLE * 2);
        evict(&dir, &key(0), now);
        assert!(!exists(&dir, ".tmp-1-1".into()));
        assert!(exists(&dir, ".tmp-2-1".into()));
        assert!(!exists(&dir, format!("{}.record", key(7))));
        assert!(!exists(&dir, format!("{}.compression", key(8))));
        assert!(
            exists(&dir, format!("{}.record", key(9))),
            "a write in flight"
        );
        assert!(exists(&dir, "notes.txt".into()));
        assert!(exists(&dir, "abc.vmlinux".into()));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn names_are_classified_strictly() {
        let k = key(1);
        assert_eq!(classify(&format!("{k}.vmlinux")), Name::Vmlinux(&k));
        assert_eq!(classify(&format!("{k}.record")), Name::Beside(&k));
        assert_eq!(classify(&format!("{k}.compression")), Name::Beside(&k));
        assert_eq!(classify(".tmp-9-ThreadId(2)"), Name::Temporary);
        assert_eq!(classify(&format!("{k}.vmlinux.bak")), Name::Foreign);
        assert_eq!(classify(&format!("{}.vmlinux", &k[1..])), Name::Foreign);
        assert_eq!(classify(&format!("{}g.vmlinux", &k[1..])), Name::Foreign);
        assert_eq!(classify("vmlinux"), Name::Foreign);
    }
}
