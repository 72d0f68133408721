//! The ELF64 core file's fixed part: the file header, the program headers
//! (one `PT_NOTE`, then one `PT_LOAD` per RAM region) and the notes (one
//! `NT_PRSTATUS` per vCPU, then one "QEMU" CPU-state note per vCPU, see
//! [`super::cpu_state`]), laid out as plain bytes, so it is tested
//! without a VM. Guest RAM follows at page-aligned offsets, so pages the
//! guest never touched can stay holes.

use sie_hv::x86::{Regs, SpecialRegs};

/// One vCPU's registers as the core records them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuRegisters {
    /// General registers.
    pub regs: Regs,
    /// Segment and control registers (segment selectors and the FS/GS bases
    /// go into `NT_PRSTATUS`).
    pub sregs: SpecialRegs,
}

/// One RAM region: where it is in the guest and in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Guest-physical start.
    pub guest_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where its first byte lies in the file (page-aligned).
    pub file_offset: u64,
}

/// The fixed part of a core file and where each region's bytes go.
#[derive(Debug)]
pub struct CoreLayout {
    /// Header, program headers and notes, written at offset 0.
    pub head: Vec<u8>,
    /// One per RAM region, in order.
    pub segments: Vec<LoadSegment>,
    /// The file's length.
    pub file_len: u64,
}

const PAGE: u64 = 4096;
const EHDR_SIZE: u16 = 64;
const PHDR_SIZE: u16 = 56;
const ET_CORE: u16 = 4;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PF_RWX: u32 = 7;
/// `NT_PRSTATUS`, with the owner name "CORE" as Linux writes it.
const NT_PRSTATUS: u32 = 1;
const NOTE_NAME: &[u8; 8] = b"CORE\0\0\0\0";
/// `sizeof(struct elf_prstatus)` on x86-64.
pub const PRSTATUS_SIZE: usize = 336;
/// Where `pr_reg` (the `user_regs_struct`) starts inside `elf_prstatus`.
const PR_REG_OFFSET: usize = 112;
/// Where `pr_pid` starts inside `elf_prstatus`.
const PR_PID_OFFSET: usize = 32;
/// Bytes of one `NT_PRSTATUS` note: its 12-byte header, the padded name,
/// the descriptor.
const NOTE_SIZE: usize = 12 + NOTE_NAME.len() + PRSTATUS_SIZE;
/// Bytes of one "QEMU" note ("QEMU\0" padded to 8).
const CPU_NOTE_SIZE: usize = 12 + 8 + super::cpu_state::SIZE;

fn put16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// The x86-64 `user_regs_struct` (the `elf_gregset_t` gdb reads), in its
/// order: r15 … rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base,
/// ds, es, fs, gs.
pub fn gregset(vcpu: &VcpuRegisters) -> [u64; 27] {
    let (r, s) = (&vcpu.regs, &vcpu.sregs);
    [
        r.r15,
        r.r14,
        r.r13,
        r.r12,
        r.rbp,
        r.rbx,
        r.r11,
        r.r10,
        r.r9,
        r.r8,
        r.rax,
        r.rcx,
        r.rdx,
        r.rsi,
        r.rdi,
        // Not inside a system call.
        u64::MAX,
        r.rip,
        u64::from(s.cs.selector),
        r.rflags,
        r.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ]
}

/// The `elf_prstatus` of vCPU `index`: its registers, and `index + 1` as
/// the "thread id" (gdb shows each vCPU as a thread; 0 would read as none).
fn prstatus(index: usize, vcpu: &VcpuRegisters) -> [u8; PRSTATUS_SIZE] {
    let mut desc = [0u8; PRSTATUS_SIZE];
    let pid = u32::try_from(index)
        .unwrap_or(u32::MAX - 1)
        .saturating_add(1);
    desc[PR_PID_OFFSET..PR_PID_OFFSET + 4].copy_from_slice(&pid.to_le_bytes());
    for (slot, value) in gregset(vcpu).iter().enumerate() {
        let at = PR_REG_OFFSET + slot * 8;
        desc[at..at + 8].copy_from_slice(&value.to_le_bytes());
    }
    desc
}

/// Lays out a core file for these vCPUs and RAM regions (`(guest address,
/// length)`, page-aligned as guest RAM always is).
pub fn layout(vcpus: &[VcpuRegisters], regions: &[(u64, u64)]) -> CoreLayout {
    let phnum = 1 + regions.len();
    let notes_offset = u64::from(EHDR_SIZE) + (phnum as u64) * u64::from(PHDR_SIZE);
    let notes_len = (vcpus.len() * (NOTE_SIZE + CPU_NOTE_SIZE)) as u64;
    let mut next = (notes_offset + notes_len).next_multiple_of(PAGE);
    let segments: Vec<LoadSegment> = regions
        .iter()
        .map(|&(guest_addr, len)| {
            let segment = LoadSegment {
                guest_addr,
                len,
                file_offset: next,
            };
            next = next.saturating_add(len).next_multiple_of(PAGE);
            segment
        })
        .collect();

    let mut head = Vec::with_capacity(usize::try_from(notes_offset + notes_len).unwrap_or(0));
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    head.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    head.extend_from_slice(&[0; 8]);
    put16(&mut head, ET_CORE);
    put16(&mut head, EM_X86_64);
    put32(&mut head, 1); // e_version
    put64(&mut head, 0); // e_entry
    put64(&mut head, u64::from(EHDR_SIZE)); // e_phoff
    put64(&mut head, 0); // e_shoff
    put32(&mut head, 0); // e_flags
    put16(&mut head, EHDR_SIZE);
    put16(&mut head, PHDR_SIZE);
    // More than 65535 regions never happens (KVM has far fewer memslots).
    put16(&mut head, u16::try_from(phnum).unwrap_or(u16::MAX));
    put16(&mut head, 0); // e_shentsize
    put16(&mut head, 0); // e_shnum
    put16(&mut head, 0); // e_shstrndx

    // PT_NOTE.
    put32(&mut head, PT_NOTE);
    put32(&mut head, 0);
    put64(&mut head, notes_offset);
    put64(&mut head, 0);
    put64(&mut head, 0);
    put64(&mut head, notes_len);
    put64(&mut head, 0);
    put64(&mut head, 4);
    // One PT_LOAD per region. p_vaddr repeats the physical address: that is
    // right for guests that identity-map RAM (sie's tiny guests, early boot)
    // and what tools expect when nothing better is known.
    for segment in &segments {
        put32(&mut head, PT_LOAD);
        put32(&mut head, PF_RWX);
        put64(&mut head, segment.file_offset);
        put64(&mut head, segment.guest_addr);
        put64(&mut head, segment.guest_addr);
        put64(&mut head, segment.len);
        put64(&mut head, segment.len);
        put64(&mut head, PAGE);
    }
    for (index, vcpu) in vcpus.iter().enumerate() {
        put32(&mut head, 5); // "CORE" and its NUL
        put32(&mut head, PRSTATUS_SIZE as u32);
        put32(&mut head, NT_PRSTATUS);
        head.extend_from_slice(NOTE_NAME);
        head.extend_from_slice(&prstatus(index, vcpu));
    }
    // As QEMU lays them out: every NT_PRSTATUS first, then the CPU states
    // in the same order (readers pair them by position).
    for vcpu in vcpus {
        put32(&mut head, super::cpu_state::NAME.len() as u32);
        put32(&mut head, super::cpu_state::SIZE as u32);
        put32(&mut head, super::cpu_state::NOTE_TYPE);
        head.extend_from_slice(super::cpu_state::NAME);
        head.extend_from_slice(&[0; 3]);
        head.extend_from_slice(&super::cpu_state::cpu_state(&vcpu.regs, &vcpu.sregs));
    }
    CoreLayout {
        head,
        segments,
        file_len: next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap())
    }

    fn u64_at(bytes: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
    }

    #[test]
    fn header_program_headers_and_notes_are_where_elf_says() {
        let mut vcpu = VcpuRegisters::default();
        vcpu.regs.rip = 0x1234_5678;
        vcpu.regs.rsp = 0x9000;
        vcpu.sregs.cs.selector = 0x10;
        let layout = layout(&[vcpu, vcpu], &[(0, 0x8000), (0x1_0000_0000, 0x2000)]);
        let head = &layout.head;
        assert_eq!(&head[..4], b"\x7fELF");
        assert_eq!(u16_at(head, 16), ET_CORE);
        assert_eq!(u16_at(head, 18), EM_X86_64);
        assert_eq!(u16_at(head, 56), 3, "one PT_NOTE and two PT_LOADs");
        // The note segment covers both notes, right after the headers.
        let note_phdr = 64;
        let notes_offset = u64_at(head, note_phdr + 8);
        assert_eq!(notes_offset, 64 + 3 * 56);
        let notes_len = 2 * (NOTE_SIZE + CPU_NOTE_SIZE) as u64;
        assert_eq!(u64_at(head, note_phdr + 32), notes_len);
        assert_eq!(head.len() as u64, notes_offset + notes_len);
        // The CPU states follow both NT_PRSTATUS notes.
        let cpu_note = notes_offset as usize + 2 * NOTE_SIZE;
        assert_eq!(&head[cpu_note + 12..cpu_note + 17], b"QEMU\0");
        // Loads: page-aligned, one after the other, physical = region.
        let second = 64 + 2 * 56;
        assert_eq!(u64_at(head, second + 8) % PAGE, 0);
        assert_eq!(u64_at(head, second + 24), 0x1_0000_0000);
        assert_eq!(u64_at(head, second + 32), 0x2000);
        assert_eq!(layout.segments[0].file_offset, PAGE);
        assert_eq!(layout.segments[1].file_offset, PAGE + 0x8000);
        assert_eq!(layout.file_len, PAGE + 0x8000 + 0x2000);
        // The first note's registers: rip is slot 16 of pr_reg, cs 17.
        let desc = notes_offset as usize + 12 + NOTE_NAME.len();
        assert_eq!(&head[notes_offset as usize + 12..desc], NOTE_NAME);
        assert_eq!(u64_at(head, desc + PR_REG_OFFSET + 16 * 8), 0x1234_5678);
        assert_eq!(u64_at(head, desc + PR_REG_OFFSET + 17 * 8), 0x10);
        assert_eq!(u64_at(head, desc + PR_REG_OFFSET + 19 * 8), 0x9000);
        // The second vCPU is thread 2.
        let second_desc = desc + NOTE_SIZE;
        assert_eq!(head[second_desc + PR_PID_OFFSET], 2);
    }
}
