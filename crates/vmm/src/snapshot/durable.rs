//! Crash-safe file replacement: write a temporary file in the same
//! directory, fsync it, rename it over the target, fsync the directory. A
//! crash or kill at any moment leaves either the old file or the new one
//! at the path, never a half-written one.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// The temporary name next to `path` (hidden, with the writer's pid so two
/// writers never share one).
fn temporary_path(path: &Path) -> io::Result<PathBuf> {
    sibling_path(path, "tmp")
}

/// `.NAME.KIND-PID` beside `path`: a writer's own hidden sibling.
fn sibling_path(path: &Path, kind: &str) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut sibling = std::ffi::OsString::from(".");
    sibling.push(name);
    sibling.push(format!(".{kind}-{}", std::process::id()));
    Ok(path.with_file_name(sibling))
}

fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Whether a process with this pid exists (in our pid namespace).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks the pid.
    let result = unsafe { libc::kill(pid, 0) };
    result == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// Removes the temporaries that writers of `path` killed mid-write left
/// behind (their pid is gone); a live writer's file is left alone.
pub fn remove_stale_temporaries(path: &Path) {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(directory_of(path)) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let pid = file_name
            .to_str()
            .and_then(|n| n.strip_prefix('.')?.strip_prefix(name))
            .and_then(|rest| rest.strip_prefix(".tmp-").or(rest.strip_prefix(".old-")))
            .and_then(|pid| pid.parse::<i32>().ok());
        if pid.is_some_and(|pid| pid > 0 && !process_alive(pid)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file written and fsynced under its temporary name, waiting to be
/// renamed over its path: staging every file of a snapshot before the first
/// rename keeps the moment when some are new and some old down to the
/// renames themselves. Dropped uncommitted, it removes its temporary.
#[derive(Debug)]
pub struct Staged {
    temporary: PathBuf,
    path: PathBuf,
    committed: bool,
}

impl Staged {
    /// Renames the file over its path and fsyncs the directory.
    pub fn commit(self) -> io::Result<()> {
        commit_all(vec![self])
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Leave nothing behind but what was at the path before.
            let _ = std::fs::remove_file(&self.temporary);
        }
    }
}

/// Renames every staged file over its path, one right after the other,
/// then fsyncs their directories.
pub fn commit_all(files: Vec<Staged>) -> io::Result<()> {
    let mut directories: Vec<PathBuf> = Vec::new();
    for mut file in files {
        std::fs::rename(&file.temporary, &file.path)?;
        file.committed = true;
        let directory = directory_of(&file.path).to_path_buf();
        if !directories.contains(&directory) {
            directories.push(directory);
        }
    }
    for directory in directories {
        File::open(directory)?.sync_all()?;
    }
    Ok(())
}

/// [`commit_all`] for files that must change together (a snapshot's two
/// files): the files being replaced keep a second name until every rename
/// is done. A rename that drops an old file's last link frees its blocks
/// inside the rename, which makes it slow: a wider moment for a kill to
/// fall between two renames. The old files are freed after, with their
/// second names, by the returned [`Replaced`].
pub fn replace_all(files: Vec<Staged>) -> io::Result<Replaced> {
    let kept: Vec<PathBuf> = files
        .iter()
        .filter_map(|file| {
            let keep = sibling_path(&file.path, "old").ok()?;
            let _ = std::fs::remove_file(&keep);
            std::fs::hard_link(&file.path, &keep).ok().map(|()| keep)
        })
        .collect();
    let replaced = Replaced { kept };
    commit_all(files)?;
    Ok(replaced)
}

/// The old files [`replace_all`] kept under a second name, removed when
/// this is dropped. Freeing a large file's blocks takes tens of
/// milliseconds (ext4 with `discard`), which a paused VM's snapshot need
/// not wait for: the caller may hold this until the VM runs again. Drop it
/// before the next [`replace_all`] of the same paths (the names are
/// reused). A kill before it is dropped leaves names that
/// [`remove_stale_temporaries`] clears on the next write.
#[derive(Debug)]
#[must_use = "the old files go when this is dropped"]
pub struct Replaced {
    kept: Vec<PathBuf>,
}

impl Drop for Replaced {
    fn drop(&mut self) {
        remove_files(&self.kept);
    }
}

fn remove_files(paths: &[PathBuf]) {
    for path in paths {
        let _ = std::fs::remove_file(path);
    }
}

/// Writes what `fill` writes to a temporary beside `path` and fsyncs it;
/// [`Staged::commit`] puts it in place.
pub fn stage(path: &Path, fill: impl FnOnce(&mut File) -> io::Result<()>) -> io::Result<Staged> {
    let staged = Staged {
        temporary: temporary_path(path)?,
        path: path.to_path_buf(),
        committed: false,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&staged.temporary)?;
    fill(&mut file)?;
    file.sync_all()?;
    Ok(staged)
}

/// Replaces `path` with what `fill` writes, durably.
pub fn write_durably(
    path: &Path,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    stage(path, fill)?.commit()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("sie-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap");
        write_durably(&path, |f| f.write_all(b"first")).unwrap();
        let failed = write_durably(&path, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk gone"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        write_durably(&path, |f| f.write_all(b"second")).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_killed_writers_files_are_removed_and_replace_all_keeps_nothing_old() {
        let dir = std::env::temp_dir().join(format!("sie-durable-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snap");
        // pid_max is at most 2^22: this pid never exists.
        let stale = dir.join(".snap.tmp-2147483647");
        let stale_old = dir.join(".snap.old-2147483647");
        let other = dir.join(".other.tmp-2147483647");
        for file in [&stale, &stale_old, &other] {
            std::fs::write(file, b"half").unwrap();
        }
        remove_stale_temporaries(&path);
        assert!(!stale.exists(), "a dead writer's temporary is gone");
        assert!(!stale_old.exists(), "and the old file it kept");
        write_durably(&path, |f| f.write_all(b"first")).unwrap();
        let replaced = replace_all(vec![stage(&path, |f| f.write_all(b"newer")).unwrap()]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert!(
            dir.join(".snap.old-".to_string() + &std::process::id().to_string())
                .exists(),
            "the old file is kept until removed"
        );
        drop(replaced);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            2,
            "nothing kept but the file (and the other's temporary)"
        );
        assert!(other.exists(), "another file's temporary is not ours");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
