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
    /// A character outside `[A-Za-z0-9_]`.
    #[error("{field} {id:?} may contain only letters, digits and '_'")]
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

#[cfg(test)]
mod tests {
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
