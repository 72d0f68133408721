//! The snapshot file: a fixed prefix, a JSON table of contents, then the
//! sections it lists, each with its own SHA-256.
//!
//! ```text
//! 0   8  magic "SIESNAP\n"
//! 8   2  format major (LE)     refused when it differs from FORMAT_MAJOR
//! 10  2  format minor (LE)     newer minors are read (fields they add are optional)
//! 12  4  table length N (LE)   at most MAX_TABLE_BYTES
//! 16 32  SHA-256 of bytes 0..16 and the table
//! 48  N  table: JSON {sie_version, cpu_vendor, sections: [{name, offset, len, sha256}]}
//! ..     sections; offsets count from the end of the table
//! ```
//!
//! [`decode`] checks everything (magic, version, lengths, every checksum,
//! sections inside the file, no section listed twice) before it returns, so
//! nothing from a damaged file reaches a VM.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File magic.
pub const MAGIC: &[u8; 8] = b"SIESNAP\n";
/// The format major version sie writes and reads.
pub const FORMAT_MAJOR: u16 = 1;
/// The format minor version sie writes.
pub const FORMAT_MINOR: u16 = 0;
/// Largest table of contents sie reads.
const MAX_TABLE_BYTES: usize = 64 * 1024;
const PREFIX_BYTES: usize = 48;

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not a sie snapshot at all.
    #[error("not a sie snapshot (bad magic)")]
    Magic,
    /// Written by an incompatible format version.
    #[error(
        "snapshot format {found} cannot be read by this sie (it reads format {FORMAT_MAJOR}.x)"
    )]
    Version {
        /// "major.minor" found in the file.
        found: String,
    },
    /// The file ends early.
    #[error("snapshot file is truncated ({0})")]
    Truncated(&'static str),
    /// A checksum does not match.
    #[error("snapshot {0} is damaged (checksum mismatch)")]
    Checksum(String),
    /// The table of contents does not parse or is inconsistent.
    #[error("snapshot table of contents: {0}")]
    Table(String),
    /// A section the reader needs is missing.
    #[error("snapshot has no {0} section")]
    Missing(&'static str),
}

/// One section's entry in the table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionEntry {
    /// Its name.
    pub name: String,
    /// Where it starts, counted from the end of the table.
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// The table of contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    /// The sie version that wrote the file.
    pub sie_version: String,
    /// CPUID vendor string of the host that wrote it.
    pub cpu_vendor: String,
    /// The sections.
    pub sections: Vec<SectionEntry>,
}

/// A decoded file: its table and the sections' bytes.
#[derive(Debug)]
pub struct Decoded {
    /// Format version found ("major.minor").
    pub version: (u16, u16),
    /// The table.
    pub table: Table,
    sections: Vec<(String, Vec<u8>)>,
}

impl Decoded {
    /// The bytes of section `name`.
    pub fn section(&self, name: &'static str) -> Result<&[u8], FormatError> {
        self.sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, bytes)| bytes.as_slice())
            .ok_or(FormatError::Missing(name))
    }
}

/// The checksum that guards the version, the table's length and the table.
fn prefix_and_table_digest(prefix: &[u8], table: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prefix);
    hasher.update(table);
    hasher.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes sections (name, bytes) into a snapshot file's bytes.
pub fn encode(cpu_vendor: &str, sections: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut offset = 0u64;
    let entries = sections
        .iter()
        .map(|(name, bytes)| {
            let entry = SectionEntry {
                name: (*name).to_string(),
                offset,
                len: bytes.len() as u64,
                sha256: hex(&Sha256::digest(bytes)),
            };
            offset += bytes.len() as u64;
            entry
        })
        .collect();
    let table = Table {
        sie_version: env!("CARGO_PKG_VERSION").to_string(),
        cpu_vendor: cpu_vendor.to_string(),
        sections: entries,
    };
    // Serializing plain strings and integers cannot fail.
    let table = serde_json::to_vec(&table).unwrap_or_default();
    let mut out = Vec::with_capacity(PREFIX_BYTES + table.len() + offset as usize);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_MAJOR.to_le_bytes());
    out.extend_from_slice(&FORMAT_MINOR.to_le_bytes());
    out.extend_from_slice(&(table.len() as u32).to_le_bytes());
    let digest = prefix_and_table_digest(&out[..16], &table);
    out.extend_from_slice(&digest);
    out.extend_from_slice(&table);
    for (_, bytes) in sections {
        out.extend_from_slice(bytes);
    }
    out
}

/// The format version in a file's prefix, without checking the rest
/// (`--describe-snapshot`).
pub fn version_of(bytes: &[u8]) -> Result<(u16, u16), FormatError> {
    if bytes.len() < 12 {
        return Err(FormatError::Truncated("prefix"));
    }
    if &bytes[..8] != MAGIC {
        return Err(FormatError::Magic);
    }
    Ok((
        u16::from_le_bytes([bytes[8], bytes[9]]),
        u16::from_le_bytes([bytes[10], bytes[11]]),
    ))
}

/// Decodes and checks a whole snapshot file.
pub fn decode(bytes: &[u8]) -> Result<Decoded, FormatError> {
    let (major, minor) = version_of(bytes)?;
    if major != FORMAT_MAJOR {
        return Err(FormatError::Version {
            found: format!("{major}.{minor}"),
        });
    }
    if bytes.len() < PREFIX_BYTES {
        return Err(FormatError::Truncated("prefix"));
    }
    let table_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if table_len > MAX_TABLE_BYTES {
        return Err(FormatError::Table(format!(
            "{table_len} bytes is too large"
        )));
    }
    let table_end = PREFIX_BYTES + table_len;
    let table_bytes = bytes
        .get(PREFIX_BYTES..table_end)
        .ok_or(FormatError::Truncated("table of contents"))?;
    if prefix_and_table_digest(&bytes[..16], table_bytes) != bytes[16..48] {
        return Err(FormatError::Checksum("table of contents".to_string()));
    }
    let table: Table =
        serde_json::from_slice(table_bytes).map_err(|e| FormatError::Table(e.to_string()))?;
    let body = &bytes[table_end..];
    let mut sections: Vec<(String, Vec<u8>)> = Vec::with_capacity(table.sections.len());
    for entry in &table.sections {
        if sections.iter().any(|(name, _)| *name == entry.name) {
            return Err(FormatError::Table(format!(
                "section {} listed twice",
                entry.name
            )));
        }
        let start = usize::try_from(entry.offset).map_err(|_| FormatError::Truncated("section"))?;
        let len = usize::try_from(entry.len).map_err(|_| FormatError::Truncated("section"))?;
        let data = start
            .checked_add(len)
            .and_then(|end| body.get(start..end))
            .ok_or(FormatError::Truncated("section"))?;
        if hex(&Sha256::digest(data)) != entry.sha256 {
            return Err(FormatError::Checksum(format!("section {}", entry.name)));
        }
        sections.push((entry.name.clone(), data.to_vec()));
    }
    Ok(Decoded {
        version: (major, minor),
        table,
        sections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(
            "GenuineIntel",
            &[("config", b"{}".to_vec()), ("vcpus", vec![7; 100])],
        )
    }

    #[test]
    fn encoded_sections_decode_back() {
        let decoded = decode(&sample()).unwrap();
        assert_eq!(decoded.version, (FORMAT_MAJOR, FORMAT_MINOR));
        assert_eq!(decoded.table.cpu_vendor, "GenuineIntel");
        assert_eq!(decoded.section("config").unwrap(), b"{}");
        assert_eq!(decoded.section("vcpus").unwrap(), [7; 100]);
        assert_eq!(decoded.section("vm"), Err(FormatError::Missing("vm")));
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused() {
        let good = sample();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_err(), "flipped byte {at} was accepted");
        }
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "cut at {len} was accepted");
        }
    }

    #[test]
    fn another_major_version_is_refused_by_name() {
        let mut bad = sample();
        bad[8] = 2;
        assert_eq!(
            decode(&bad).unwrap_err().to_string(),
            "snapshot format 2.0 cannot be read by this sie (it reads format 1.x)"
        );
        assert_eq!(version_of(&bad), Ok((2, 0)));
        assert_eq!(version_of(b"ELF..........."), Err(FormatError::Magic));
    }
}
