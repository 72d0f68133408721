//! Guest core dumps: a VM's RAM and every vCPU's registers as an ELF64
//! core file (`ET_CORE`) that `readelf -n` and `gdb -c` read.
//!
//! One `PT_LOAD` per guest memory region (`p_paddr` = its guest-physical
//! address; virtio-mem's hotpluggable region included, its unplugged
//! blocks as holes), one `NT_PRSTATUS` per vCPU (general registers in the x86-64
//! `elf_prstatus` layout), and one "QEMU" CPU-state note per vCPU (control
//! and descriptor-table registers, as QEMU's dumps carry them for `crash`). The file is written like a snapshot's memory
//! file: under a temporary name, fsynced, renamed into place; RAM pages the
//! guest never touched are holes. `PUT /vm/dump` pauses the VM around it;
//! `--dump-on-panic DIR` writes one from the registers each vCPU had when
//! it stopped.
//!
//! ```no_run
//! # fn dump(memory: &sie_hv::GuestMemory) -> std::io::Result<()> {
//! use sie_vmm::core_dump::{self, VcpuRegisters};
//! let vcpus = [VcpuRegisters::default()];
//! core_dump::write(std::path::Path::new("/tmp/vm.core"), memory, &vcpus, false)?;
//! # Ok(()) }
//! ```

pub mod cpu_state;
pub mod elf;

use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sie_hv::GuestMemory;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

pub use elf::VcpuRegisters;

/// Writes the core file of `memory` and `vcpus` to `path`, crash-safely;
/// returns the RAM bytes written (holes excluded). `scan_contents` as in
/// [`crate::snapshot::memory_file::write`]: for RAM mapped from a file,
/// whose untouched pages hold data without being resident.
pub fn write(
    path: &Path,
    memory: &GuestMemory,
    vcpus: &[VcpuRegisters],
    scan_contents: bool,
) -> io::Result<u64> {
    let regions: Vec<(u64, u64)> = memory
        .iter()
        .map(|region| (region.start_addr().0, region.len()))
        .collect();
    let layout = elf::layout(vcpus, &regions);
    let mut written = 0u64;
    crate::snapshot::durable::write_durably(path, |file| {
        file.set_len(layout.file_len)?;
        file.seek(SeekFrom::Start(0))?;
        file.write_all(&layout.head)?;
        for (region, segment) in memory.iter().zip(&layout.segments) {
            written += crate::snapshot::memory_file::write_region(
                memory,
                region,
                file,
                segment.file_offset,
                scan_contents,
            )?;
        }
        Ok(())
    })?;
    Ok(written)
}

/// The path of a panic's core in `dir`: `sie-ID-PID-SECONDS.core`, the
/// instance id and the time telling cores from several VMs and runs apart.
pub fn panic_path(dir: &Path, id: &str) -> PathBuf {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // The id is checked by the front end; keep only harmless characters.
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("sie-{id}-{}-{seconds}.core", std::process::id()))
}

#[cfg(test)]
mod tests {
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    #[test]
    fn ram_lands_at_its_segments_offset_and_untouched_pages_are_holes() {
        let memory = GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x10_0000),
            (GuestAddress(0x1_0000_0000), 0x10_0000),
        ])
        .unwrap();
        memory
            .write_slice(b"low page", GuestAddress(0x3000))
            .unwrap();
        memory
            .write_slice(b"high page", GuestAddress(0x1_0000_5000))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("sie-core-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vm.core");
        let mut vcpu = VcpuRegisters::default();
        vcpu.regs.rip = 0xfeed;
        let written = write(&path, &memory, &[vcpu], false).unwrap();
        assert_eq!(written, 2 * 4096, "only the two touched pages");

        let bytes = std::fs::read(&path).unwrap();
        let layout = elf::layout(&[vcpu], &[(0, 0x10_0000), (0x1_0000_0000, 0x10_0000)]);
        assert_eq!(bytes.len() as u64, layout.file_len);
        assert_eq!(&bytes[..layout.head.len()], &layout.head[..]);
        let low = layout.segments[0].file_offset as usize + 0x3000;
        assert_eq!(&bytes[low..low + 8], b"low page");
        let high = layout.segments[1].file_offset as usize + 0x5000;
        assert_eq!(&bytes[high..high + 9], b"high page");
        // A sparse file: far fewer blocks than its length.
        use std::os::unix::fs::MetadataExt;
        let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(allocated < 0x10_0000, "{allocated} bytes allocated");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_panic_core_is_named_after_the_instance() {
        let path = panic_path(Path::new("/cores"), "vm/1");
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("sie-vm_1-"), "{name}");
        assert!(name.ends_with(".core"));
        assert_eq!(path.parent(), Some(Path::new("/cores")));
    }
}
