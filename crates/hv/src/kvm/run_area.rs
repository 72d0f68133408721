//! The vCPU's shared run area (`struct kvm_run` and the I/O data page after
//! it), mapped by sie itself, and the decoding of an exit into a [`VmExit`].
//!
//! sie maps the area itself rather than going through `VcpuFd::run` because
//! that API hides the internal-error sub-code (needed to tell an emulation
//! failure apart) and hands out `&mut kvm_run`, whose borrow covers only the
//! struct, not the port-I/O data that lies after it. Here every access goes
//! through one raw pointer that covers the whole mapping.

use std::io;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull, addr_of, addr_of_mut};

use kvm_bindings::{
    KVM_EXIT_DEBUG, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_HLT, KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_INTR,
    KVM_EXIT_IO, KVM_EXIT_IO_IN, KVM_EXIT_IO_OUT, KVM_EXIT_IRQ_WINDOW_OPEN, KVM_EXIT_MMIO,
    KVM_EXIT_SHUTDOWN, KVM_EXIT_SYSTEM_EVENT, KVM_INTERNAL_ERROR_EMULATION, KVM_SYSTEM_EVENT_CRASH,
    KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN, kvm_run,
};

use crate::exit::{DebugExit, SystemEventKind, VmExit};

/// A mapping of a vCPU file's run area.
#[derive(Debug)]
pub(crate) struct RunArea {
    base: NonNull<u8>,
    size: usize,
}

// SAFETY: the mapping belongs to this value alone; moving it to another
// thread moves sole access with it.
unsafe impl Send for RunArea {}

impl RunArea {
    /// Maps `size` bytes (the `KVM_GET_VCPU_MMAP_SIZE` answer) of a vCPU file.
    pub(crate) fn map(vcpu: &impl AsRawFd, size: usize) -> io::Result<RunArea> {
        if size < size_of::<kvm_run>() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a fresh shared mapping at an address the kernel chooses
        // cannot overlap any Rust object; the result is checked below.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                vcpu.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(addr.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(RunArea { base, size })
    }

    fn run(&self) -> *mut kvm_run {
        self.base.as_ptr().cast()
    }

    /// Sets `kvm_run.immediate_exit`: when non-zero, `KVM_RUN` completes any
    /// pending I/O and returns `EINTR` without running guest code.
    pub(crate) fn set_immediate_exit(&mut self, value: u8) {
        // SAFETY: the mapping is at least size_of::<kvm_run>() bytes (checked
        // in `map`) and the kernel does not write it while we are not in KVM_RUN.
        unsafe { addr_of_mut!((*self.run()).immediate_exit).write(value) };
    }

    /// Decodes the exit the last successful `KVM_RUN` left in the area.
    /// Borrowed buffers point into the area, so they live until the next
    /// call that takes `&mut self`.
    #[inline]
    pub(crate) fn exit(&mut self) -> VmExit<'_> {
        let run = self.run();
        // The reads below share one justification: the mapping covers a
        // whole kvm_run, the kernel finished writing it when KVM_RUN
        // returned, and `exit_reason` tells which union member it filled.
        // SAFETY: see above; `exit_reason` is a plain field.
        let reason = unsafe { addr_of!((*run).exit_reason).read() };
        match reason {
            KVM_EXIT_IO => {
                // SAFETY: see above; exit_reason is KVM_EXIT_IO.
                let io = unsafe { addr_of!((*run).__bindgen_anon_1.io).read() };
                let len = usize::from(io.size) * io.count as usize;
                let Some(data) = self.slice(io.data_offset, len) else {
                    return VmExit::Unsupported(reason);
                };
                match u32::from(io.direction) {
                    KVM_EXIT_IO_IN => VmExit::IoIn {
                        port: io.port,
                        size: io.size,
                        data,
                    },
                    KVM_EXIT_IO_OUT => VmExit::IoOut {
                        port: io.port,
                        size: io.size,
                        data,
                    },
                    _ => VmExit::Unsupported(reason),
                }
            }
            KVM_EXIT_MMIO => {
                // SAFETY: see above; exit_reason is KVM_EXIT_MMIO.
                let mmio = unsafe { addr_of_mut!((*run).__bindgen_anon_1.mmio) };
                // SAFETY: as above, reading plain fields of the filled member.
                let (addr, len, is_write) =
                    unsafe { ((*mmio).phys_addr, (*mmio).len as usize, (*mmio).is_write) };
                // SAFETY: `data` is an 8-byte array inside the mapping; the
                // length is clamped to it, and the slice is tied to `&mut self`.
                let data = unsafe {
                    let bytes = addr_of_mut!((*mmio).data);
                    std::slice::from_raw_parts_mut(bytes.cast::<u8>(), len.min(8))
                };
                if is_write != 0 {
                    VmExit::MmioWrite { addr, data }
                } else {
                    VmExit::MmioRead { addr, data }
                }
            }
            KVM_EXIT_HLT => VmExit::Hlt,
            KVM_EXIT_SHUTDOWN => VmExit::Shutdown,
            KVM_EXIT_IRQ_WINDOW_OPEN => VmExit::IrqWindowOpen,
            KVM_EXIT_INTR => VmExit::Interrupted,
            KVM_EXIT_SYSTEM_EVENT => {
                // SAFETY: see above; exit_reason is KVM_EXIT_SYSTEM_EVENT.
                let kind = unsafe { addr_of!((*run).__bindgen_anon_1.system_event.type_).read() };
                VmExit::SystemEvent(system_event_kind(kind))
            }
            KVM_EXIT_INTERNAL_ERROR => {
                // SAFETY: see above; exit_reason is KVM_EXIT_INTERNAL_ERROR.
                let suberror =
                    unsafe { addr_of!((*run).__bindgen_anon_1.internal.suberror).read() };
                VmExit::InternalError {
                    suberror,
                    emulation: suberror == KVM_INTERNAL_ERROR_EMULATION,
                }
            }
            KVM_EXIT_FAIL_ENTRY => {
                // SAFETY: see above; exit_reason is KVM_EXIT_FAIL_ENTRY.
                let reason = unsafe {
                    addr_of!(
                        (*run)
                            .__bindgen_anon_1
                            .fail_entry
                            .hardware_entry_failure_reason
                    )
                    .read()
                };
                VmExit::FailEntry { reason }
            }
            KVM_EXIT_DEBUG => {
                // SAFETY: see above; exit_reason is KVM_EXIT_DEBUG.
                let arch = unsafe { addr_of!((*run).__bindgen_anon_1.debug.arch).read() };
                VmExit::Debug(DebugExit {
                    exception: arch.exception,
                    pc: arch.pc,
                    dr6: arch.dr6,
                    dr7: arch.dr7,
                })
            }
            other => VmExit::Unsupported(other),
        }
    }

    /// `len` bytes at `offset` into the area, if they lie inside it. The
    /// kernel chooses the offset; the check guards against a bad one.
    fn slice(&mut self, offset: u64, len: usize) -> Option<&mut [u8]> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        // SAFETY: start..end lies inside the mapping (checked above), and the
        // slice borrows `self` mutably, so nothing else reads or writes the
        // area (the kernel only does during KVM_RUN, which needs `&mut self`).
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) })
    }
}

impl Drop for RunArea {
    fn drop(&mut self) {
        // SAFETY: `base`/`size` describe a mapping made in `map` that nothing
        // borrows any more (borrows are tied to `&mut self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.size) };
    }
}

/// Maps a `KVM_SYSTEM_EVENT_*` type to the neutral kind.
pub(crate) fn system_event_kind(kind: u32) -> SystemEventKind {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => SystemEventKind::Shutdown,
        KVM_SYSTEM_EVENT_RESET => SystemEventKind::Reset,
        KVM_SYSTEM_EVENT_CRASH => SystemEventKind::Crash,
        other => SystemEventKind::Other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_events_map_to_neutral_kinds() {
        assert_eq!(system_event_kind(1), SystemEventKind::Shutdown);
        assert_eq!(system_event_kind(2), SystemEventKind::Reset);
        assert_eq!(system_event_kind(3), SystemEventKind::Crash);
        assert_eq!(system_event_kind(4), SystemEventKind::Other(4));
    }

    /// Builds a fake run area over an anonymous mapping, fills it like the
    /// kernel would, and checks the decoding.
    fn fake_area(fill: impl FnOnce(*mut kvm_run, *mut u8)) -> RunArea {
        let size = 3 * 4096;
        // SAFETY: anonymous private mapping, result checked.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let base = NonNull::new(addr.cast::<u8>()).unwrap();
        fill(base.as_ptr().cast(), base.as_ptr());
        RunArea { base, size }
    }

    #[test]
    fn decodes_port_output_from_the_data_page() {
        let mut area = fake_area(|run, base| {
            // SAFETY: test mapping of 3 pages.
            unsafe {
                (*run).exit_reason = KVM_EXIT_IO;
                let io = &mut (*run).__bindgen_anon_1.io;
                io.direction = KVM_EXIT_IO_OUT as u8;
                io.size = 1;
                io.count = 1;
                io.port = 0x3f8;
                io.data_offset = 4096;
                *base.add(4096) = 0x41;
            }
        });
        match area.exit() {
            VmExit::IoOut { port, data, .. } => {
                assert_eq!(port, 0x3f8);
                assert_eq!(data, &[0x41]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn io_data_outside_the_area_is_unsupported_not_a_crash() {
        let mut area = fake_area(|run, _| {
            // SAFETY: test mapping of 3 pages.
            unsafe {
                (*run).exit_reason = KVM_EXIT_IO;
                let io = &mut (*run).__bindgen_anon_1.io;
                io.size = 4;
                io.count = 4096;
                io.data_offset = 4096;
            }
        });
        assert!(matches!(area.exit(), VmExit::Unsupported(KVM_EXIT_IO)));
    }

    #[test]
    fn decodes_mmio_read_and_clamps_length() {
        let mut area = fake_area(|run, _| {
            // SAFETY: test mapping of 3 pages.
            unsafe {
                (*run).exit_reason = KVM_EXIT_MMIO;
                let mmio = &mut (*run).__bindgen_anon_1.mmio;
                mmio.phys_addr = 0xd000_0000;
                mmio.len = 64;
                mmio.is_write = 0;
            }
        });
        match area.exit() {
            VmExit::MmioRead { addr, data } => {
                assert_eq!(addr, 0xd000_0000);
                assert_eq!(data.len(), 8);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn internal_emulation_error_is_flagged() {
        let mut area = fake_area(|run, _| {
            // SAFETY: test mapping of 3 pages.
            unsafe {
                (*run).exit_reason = KVM_EXIT_INTERNAL_ERROR;
                (*run).__bindgen_anon_1.internal.suberror = KVM_INTERNAL_ERROR_EMULATION;
            }
        });
        assert!(matches!(
            area.exit(),
            VmExit::InternalError {
                suberror: 1,
                emulation: true
            }
        ));
    }

    #[test]
    fn unknown_exit_reason_is_unsupported() {
        let mut area = fake_area(|run, _| {
            // SAFETY: test mapping of 3 pages.
            unsafe { (*run).exit_reason = 9999 };
        });
        assert!(matches!(area.exit(), VmExit::Unsupported(9999)));
    }

    #[test]
    fn immediate_exit_is_written_to_the_struct() {
        let mut area = fake_area(|_, _| {});
        area.set_immediate_exit(1);
        // SAFETY: test mapping.
        assert_eq!(unsafe { (*area.run()).immediate_exit }, 1);
    }
}
