//! Resource ids (`drive_id`, `iface_id`): what Firecracker accepts.

/// Longest id, in characters.
pub const MAX_ID_LEN: usize = 64;

/// Why an id is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Empty or longer than [`MAX_ID_LEN`].
    #[error("{field} {id:?} must be 1 to {MAX_ID_LEN} characters")]
    Length {
        /// Which field.
        field: &'static str,
        /// The id.
        id: String,
    },
    /// A character outside `[A-Za-z0-9_]` (`[A-Za-z0-9_-]` for instance ids).
    #[error("{field} {id:?} may contain only letters, digits, '_' and (instance ids only) '-'")]
    Character {
        /// Which field.
        field: &'static str,
        /// The id.
        id: String,
    },
}

/// Checks an id: 1..=64 characters of `[A-Za-z0-9_]`.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() || id.chars().count() > MAX_ID_LEN {
        return Err(IdError::Length {
            field,
            id: id.to_string(),
        });
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(IdError::Character {
            field,
            id: id.to_string(),
        });
    }
    Ok(())
}

/// Checks an instance id (`--id`): 1..=64 characters of `[A-Za-z0-9_-]`.
/// Firecracker allows hyphens here (orchestrators pass UUIDs), unlike in
/// resource ids.
pub fn validate_instance_id(id: &str) -> Result<(), IdError> {
    let field = "--id";
    validate_id(field, &id.replace('-', "_")).map_err(|_| {
        match id.is_empty() || id.chars().count() > MAX_ID_LEN {
            true => IdError::Length {
                field,
                id: id.to_string(),
            },
            false => IdError::Character {
                field,
                id: id.to_string(),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_ids_may_be_uuids() {
        assert!(super::validate_instance_id("4f3c9a7e-1b2d-4c5e-8f90-a1b2c3d4e5f6").is_ok());
        assert!(super::validate_instance_id("bad id").is_err());
        assert!(super::validate_instance_id("").is_err());
    }

    use super::*;

    #[test]
    fn ids_are_short_and_plain() {
        assert!(validate_id("drive_id", "rootfs_1").is_ok());
        assert!(validate_id("drive_id", "").is_err());
        assert!(validate_id("drive_id", &"a".repeat(65)).is_err());
        let error = validate_id("iface_id", "eth-0").unwrap_err().to_string();
        assert!(error.contains("iface_id \"eth-0\""), "{error}");
    }
}
