//! bzImage: reads the setup header as linux-loader's `setup_header`, checks
//! it (protocol 2.12+, 64-bit entry, room for the decompressed kernel), then
//! copies the protected-mode payload to 1 MiB through linux-loader.

use std::io::{Read, Seek};
use std::mem::{offset_of, size_of};

use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{LOADED_HIGH, XLF_KERNEL_64, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use sie_hv::GuestMemory;
use vm_memory::{GuestAddress, ReadVolatile};

use super::{
    EntryMode, KernelFormat, LoadedKernel, LoaderError, Result, check_fits, read_struct_at,
};
use crate::layout::HIMEM_START;

/// Where the setup header sits in the file: where it sits in the zero page.
const HEADER_START: usize = offset_of!(boot_params, hdr);
/// End of the setup header in the file.
pub(super) const HEADER_END: usize = HEADER_START + size_of::<setup_header>();
// The boot protocol document puts the header at 0x1f1..0x26c.
const _: () = assert!(HEADER_START == 0x1f1 && HEADER_END == 0x26c);
/// Where the "HdrS" magic sits in the file.
const MAGIC_AT: usize = HEADER_START + offset_of!(setup_header, header);
/// Oldest boot protocol sie accepts: 2.12 added XLF_KERNEL_64 and friends.
const MIN_PROTOCOL: u16 = 0x020c;
/// The 64-bit entry is this far past the protected-mode load address.
const ENTRY_64_OFFSET: u64 = 0x200;

/// True when the file's first bytes `head` carry the "HdrS" magic, even if
/// the header is cut off after it (then [`load`] says so).
pub(super) fn has_magic(head: &[u8]) -> bool {
    head.get(MAGIC_AT..MAGIC_AT + 4) == Some(b"HdrS")
}

/// Loads a bzImage (one that [`has_magic`]) whose length is `len`.
pub(super) fn load<F>(mem: &GuestMemory, image: &mut F, len: u64) -> Result<LoadedKernel>
where
    F: Read + ReadVolatile + Seek,
{
    let hdr: setup_header =
        read_struct_at(image, HEADER_START as u64)?.ok_or(LoaderError::Truncated {
            what: "bzImage setup header",
            needed: HEADER_END as u64,
            len,
        })?;
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        let [minor, major] = version.to_le_bytes();
        return Err(LoaderError::ProtocolTooOld { major, minor });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(LoaderError::NotLoadedHigh);
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LoaderError::No64BitEntry);
    }
    // A setup_sects of 0 means 4, for compatibility with ancient images.
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (setup_sects + 1) * 512;
    // syssize (protocol 2.04+) states the payload size in 16-byte units,
    // which is how a cut-off image is told apart from a small one.
    let syssize = u64::from(hdr.syssize) * 16;
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
    let runtime = runtime_start(&hdr);
    let runtime_end = runtime.saturating_add(u64::from(hdr.init_size));
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
fn runtime_start(hdr: &setup_header) -> u64 {
    let pref = hdr.pref_address;
    if hdr.relocatable_kernel == 0 {
        return pref;
    }
    let align = u64::from(hdr.kernel_alignment).max(1);
    let start = HIMEM_START.max(pref);
    start.div_ceil(align).saturating_mul(align)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::load_kernel;
    use crate::loader::test_images::{BzSpec, bzimage, load, mem};
    use std::io::Cursor;
    use vm_memory::{ByteValued, Bytes};

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

    #[test]
    fn image_cut_inside_its_setup_header_names_the_header() {
        let image = bzimage(&BzSpec::default());
        for cut in [MAGIC_AT + 4, 0x250, HEADER_END - 1] {
            let err = load(&image[..cut]).unwrap_err();
            assert!(
                matches!(
                    err,
                    LoaderError::Truncated {
                        what: "bzImage setup header",
                        needed: 0x26c,
                        ..
                    }
                ),
                "cut at {cut}: {err}"
            );
        }
    }

    /// The image with its setup header changed by `edit`.
    fn with_header(edit: impl FnOnce(&mut setup_header)) -> Vec<u8> {
        let mut image = bzimage(&BzSpec::default());
        let mut hdr = setup_header::read_exact_from(&image[HEADER_START..]).unwrap();
        edit(&mut hdr);
        image[HEADER_START..HEADER_END].copy_from_slice(hdr.as_slice());
        image
    }

    #[test]
    fn extreme_header_fields_are_errors_not_overflows() {
        // Each field the loader computes with, at its largest value.
        let edits: [fn(&mut setup_header); 5] = [
            |h| h.syssize = u32::MAX,
            |h| h.init_size = u32::MAX,
            |h| h.pref_address = u64::MAX,
            |h| {
                h.relocatable_kernel = 0;
                h.pref_address = u64::MAX;
            },
            |h| h.kernel_alignment = u32::MAX,
        ];
        for edit in edits {
            let image = with_header(edit);
            let hdr = setup_header::read_exact_from(&image[HEADER_START..]).unwrap();
            assert!(load(&image).is_err(), "{hdr:?} loaded");
        }
        // A zero alignment is treated as 1, not divided by.
        let image = with_header(|h| h.kernel_alignment = 0);
        assert!(load(&image).is_ok());
    }
}
