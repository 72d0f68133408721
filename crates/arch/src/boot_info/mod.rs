//! What the kernel reads at entry: the command line, and either the Linux
//! zero page (`boot_params`) or the PVH `hvm_start_info`, both carrying the
//! memory map from [`crate::layout::e820_map`], the initrd and the RSDP.
//!
//! ```
//! # use sie_arch::boot_info::write_boot_info;
//! # use sie_arch::loader::{LoadedKernel, EntryMode, KernelFormat};
//! # use vm_memory::GuestAddress;
//! let mem = sie_hv::GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
//! let kernel = LoadedKernel {
//!     entry: GuestAddress(0x100_0000),
//!     mode: EntryMode::Pvh,
//!     setup_header: None,
//!     end: GuestAddress(0x110_0000),
//!     format: KernelFormat::Elf,
//! };
//! let start_info = write_boot_info(&mem, &kernel, "console=ttyS0", None, None, 16 << 20).unwrap();
//! assert_eq!(start_info, GuestAddress(sie_arch::layout::PVH_INFO_ADDR));
//! ```

mod pvh;
mod zero_page;

use sie_hv::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE};
use crate::loader::{EntryMode, LoadedKernel};

/// Errors writing the boot information.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// The command line exceeds what sie or the kernel accepts.
    #[error("kernel command line is {len} bytes, the limit is {max}")]
    CmdlineTooLong {
        /// Length in bytes, without the NUL.
        len: usize,
        /// Longest accepted, without the NUL.
        max: usize,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte at offset {0}")]
    CmdlineNul(usize),
    /// A guest memory write failed (guest RAM too small for the layout).
    #[error("cannot write the {0} to guest memory")]
    Write(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, BootInfoError>;

/// Writes the command line and the boot information for `kernel`'s entry
/// mode. `initrd` is (address, size) from [`crate::loader::load_initrd`],
/// `rsdp` the address from [`crate::acpi::create_acpi_tables`], `mem_size`
/// the guest RAM size in bytes. Returns the address of the zero page (Linux
/// 64-bit entry, goes in RSI) or of `hvm_start_info` (PVH, goes in RBX).
pub fn write_boot_info(
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    cmdline: &str,
    initrd: Option<(GuestAddress, u64)>,
    rsdp: Option<GuestAddress>,
    mem_size: u64,
) -> Result<GuestAddress> {
    write_cmdline(mem, kernel, cmdline)?;
    match kernel.mode {
        EntryMode::Linux64 => zero_page::write(mem, kernel, cmdline.len(), initrd, rsdp, mem_size),
        EntryMode::Pvh => pvh::write(mem, initrd, rsdp, mem_size),
    }
}

/// The longest command line (without NUL) `kernel` accepts from sie.
fn cmdline_limit(kernel: &LoadedKernel) -> usize {
    let ours = CMDLINE_MAX_SIZE - 1;
    match kernel.setup_header.map(|h| h.cmdline_size) {
        Some(theirs) if theirs > 0 => usize::try_from(theirs).map_or(ours, |t| t.min(ours)),
        _ => ours,
    }
}

fn write_cmdline(mem: &GuestMemory, kernel: &LoadedKernel, cmdline: &str) -> Result<()> {
    let max = cmdline_limit(kernel);
    if cmdline.len() > max {
        return Err(BootInfoError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some(at) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootInfoError::CmdlineNul(at));
    }
    let write = |e| BootInfoError::Write("command line", e);
    mem.write_slice(cmdline.as_bytes(), GuestAddress(CMDLINE_ADDR))
        .map_err(write)?;
    // Memory may be reused (reboot), so the NUL is written, not assumed.
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + cmdline.len() as u64))
        .map_err(write)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::loader::KernelFormat;

    pub(crate) fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    pub(crate) fn kernel(mode: EntryMode) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0000),
            mode,
            setup_header: None,
            end: GuestAddress(0x110_0000),
            format: KernelFormat::Elf,
        }
    }

    #[test]
    fn cmdline_is_written_nul_terminated() {
        let mem = mem();
        mem.write_slice(&[0xff; 16], GuestAddress(CMDLINE_ADDR))
            .unwrap();
        write_boot_info(
            &mem,
            &kernel(EntryMode::Pvh),
            "ro quiet",
            None,
            None,
            64 << 20,
        )
        .unwrap();
        let mut back = [0u8; 9];
        mem.read_slice(&mut back, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&back, b"ro quiet\0");
    }

    #[test]
    fn cmdline_at_the_limit_is_accepted_and_beyond_is_named() {
        let mem = mem();
        let k = kernel(EntryMode::Linux64);
        let max = "x".repeat(CMDLINE_MAX_SIZE - 1);
        assert!(write_boot_info(&mem, &k, &max, None, None, 64 << 20).is_ok());
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let err = write_boot_info(&mem, &k, &long, None, None, 64 << 20).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel command line is 4096 bytes, the limit is 4095"
        );
    }

    #[test]
    fn bzimage_cmdline_size_lowers_the_limit() {
        let mut k = kernel(EntryMode::Linux64);
        k.setup_header = Some(linux_loader::loader::bootparam::setup_header {
            cmdline_size: 10,
            ..Default::default()
        });
        let err = write_boot_info(&mem(), &k, "0123456789a", None, None, 64 << 20).unwrap_err();
        assert!(matches!(
            err,
            BootInfoError::CmdlineTooLong { len: 11, max: 10 }
        ));
    }

    #[test]
    fn cmdline_with_nul_is_rejected() {
        let err = write_boot_info(
            &mem(),
            &kernel(EntryMode::Pvh),
            "a\0b",
            None,
            None,
            64 << 20,
        )
        .unwrap_err();
        assert!(matches!(err, BootInfoError::CmdlineNul(1)));
    }

    #[test]
    fn memory_too_small_for_the_layout_is_an_error() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let err =
            write_boot_info(&mem, &kernel(EntryMode::Linux64), "", None, None, 0x1000).unwrap_err();
        assert!(matches!(err, BootInfoError::Write("command line", _)));
    }
}
