//! The kernel command line: built the way sie builds it (linux-loader's
//! `Cmdline` with the user's base, a `root=` argument and one
//! `virtio_mmio.device=` per device, as `sie_vmm::virtio::boot_cmdline`
//! does), or taken raw, then written with the zero page or PVH start info
//! by `sie_arch::boot_info::write_boot_info` into 16 MiB of guest memory.
//!
//! Input: a mode byte, the base up to the first newline, the devices, then
//! the kernel's own limit. Checked: a built command line fits sie's
//! buffer and names every device; a line that is written is in memory
//! NUL-terminated at `CMDLINE_ADDR`, within the kernel's limit, and the
//! zero page or start info points at it; a refusal is for a NUL, a length
//! over the limit, or nothing else.

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_params, setup_header};
use sie_arch::boot_info::{BootInfoError, write_boot_info};
use sie_arch::layout::{CMDLINE_ADDR, CMDLINE_MAX_SIZE};
use sie_arch::loader::{EntryMode, KernelFormat, LoadedKernel};
use sie_virtio::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

use crate::input::Input;

const MEM_SIZE: u64 = 16 << 20;
/// `hvm_start_info.cmdline_paddr`: after magic, version, flags, nr_modules
/// and modlist_paddr.
const PVH_CMDLINE_PADDR_AT: u64 = 24;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let rest = input.rest();
    let (base, rest) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let base = String::from_utf8_lossy(base);
    let mut input = Input::new(rest);
    let text = if mode & 1 == 0 {
        match built(&base, &mut input) {
            Some(text) => text,
            None => return,
        }
    } else {
        base.into_owned()
    };

    let mem =
        GuestMemory::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).expect("guest memory");
    let pvh = mode & 2 != 0;
    let limit = if input.bool() { input.u32() } else { 0 };
    let kernel = LoadedKernel {
        entry: GuestAddress(1 << 20),
        mode: if pvh {
            EntryMode::Pvh
        } else {
            EntryMode::Linux64
        },
        setup_header: (!pvh && limit != 0).then(|| setup_header {
            cmdline_size: limit,
            ..Default::default()
        }),
        end: GuestAddress(2 << 20),
        format: KernelFormat::Elf,
    };
    // What sie and (for a bzImage) the kernel accept, without the NUL.
    let mut max = CMDLINE_MAX_SIZE - 1;
    if let Some(h) = kernel.setup_header {
        max = max.min(h.cmdline_size as usize);
    }
    match write_boot_info(&mem, &kernel, &text, None, None, MEM_SIZE) {
        Ok(info) => {
            assert!(text.len() <= max, "a {}-byte line passed {max}", text.len());
            let mut got = vec![0u8; text.len() + 1];
            mem.read_slice(&mut got, GuestAddress(CMDLINE_ADDR))
                .expect("cmdline");
            assert_eq!(&got[..text.len()], text.as_bytes(), "cmdline in memory");
            assert_eq!(got[text.len()], 0, "cmdline not NUL-terminated");
            let pointer: u64 = if pvh {
                mem.read_obj(GuestAddress(info.0 + PVH_CMDLINE_PADDR_AT))
                    .expect("start info")
            } else {
                let params: boot_params = mem.read_obj(info).expect("zero page");
                u64::from(params.hdr.cmd_line_ptr)
            };
            assert_eq!(pointer, CMDLINE_ADDR, "boot info points elsewhere");
        }
        Err(BootInfoError::CmdlineTooLong { len, max: limit }) => {
            assert_eq!(len, text.len());
            assert!(
                len > limit && limit == max,
                "{len} bytes refused at {limit}"
            );
        }
        Err(BootInfoError::CmdlineNul(at)) => assert_eq!(text.as_bytes()[at], 0),
        Err(e) => panic!("{e}"),
    }
}

/// The command line as sie builds it, or `None` when linux-loader refuses.
fn built(base: &str, input: &mut Input) -> Option<String> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).expect("a 4 KiB cmdline");
    if !base.trim().is_empty() {
        cmdline.insert_str(base.trim()).ok()?;
    }
    if !base.split_whitespace().any(|a| a.starts_with("root=")) && input.bool() {
        let root = match input.u8() % 3 {
            0 => "root=/dev/vda rw".to_string(),
            1 => "root=/dev/vdb ro".to_string(),
            _ => format!(
                "root=PARTUUID={} rw",
                String::from_utf8_lossy(input.chunk(40))
            ),
        };
        cmdline.insert_str(root).ok()?;
    }
    let count = input.below(64);
    for i in 0..count {
        let (len, addr) = match input.u8() % 8 {
            0 => (input.u64(), input.u64()),
            1 => (0x1000, 0xffff_f000),
            _ => (0x1000, 0xd000_0000 + u64::from(i) * 0x1000),
        };
        let irq = if input.u8() == 0 { input.u32() } else { 5 + i };
        cmdline
            .add_virtio_mmio_device(len, GuestAddress(addr), irq, None)
            .ok()?;
    }
    let text = cmdline
        .as_cstring()
        .expect("linux-loader's cmdline has no NUL")
        .into_string()
        .expect("linux-loader's cmdline is ASCII");
    assert!(text.len() < CMDLINE_MAX_SIZE, "{} bytes built", text.len());
    let named = text.matches("virtio_mmio.device=").count();
    assert!(
        named >= count as usize,
        "{count} devices, {named} on the command line"
    );
    Some(text)
}
