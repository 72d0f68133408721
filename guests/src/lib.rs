//! Tiny freestanding test guests, each with one job, assembled from
//! `src/asm/*.S` by build.rs with the system `cc` and `ld`.
//!
//! Every guest prints on COM1 with one `out` per byte and ends by resetting
//! through the i8042 (port 0x64, 0xfe), which ends `sie run` with status 0.
//! See each `.S` file's header for what it prints.

/// One guest image.
#[derive(Clone, Copy, Debug)]
pub struct Guest {
    /// Short name.
    pub name: &'static str,
    /// The image.
    pub bytes: &'static [u8],
    /// Where build.rs wrote it (valid on the machine that built this crate).
    pub path: &'static str,
}

macro_rules! guest {
    ($const:ident, $name:literal, $file:literal, $doc:literal) => {
        #[doc = $doc]
        pub const $const: Guest = Guest {
            name: $name,
            bytes: include_bytes!(concat!(env!("OUT_DIR"), "/", $file)),
            path: concat!(env!("OUT_DIR"), "/", $file),
        };
    };
}

guest!(
    HELLO,
    "hello",
    "hello.elf",
    "Prints a line, writes port-0x80 markers 1..=N (`markers=N`, default 3) and the boot timer, resets."
);
guest!(
    BOOTINFO,
    "bootinfo",
    "bootinfo.elf",
    "Reports cmdline, initrd and e820 from boot_params."
);
guest!(
    PVH,
    "pvh",
    "pvh.elf",
    "PVH entry: reports start_info (magic, cmdline, modules, memmap)."
);
guest!(
    BZIMAGE,
    "bzimage",
    "bzimage.bin",
    "A bzImage-format guest entered at its 64-bit entry."
);
guest!(
    SMP,
    "smp",
    "smp.elf",
    "Starts `cpus=N` vCPUs through INIT/SIPI; each reports its APIC id."
);
guest!(
    UNKNOWN_IO,
    "unknown_io",
    "unknown_io.elf",
    "Reads an unclaimed port and MMIO address and prints the values."
);
guest!(
    VIRTIO_PROBE,
    "virtio_probe",
    "virtio_probe.elf",
    "Prints MagicValue, Version and DeviceID of the first two virtio-MMIO slots."
);
guest!(
    CPUID,
    "cpuid",
    "cpuid.elf",
    "Prints CPUID leaf 1 ECX/EDX, leaf 7 EBX/ECX/EDX and 0x8000_0001 ECX/EDX and MSR 0x174 in hex (`leaf1 ecx=H edx=H`, ..., `msr174=H`)."
);
guest!(
    TRIPLE_FAULT,
    "triple_fault",
    "triple_fault.elf",
    "Triple-faults on purpose."
);
guest!(
    SPIN,
    "spin",
    "spin.elf",
    "Prints `spinning` and loops forever."
);
guest!(
    TICKER,
    "ticker",
    "ticker.elf",
    "Prints `ticking`, then writes unclaimed port 0x511 about every 4000 instructions, forever."
);
guest!(
    LOOP,
    "loop",
    "loop.elf",
    "Counts down `iterations=N` with a two-instruction loop, then resets."
);
guest!(
    COUNTER,
    "counter",
    "counter.elf",
    "Counts in guest RAM, printing `count N` every `delay=N` iterations, and resets after `limit=N` counts."
);
guest!(
    EXITS,
    "exits",
    "exits.elf",
    "The exit benchmark: `count=N` port writes, port reads and MMIO writes."
);

guest!(
    ECHO,
    "echo",
    "echo.elf",
    "Prints `echo ready`, then echoes each byte COM1 receives as `<BYTE>`, forever."
);
guest!(
    PANIC,
    "panic",
    "panic.elf",
    "Prints `panicking`, stores a marker word in RAM and reports a panic through pvpanic (port 0x505)."
);

/// Every guest.
pub const ALL: &[Guest] = &[
    HELLO,
    BOOTINFO,
    PVH,
    BZIMAGE,
    SMP,
    UNKNOWN_IO,
    VIRTIO_PROBE,
    TRIPLE_FAULT,
    SPIN,
    TICKER,
    LOOP,
    EXITS,
    COUNTER,
    ECHO,
    PANIC,
    CPUID,
];

/// Port writes `HELLO` makes with `markers=N`: its two lines, N markers and
/// the reset.
pub const fn hello_pio_writes(markers: u64) -> u64 {
    21 + markers + 4 + 1
}

/// Instructions per iteration of `LOOP`'s loop.
pub const LOOP_INSTRUCTIONS_PER_ITERATION: u64 = 2;

/// The port `EXITS` writes and reads (the benchmark puts a null device there).
pub const EXITS_BENCH_PORT: u16 = 0x510;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_was_built() {
        for guest in ALL {
            assert!(guest.bytes.len() > 64, "{} is empty", guest.name);
        }
    }

    #[test]
    fn elf_guests_are_elf64_x86_64() {
        for guest in ALL.iter().filter(|g| g.path.ends_with(".elf")) {
            assert_eq!(&guest.bytes[..4], b"\x7fELF", "{}", guest.name);
            assert_eq!(guest.bytes[4], 2, "{} is not 64-bit", guest.name);
            assert_eq!(u16::from_le_bytes([guest.bytes[18], guest.bytes[19]]), 62);
        }
    }

    #[test]
    fn the_bzimage_guest_has_a_boot_protocol_header() {
        let image = BZIMAGE.bytes;
        assert_eq!(&image[0x202..0x206], b"HdrS");
        assert_eq!(u16::from_le_bytes([image[0x1fe], image[0x1ff]]), 0xaa55);
        assert!(u16::from_le_bytes([image[0x206], image[0x207]]) >= 0x020c);
        assert_eq!(image[0x236] & 1, 1, "XLF_KERNEL_64");
    }
}
