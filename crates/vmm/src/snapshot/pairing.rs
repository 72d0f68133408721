//! Which memory file belongs to which snapshot file.
//!
//! A snapshot is two files, and no rename replaces two files at once: a
//! kill between the memory file's rename and the snapshot file's leaves a
//! new memory file beside the old snapshot. So every create draws a random
//! pair id, records it in the snapshot and in the memory file's extended
//! attribute `user.sie.snapshot`, set before that file is renamed into
//! place; a restore refuses a memory file that carries another id. A file
//! without the attribute (copied without xattrs, or on a filesystem
//! without them) is not refused: there is nothing to compare.

use std::fs::File;
use std::io;
use std::path::Path;

/// The extended attribute that carries the pair id.
pub const ATTRIBUTE: &str = "user.sie.snapshot";

/// A new pair id: 128 random bits in hex.
pub fn new_id() -> io::Result<String> {
    let bytes = crate::vmgenid::random_id()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Marks `file` (the memory file, before its rename) with `id`. A
/// filesystem without user xattrs is not an error: the check is skipped
/// there.
pub fn tag(file: &File, id: &str) -> io::Result<()> {
    use xattr::FileExt;
    match file.set_xattr(ATTRIBUTE, id.as_bytes()) {
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
        other => other,
    }
}

/// The id a rebase in progress leaves on its base: no snapshot has it, so
/// a base a crashed rebase left half merged is refused by both snapshots.
pub const REBASING: &str = "rebase-in-progress";

/// The pair id `file` carries, if any (None also where xattrs are not
/// supported).
pub fn read(file: &File) -> io::Result<Option<String>> {
    use xattr::FileExt;
    match file.get_xattr(ATTRIBUTE) {
        Ok(value) => Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Gives `file` the pair id `id`, or none.
pub fn retag(file: &File, id: Option<&str>) -> io::Result<()> {
    use xattr::FileExt;
    match id {
        Some(id) => tag(file, id),
        None => match file.remove_xattr(ATTRIBUTE) {
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                Ok(())
            }
            other => other,
        },
    }
}

/// Checks that the memory file at `path` belongs to the snapshot whose
/// pair id is `expected` (None for snapshots written before pair ids).
pub fn check(path: &Path, expected: Option<&str>) -> Result<(), String> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let found = match xattr::get(path, ATTRIBUTE) {
        Ok(Some(found)) => found,
        // No attribute or no xattrs here: nothing to compare.
        Ok(None) => return Ok(()),
        Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(error) => return Err(format!("memory file {}: {error}", path.display())),
    };
    if found == expected.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "memory file {} belongs to another snapshot (pair id {}, the snapshot wants {expected})",
            path.display(),
            String::from_utf8_lossy(&found)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_file_of_another_snapshot_is_refused_and_an_untagged_one_is_not() {
        let dir = std::env::temp_dir().join(format!("sie-pairing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mem");
        let file = File::create(&path).unwrap();
        assert!(check(&path, Some("abc")).is_ok(), "untagged");
        let id = new_id().unwrap();
        assert_eq!(id.len(), 32);
        assert_ne!(id, new_id().unwrap());
        tag(&file, &id).unwrap();
        // The temporary directory is on a filesystem with user xattrs
        // (ext4, tmpfs) on every machine these tests run on.
        assert_eq!(
            xattr::get(&path, ATTRIBUTE).unwrap(),
            Some(id.clone().into_bytes())
        );
        assert!(check(&path, Some(&id)).is_ok());
        let error = check(&path, Some("0123")).unwrap_err();
        assert!(error.contains("belongs to another snapshot"), "{error}");
        assert!(check(&path, None).is_ok(), "an old snapshot has no id");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
