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
