//! Kernel and initrd loading: detects the image format, checks it against
//! guest memory, and copies it in with linux-loader. Headers are read as
//! linux-loader's boot-protocol and ELF types (`setup_header`,
//! `Elf64_Ehdr`, `Elf64_Phdr`), never by hand-counted offsets.
//!
//! Formats, told apart by magic:
//! - **ELF vmlinux** (`\x7fELF`): 64-bit x86_64 only, each `PT_LOAD` segment
//!   at its physical address, which must be at or above 1 MiB (below that sie
//!   keeps its boot structures, see [`crate::layout`]). If the image carries
//!   the Xen `XEN_ELFNOTE_PHYS32_ENTRY` note, **the PVH entry wins** over the
//!   64-bit `e_entry`: PVH needs no long-mode set-up by the VMM (no page
//!   tables), and it is what Firecracker (since 1.8) and Cloud Hypervisor pick
//!   when both exist.
//! - **bzImage** (`HdrS` at 0x202): boot protocol 2.12 or later with a 64-bit
//!   entry (`XLF_KERNEL_64`), loaded at 1 MiB and entered at load + 0x200.
//!   Its setup header is kept for the zero page.
//!
//! Image files are user input: any truncated or inconsistent image is an
//! error naming the problem, never a panic.
//!
//! ```no_run
//! # use sie_arch::loader::{load_kernel, load_initrd};
//! # use vm_memory::GuestAddress;
//! let mem = sie_hv::GuestMemory::from_ranges(&[(GuestAddress(0), 128 << 20)]).unwrap();
//! let mut image = std::fs::File::open("vmlinux").unwrap();
//! let kernel = load_kernel(&mem, &mut image).unwrap();
//! let mut initrd = std::fs::File::open("initrd.cpio").unwrap();
//! let size = initrd.metadata().unwrap().len();
//! let (initrd_addr, initrd_size) = load_initrd(&mem, &mut initrd, size, &kernel).unwrap();
//! ```

mod bzimage;
mod elf;
mod initrd;

use std::io::{Read, Seek, SeekFrom};

use linux_loader::elf::ELFMAG;
use linux_loader::loader::bootparam::setup_header;
use sie_hv::GuestMemory;
use vm_memory::{ByteValued, GuestAddress, GuestMemoryBackend, ReadVolatile};

pub use initrd::load_initrd;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol: long mode, paging on, RSI = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, EBX = `hvm_start_info`.
    Pvh,
}

/// The kernel image format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF vmlinux.
    Elf,
    /// Compressed bzImage.
    BzImage,
}

/// Where and how a kernel was loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadedKernel {
    /// Entry point (guest physical).
    pub entry: GuestAddress,
    /// How to enter it.
    pub mode: EntryMode,
    /// The bzImage setup header (with `code32_start` set to the load
    /// address); `None` for ELF.
    pub setup_header: Option<setup_header>,
    /// First byte after everything the kernel occupies before it reads the
    /// memory map: the loaded segments for ELF; for bzImage also the region
    /// it decompresses into (`init_size` from its runtime start).
    pub end: GuestAddress,
    /// The image format.
    pub format: KernelFormat,
}

/// Errors loading a kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// Reading the image file failed.
    #[error("cannot read the kernel image")]
    Read(#[source] std::io::Error),
    /// The image is neither format sie boots.
    #[error("kernel image is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat,
    /// The file ends before a structure it describes.
    #[error("kernel image is truncated: {what} ends at byte {needed} but the file has {len}")]
    Truncated {
        /// The structure that is cut off.
        what: &'static str,
        /// File offset (exclusive) where the structure ends.
        needed: u64,
        /// File length.
        len: u64,
    },
    /// ELF class is not ELFCLASS64.
    #[error("ELF kernel is not 64-bit (ELF class {0})")]
    ElfNot64Bit(u8),
    /// ELF is big-endian.
    #[error("ELF kernel is big-endian")]
    ElfBigEndian,
    /// ELF machine is not x86_64.
    #[error("ELF kernel is for machine {0}, not x86_64 (62)")]
    ElfNotX86_64(u16),
    /// ELF program header entries are not 56 bytes.
    #[error("ELF program header entry size is {0}, not 56")]
    ElfBadPhdrSize(u16),
    /// ELF has nothing to load.
    #[error("ELF kernel has no loadable segment")]
    ElfNoLoadSegment,
    /// An ELF segment's file size exceeds its memory size.
    #[error("ELF segment at {addr:#x} has a file size larger than its memory size")]
    ElfSegmentFileSize {
        /// Segment physical address.
        addr: u64,
    },
    /// An ELF segment lies where sie keeps its boot structures.
    #[error("ELF segment at {0:#x} lies below 1 MiB, where sie keeps its boot structures")]
    ElfSegmentTooLow(u64),
    /// The bzImage boot protocol is older than 2.12.
    #[error("bzImage boot protocol {major}.{minor:02} is too old: sie needs 2.12 or later")]
    ProtocolTooOld {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The bzImage has no 64-bit entry point.
    #[error("bzImage has no 64-bit entry point (XLF_KERNEL_64 is not set)")]
    No64BitEntry,
    /// The bzImage cannot run from above 1 MiB.
    #[error("bzImage cannot be loaded high (LOADED_HIGH is not set)")]
    NotLoadedHigh,
    /// The kernel needs guest memory that does not exist.
    #[error("kernel needs guest memory {start:#x}..{end:#x}, which is not all RAM")]
    DoesNotFit {
        /// First byte needed.
        start: u64,
        /// End (exclusive) of what is needed.
        end: u64,
    },
    /// linux-loader refused the image or could not copy it.
    #[error("cannot load the kernel into guest memory")]
    Load(#[source] linux_loader::loader::Error),
    /// The initrd does not fit under its address limit above the kernel.
    #[error("initrd ({0} bytes) does not fit in guest memory")]
    InitrdTooLarge(u64),
    /// Copying the initrd into guest memory failed.
    #[error("cannot read the initrd into guest memory")]
    InitrdRead(#[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, LoaderError>;

/// Loads the kernel `image` into `mem`, choosing the format by magic (see
/// the module docs).
pub fn load_kernel<F>(mem: &GuestMemory, image: &mut F) -> Result<LoadedKernel>
where
    F: Read + ReadVolatile + Seek,
{
    let len = image.seek(SeekFrom::End(0)).map_err(LoaderError::Read)?;
    let mut head = [0u8; bzimage::HEADER_END];
    let got = read_at(image, 0, &mut head)?;
    let head = &head[..got];
    if head.starts_with(ELFMAG) {
        elf::load(mem, image, len)
    } else if bzimage::has_magic(head) {
        bzimage::load(mem, image, len)
    } else {
        Err(LoaderError::UnknownFormat)
    }
}

/// Reads as much of `buf` as the file holds from `offset`; returns the count.
fn read_at<F: Read + Seek>(image: &mut F, offset: u64, buf: &mut [u8]) -> Result<usize> {
    image
        .seek(SeekFrom::Start(offset))
        .map_err(LoaderError::Read)?;
    let mut done = 0;
    while done < buf.len() {
        match image.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LoaderError::Read(e)),
        }
    }
    Ok(done)
}

/// Reads a `T` (one of linux-loader's header types, for which any bytes are
/// a valid value) at `offset`; `None` when the file ends first.
fn read_struct_at<T, F>(image: &mut F, offset: u64) -> Result<Option<T>>
where
    T: ByteValued,
    F: Read + Seek,
{
    let mut value = T::zeroed();
    let got = read_at(image, offset, value.as_mut_slice())?;
    Ok((got == size_of::<T>()).then_some(value))
}

/// Checks that `[start, end)` is entirely guest RAM.
fn check_fits(mem: &GuestMemory, start: u64, end: u64) -> Result<()> {
    let fits = end > start
        && usize::try_from(end - start)
            .is_ok_and(|len| GuestMemoryBackend::check_range(mem, GuestAddress(start), len));
    if fits {
        Ok(())
    } else {
        Err(LoaderError::DoesNotFit { start, end })
    }
}

#[cfg(test)]
pub(crate) mod test_images;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 32 << 20)]).unwrap()
    }

    #[test]
    fn garbage_is_unknown_format() {
        for image in [&b""[..], b"\x7fEL", b"MZ garbage", &[0u8; 4096][..]] {
            let err = load_kernel(&mem(), &mut Cursor::new(image)).unwrap_err();
            assert!(matches!(err, LoaderError::UnknownFormat), "{err}");
        }
    }

    #[test]
    fn unknown_format_message_names_both_formats() {
        assert_eq!(
            LoaderError::UnknownFormat.to_string(),
            "kernel image is neither an ELF vmlinux nor a bzImage"
        );
    }

    #[test]
    fn check_fits_rejects_ranges_outside_ram() {
        let mem = mem();
        assert!(check_fits(&mem, 1 << 20, 2 << 20).is_ok());
        assert!(check_fits(&mem, 1 << 20, 33 << 20).is_err());
        assert!(check_fits(&mem, 5, 5).is_err());
    }
}
