//! virtio-pmem devices: each configured `pmem` file mapped into the
//! guest's physical address space, in the device-memory window the device
//! manager owns past RAM, as a KVM memory slot of its own.
//!
//! Linux's `virtio_pmem` needs the region 2 MiB aligned (DAX maps it in
//! 2 MiB sub-sections), so it starts on a 2 MiB boundary and its size is
//! the file's rounded up to 2 MiB: the tail past the file's last page is
//! anonymous memory the file never sees (Firecracker does the same).
//!
//! A writable file is mapped `MAP_SHARED`, so the guest's stores are the
//! file's page cache and a FLUSH (`fsync`) puts them on disk. A
//! `read_only` file is opened read-only, mapped `PROT_READ` and placed in
//! a read-only memory slot: the guest's stores exit to the VMM as MMIO
//! writes nothing claims, which are dropped and counted (as Firecracker
//! does on x86), so the guest reads back the file as it was.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use sie_config::Pmem as PmemConfig;
use sie_virtio::pmem::Pmem;
use vm_memory::MmapRegion;

use sie_hv::Vm;

use crate::device_manager::DeviceManager;
use crate::error::{Result, VmmError};

/// Alignment and size granule of a pmem region in the guest.
pub const PMEM_ALIGN: u64 = 2 << 20;

/// Maps `len` bytes of `file` at the start of an anonymous reservation of
/// `aligned` bytes (see the module header).
fn map_file(file: &File, len: u64, aligned: u64, read_only: bool) -> std::io::Result<MmapRegion> {
    let size = usize::try_from(aligned).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let file_pages = usize::try_from(len.next_multiple_of(4096))
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let region = MmapRegion::build(
        None,
        size,
        prot,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
    )
    .map_err(std::io::Error::other)?;
    let file_prot = if read_only { libc::PROT_READ } else { prot };
    // SAFETY: the file goes over the first `file_pages` bytes of the
    // reservation `region` owns (file_pages <= size); MAP_FIXED replaces
    // only those pages, which nothing else uses yet, and `region`'s drop
    // unmaps the whole range, file pages included.
    let at = unsafe {
        libc::mmap(
            region.as_ptr().cast(),
            file_pages,
            file_prot,
            libc::MAP_SHARED | libc::MAP_FIXED,
            file.as_raw_fd(),
            0,
        )
    };
    if at == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(region)
}

/// Opens, maps and places the file of `pmem` (RAM ends at `ram_end`):
/// the device and its name, for the virtio wiring to add.
pub(crate) fn place(
    pmem: &PmemConfig,
    vm: &dyn Vm,
    ram_end: u64,
    manager: &mut DeviceManager<'_>,
) -> Result<(String, Pmem)> {
    let name = format!("pmem {} ({})", pmem.id, pmem.path_on_host.display());
    let fail = |source: Box<dyn std::error::Error + Send + Sync>| VmmError::Virtio {
        name: name.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(!pmem.read_only)
        .open(&pmem.path_on_host)
        .map_err(|e| fail(e.into()))?;
    let meta = file.metadata().map_err(|e| fail(e.into()))?;
    if !meta.is_file() || meta.len() == 0 {
        return Err(fail(
            "the backing file must be a non-empty regular file".into(),
        ));
    }
    let aligned = meta
        .len()
        .checked_next_multiple_of(PMEM_ALIGN)
        .ok_or_else(|| fail("the backing file is too large".into()))?;
    let addr = manager.allocate_device_memory(&name, ram_end, aligned, PMEM_ALIGN)?;
    let region =
        map_file(&file, meta.len(), aligned, pmem.read_only).map_err(|e| fail(e.into()))?;
    let region = Arc::new(region);
    let placed = if pmem.read_only {
        vm.map_read_only_device_memory(addr, region)
    } else {
        vm.map_device_memory(addr, region)
    };
    placed.map_err(|e| fail(e.into()))?;
    let device = Pmem::new(file, addr, aligned);
    Ok((name, device))
}

/// The root device arguments for a `pmem` marked `root_device`
/// (`root=/dev/pmemN` in configuration order), if any.
pub(crate) fn root_args(pmems: &[PmemConfig]) -> Option<String> {
    let index = pmems.iter().position(|p| p.root_device)?;
    let mode = if pmems[index].read_only { "ro" } else { "rw" };
    Some(format!("root=/dev/pmem{index} {mode}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_shorter_than_its_region_is_mapped_with_an_anonymous_tail() {
        let path = std::env::temp_dir().join(format!("sie-pmem-map-{}", std::process::id()));
        std::fs::write(&path, b"hello").unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let region = map_file(&file, 5, PMEM_ALIGN, false).unwrap();
        // SAFETY: `region` maps PMEM_ALIGN readable and writable bytes.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), PMEM_ALIGN as usize) };
        assert_eq!(&bytes[..5], b"hello");
        bytes[0] = b'j';
        // Past the file's page: anonymous, writable, never in the file.
        bytes[PMEM_ALIGN as usize - 1] = 1;
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"jello");
        drop(region);
        let read_only = File::open(&path).unwrap();
        let region = map_file(&read_only, 5, PMEM_ALIGN, true).unwrap();
        // SAFETY: the first 5 bytes of the mapping are readable.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), 5) };
        assert_eq!(bytes, b"jello");
        drop(region);
        assert_eq!(std::fs::read(&path).unwrap(), b"jello");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn the_root_pmem_names_its_device() {
        let pmems: Vec<PmemConfig> = serde_json::from_str(
            r#"[{"id": "a", "path_on_host": "p"},
                {"id": "b", "path_on_host": "q", "root_device": true, "read_only": true}]"#,
        )
        .unwrap();
        assert_eq!(root_args(&pmems).as_deref(), Some("root=/dev/pmem1 ro"));
        assert_eq!(root_args(&pmems[..1]), None);
    }
}
