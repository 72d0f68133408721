//! Memory sizes as people type them: `512` (MiB), `512M`, `2G`, `1048576K`.

/// Why a memory size could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size")]
    Empty,
    /// Not a number with an optional unit.
    #[error("not a size: expected MiB as a number or with a unit (512, 512M, 2G)")]
    Malformed,
    /// The unit is not one sie knows.
    #[error("unknown unit {0:?}: use K, M, G or T (optionally with iB or B)")]
    UnknownUnit(String),
    /// The size is not a whole number of MiB.
    #[error("not a whole number of MiB")]
    NotWholeMib,
    /// Zero.
    #[error("memory must be at least 1 MiB")]
    Zero,
    /// Too large to represent.
    #[error("too large")]
    Overflow,
}

/// Parses a memory size into MiB. A bare number is MiB.
pub fn parse_mem_size_mib(text: &str) -> Result<u64, SizeError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::Malformed);
    }
    let value: u64 = digits.parse().map_err(|_| SizeError::Overflow)?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let mib = match unit {
        "" | "m" => Some(value),
        "k" => {
            if !value.is_multiple_of(1024) {
                return Err(SizeError::NotWholeMib);
            }
            Some(value / 1024)
        }
        "g" => value.checked_mul(1024),
        "t" => value.checked_mul(1024 * 1024),
        other => return Err(SizeError::UnknownUnit(other.to_string())),
    }
    .ok_or(SizeError::Overflow)?;
    if mib == 0 {
        return Err(SizeError::Zero);
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_numbers_and_units() {
        for (text, mib) in [
            ("512", 512),
            ("512M", 512),
            ("512m", 512),
            ("512MiB", 512),
            ("512MB", 512),
            ("2G", 2048),
            ("2gib", 2048),
            ("1T", 1 << 20),
            ("2048K", 2),
            (" 64 ", 64),
        ] {
            assert_eq!(parse_mem_size_mib(text), Ok(mib), "{text}");
        }
    }

    #[test]
    fn rejects_bad_sizes_with_a_reason() {
        assert_eq!(parse_mem_size_mib(""), Err(SizeError::Empty));
        assert_eq!(parse_mem_size_mib("abc"), Err(SizeError::Malformed));
        assert_eq!(parse_mem_size_mib("-5"), Err(SizeError::Malformed));
        assert_eq!(
            parse_mem_size_mib("1.5G"),
            Err(SizeError::UnknownUnit(".5g".into()))
        );
        assert_eq!(parse_mem_size_mib("0"), Err(SizeError::Zero));
        assert_eq!(parse_mem_size_mib("0G"), Err(SizeError::Zero));
        assert_eq!(parse_mem_size_mib("1000K"), Err(SizeError::NotWholeMib));
        assert_eq!(
            parse_mem_size_mib("5X"),
            Err(SizeError::UnknownUnit("x".into()))
        );
        assert_eq!(
            parse_mem_size_mib("99999999999999999999"),
            Err(SizeError::Overflow)
        );
        assert_eq!(
            parse_mem_size_mib("18446744073709551615T"),
            Err(SizeError::Overflow)
        );
    }
}
