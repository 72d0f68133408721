//! bzImage: checks the setup header (protocol 2.12+, 64-bit entry, room for
//! the decompressed kernel), then copies the protected-mode payload to 1 MiB
//! through linux-loader.

use std::io::{Read, Seek};

use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::bzimage::BzImage;
use vm_memory::{GuestAddress, GuestMemoryMmap, ReadVolatile};

use super::{EntryMode, KernelFormat, LoadedKernel, LoaderError, Result, check_fits};
use crate::layout::HIMEM_START;

/// End of the setup header in the file (0x1f1 + 123 bytes).
pub(super) const HEADER_END: usize = 0x26c;
/// Oldest boot protocol sie accepts: 2.12 added XLF_KERNEL_64 and friends.
const MIN_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry is this far past the protected-mode load address.
const ENTRY_64_OFFSET: u64 = 0x200;

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from(u32_at(b, off)) | (u64::from(u32_at(b, off + 4)) << 32)
}

/// Loads a bzImage whose first bytes are `head` (holding "HdrS") and whose
/// length is `len`.
pub(super) fn load<F>(
    mem: &GuestMemoryMmap,
    image: &mut F,
    head: &[u8],
    len: u64,
) -> Result<LoadedKernel>
where
    F: Read + ReadVolatile + Seek,
{
    if head.len() < HEADER_END {
        return Err(LoaderError::Truncated {
            what: "bzImage setup header",
            needed: HEADER_END as u64,
            len,
        });
    }
    let version = u16_at(head, 0x206);
    if version < MIN_PROTOCOL {
        let [minor, major] = version.to_le_bytes();
        return Err(LoaderError::ProtocolTooOld { major, minor });
    }
    if head[0x211] & LOADED_HIGH == 0 {
        return Err(LoaderError::NotLoadedHigh);
    }
    if u16_at(head, 0x236) & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry);
    }
    // A setup_sects of 0 means 4, for compatibility with ancient images.
    let setup_sects = match head[0x1f1] {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    // syssize (protocol 2.04+) states the payload size in 16-byte units,
    // which is how a cut-off image is told apart from a small one.
    let syssize = u64::from(u32_at(head, 0x1f4)) * 16;
    let needed = setup_size + syssize.max(1);
    if len < needed {
        return Err(LoaderError::Truncated {
            what: "bzImage payload",
            needed,
            len,
        });
    }
    let payload = len - setup_size;

    let load_end = HIMEM_START.saturating_add(payload);
    check_fits(mem, HIMEM_START, load_end)?;
    let runtime = runtime_start(head);
    let runtime_end = runtime.saturating_add(u64::from(u32_at(head, 0x260)));
    check_fits(mem, runtime, runtime_end)?;

    let result = BzImage::load(mem, Some(GuestAddress(HIMEM_START)), image, None)
        .map_err(LoaderError::Load)?;
    Ok(LoadedKernel {
        entry: GuestAddress(HIMEM_START + ENTRY_64_OFFSET),
        mode: EntryMode::Linux64,
        setup_header: result.setup_header,
        end: GuestAddress(load_end.max(runtime_end)),
        format: KernelFormat::BzImage,
    })
}

/// Where the kernel decompresses itself to when loaded at 1 MiB, by the
/// boot protocol's `init_size` rule: a relocatable kernel runs at the load
/// address raised to `pref_address` and aligned to `kernel_alignment`; any
/// other runs at `pref_address`.
fn runtime_start(head: &[u8]) -> u64 {
    let pref = u64_at(head, 0x258);
    let relocatable = head[0x234] != 0;
    if !relocatable {
        return pref;
    }
    let align = u64::from(u32_at(head, 0x230)).max(1);
    let start = HIMEM_START.max(pref);
    start.div_ceil(align).saturating_mul(align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_kernel;
    use crate::loader::test_images::{BzSpec, bzimage, load, mem};
    use std::io::Cursor;
    use vm_memory::Bytes;

    #[test]
    fn bzimage_loads_at_1mib_with_64_bit_entry_and_keeps_its_header() {
        let mem = mem();
        let image = bzimage(&BzSpec::default());
        let k = load_kernel(&mem, &mut Cursor::new(&image)).unwrap();
        assert_eq!(k.format, KernelFormat::BzImage);
        assert_eq!(k.mode, EntryMode::Linux64);
        assert_eq!(k.entry, GuestAddress(0x10_0200));
        let hdr = k.setup_header.unwrap();
        assert_eq!({ hdr.version }, 0x020f);
        assert_eq!({ hdr.code32_start }, 0x10_0000);
        // The payload (after 2 * 512 bytes of setup) is at 1 MiB.
        let mut first = [0u8; 2];
        mem.read_slice(&mut first, GuestAddress(0x10_0000)).unwrap();
        assert_eq!(first, [0xaa, 0xaa]);
    }

    #[test]
    fn end_covers_the_decompression_area() {
        // Relocatable, pref 16 MiB, 2 MiB aligned, init_size 1 MiB.
        let k = load(&bzimage(&BzSpec::default())).unwrap();
        assert_eq!(k.end, GuestAddress(0x110_0000));
    }

    #[test]
    fn old_protocol_is_rejected_with_its_version() {
        let err = load(&bzimage(&BzSpec {
            version: 0x020a,
            ..Default::default()
        }))
        .unwrap_err();
        assert!(matches!(
            err,
            LoaderError::ProtocolTooOld {
                major: 2,
                minor: 10
            }
        ));
        assert_eq!(
            err.to_string(),
            "bzImage boot protocol 2.10 is too old: sie needs 2.12 or later"
        );
    }

    #[test]
    fn missing_64_bit_entry_is_rejected() {
        let err = load(&bzimage(&BzSpec {
            xloadflags: 0,
            ..Default::default()
        }))
        .unwrap_err();
        assert!(matches!(err, LoaderError::No64BitEntry));
    }

    #[test]
    fn decompression_area_beyond_memory_is_rejected() {
        let spec = BzSpec {
            init_size: 32 << 20,
            ..Default::default()
        };
        let err = load(&bzimage(&spec)).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::DoesNotFit {
                    start: 0x100_0000,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let image = bzimage(&BzSpec::default());
        for cut in 0..image.len() {
            assert!(load(&image[..cut]).is_err(), "cut at {cut} loaded");
        }
    }

    #[test]
    fn header_without_payload_is_truncated() {
        let image = bzimage(&BzSpec::default());
        let err = load(&image[..1024]).unwrap_err();
        assert!(
            matches!(
                err,
                LoaderError::Truncated {
                    what: "bzImage payload",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn hostile_header_values_do_not_panic() {
        let base = bzimage(&BzSpec::default());
        for i in 0x1f1..HEADER_END {
            for v in [0x00, 0x7f, 0xff] {
                let mut image = base.clone();
                image[i] = v;
                let _ = load(&image);
            }
        }
    }

    #[test]
    fn non_relocatable_kernel_runs_at_pref_address() {
        let spec = BzSpec {
            relocatable: false,
            pref_address: 0x40_0000,
            ..Default::default()
        };
        let k = load(&bzimage(&spec)).unwrap();
        assert_eq!(k.end, GuestAddress(0x50_0000));
    }
}
