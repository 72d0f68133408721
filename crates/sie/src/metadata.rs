//! The metadata store a VM starts with: `--mmds-size-limit` bytes at most,
//! filled from `--metadata FILE` (JSON), for `sie run` and Firecracker's
//! flags alike.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why the metadata file was refused.
#[derive(Debug, thiserror::Error)]
#[error("--metadata {path} (MMDS contents): {why}", path = .path.display())]
pub struct MetadataError {
    path: PathBuf,
    why: String,
}

/// `--mmds-size-limit` out of range (zero, or past the address space).
#[derive(Debug, thiserror::Error)]
#[error("--mmds-size-limit {0} is out of range (1 byte or more)")]
pub struct SizeLimitError(pub u64);

/// The store's limit: `--mmds-size-limit` if given, else `default`.
pub fn size_limit(given: Option<u64>, default: usize) -> Result<usize, SizeLimitError> {
    match given {
        Some(size) => usize::try_from(size)
            .ok()
            .filter(|&n| n > 0)
            .ok_or(SizeLimitError(size)),
        None => Ok(default),
    }
}

/// A store of at most `limit` bytes, holding `file`'s JSON if given.
pub fn store(file: Option<&Path>, limit: usize) -> Result<sie_mmds::SharedMmds, MetadataError> {
    let mut mmds = sie_mmds::Mmds::new(limit);
    if let Some(path) = file {
        let fail = |why: String| MetadataError {
            path: path.to_path_buf(),
            why,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let data: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| fail(format!("not JSON: {e}")))?;
        mmds.put(data).map_err(|e| fail(e.to_string()))?;
    }
    Ok(Arc::new(Mutex::new(mmds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_limit_is_the_flag_or_the_default_and_never_zero() {
        assert_eq!(size_limit(None, 51200).unwrap(), 51200);
        assert_eq!(size_limit(Some(4096), 51200).unwrap(), 4096);
        let error = size_limit(Some(0), 51200).unwrap_err().to_string();
        assert!(error.contains("--mmds-size-limit 0"), "{error}");
    }

    #[test]
    fn a_store_refuses_contents_over_its_limit() {
        let dir = std::env::temp_dir().join(format!("sie-metadata-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("big.json");
        std::fs::write(&file, format!("{{\"key\": \"{}\"}}", "x".repeat(200))).unwrap();
        let error = store(Some(&file), 100).unwrap_err().to_string();
        assert!(error.starts_with("--metadata "), "{error}");
        assert!(store(Some(&file), 1000).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
