//! sie-arch: the x86_64 platform. It computes what a KVM guest needs to
//! boot Linux (or a tiny test guest): the memory map, the kernel and initrd
//! in guest memory, boot parameters, ACPI tables, and the boot vCPU state.
//! It never calls KVM: it returns `sie-hv`'s neutral register types and the
//! VMM applies them.
//!
//! Modules, in the order the VMM uses them:
//! 1. [`layout::ram_regions`] gives the RAM ranges; the VMM maps them
//!    (`sie_hv::GuestMemory::from_ranges`) and registers them with KVM.
//! 2. [`loader::load_kernel`], then [`loader::load_initrd`].
//! 3. [`acpi::create_acpi_tables`] returns the RSDP address.
//! 4. [`boot_info::write_boot_info`] writes the command line and the zero
//!    page or PVH start info, and returns its address.
//! 5. [`regs::boot_sregs`] (or `setup_long_mode` / `setup_pvh`) writes the
//!    GDT and page tables; [`regs::boot_regs`], `boot_fpu` and `boot_msrs`
//!    give the rest of the boot vCPU's state (the MSRs go to every vCPU).
//! 6. [`cpuid::normalize`] for each vCPU from the backend's supported list.
//! 7. [`regs::configure_lapic`] on each vCPU's LAPIC state.
//!
//! ```
//! use sie_arch::{acpi, boot_info, cpuid, layout, loader, regs};
//! # fn tiny_elf() -> Vec<u8> {
//! #     let mut v = vec![0u8; 0x110];
//! #     v[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
//! #     v[16] = 2; v[18] = 62; v[20] = 1;
//! #     v[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes());
//! #     v[32] = 64; v[52] = 64; v[54] = 56; v[56] = 1;
//! #     v[64] = 1; // PT_LOAD
//! #     v[72..80].copy_from_slice(&0x100u64.to_le_bytes());
//! #     v[88..96].copy_from_slice(&0x20_0000u64.to_le_bytes());
//! #     v[96] = 0x10; v[104] = 0x10;
//! #     v
//! # }
//!
//! let mem_size = 128 << 20;
//! let mem = sie_hv::GuestMemory::from_ranges(&layout::ram_regions(mem_size)?)?;
//! let kernel = loader::load_kernel(&mem, &mut std::io::Cursor::new(tiny_elf()))?;
//! let initrd = loader::load_initrd(&mem, &mut &b"initrd"[..], 6, &kernel)?;
//! let config = acpi::AcpiConfig {
//!     vcpus: 1,
//!     devices: vec![acpi::AcpiDevice::Serial { port: 0x3f8, irq: 4 }],
//! };
//! let rsdp = acpi::create_acpi_tables(&mem, &config)?;
//! let info = boot_info::write_boot_info(
//!     &mem, &kernel, "console=ttyS0", Some(initrd), Some(rsdp), mem_size,
//! )?;
//! let sregs = regs::boot_sregs(&mem, &kernel)?;
//! let gprs = regs::boot_regs(&kernel, info);
//! let (fpu, msrs) = (regs::boot_fpu(), regs::boot_msrs());
//! let supported = []; // from the backend
//! let table = cpuid::normalize(&supported, 0, 1);
//! # let _ = (sregs, gprs, fpu, msrs, table);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod acpi;
pub mod boot_info;
pub mod cpuid;
pub mod layout;
pub mod loader;
pub mod regs;
