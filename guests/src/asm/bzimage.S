# bzimage: a guest in bzImage format (boot protocol 2.15, one setup sector,
# a 64-bit kernel). The protected-mode part is loaded at 1 MiB and entered at
# its offset 0x200 in 64-bit mode with %rsi = boot_params. Prints
#   bzimage ok version=<hex boot protocol version from boot_params.hdr>
#   cmdline=<text>
# then resets. All code is position independent (RIP-relative).
        .section .text
        .code16
setup_start:
        .org    0x1f1
setup_sects:    .byte   1
root_flags:     .word   0
syssize:        .long   (pm_end - pm_start + 15) / 16
ram_size:       .word   0
vid_mode:       .word   0
root_dev:       .word   0
boot_flag:      .word   0xaa55
jump:           .byte   0xeb, 0x66
header:         .ascii  "HdrS"
version:        .word   0x020f
realmode_swtch: .long   0
start_sys_seg:  .word   0
kernel_version: .word   0
type_of_loader: .byte   0
loadflags:      .byte   0x01                    # LOADED_HIGH
setup_move_size: .word  0
code32_start:   .long   0x100000
ramdisk_image:  .long   0
ramdisk_size:   .long   0
bootsect_kludge: .long  0
heap_end_ptr:   .word   0
ext_loader_ver: .byte   0
ext_loader_type: .byte  0
cmd_line_ptr:   .long   0
initrd_addr_max: .long  0x7fffffff
kernel_alignment: .long 0x200000
relocatable_kernel: .byte 0
min_alignment:  .byte   0
xloadflags:     .word   0x0001                  # XLF_KERNEL_64
cmdline_size:   .long   4095
hardware_subarch: .long 0
hardware_subarch_data: .quad 0
payload_offset: .long   0
payload_length: .long   0
setup_data:     .quad   0
pref_address:   .quad   0x100000
init_size:      .long   0x10000
handover_offset: .long  0
kernel_info_offset: .long 0
        .org    1024                            # (setup_sects + 1) * 512

pm_start:
        .code32
        hlt                                     # no 32-bit entry
        .org    pm_start + 0x200
        .code64
entry64:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     s_ok(%rip), %rsi
        call    puts
        movzwl  0x206(%r12), %eax               # hdr.version
        call    puthex
        mov     $'\n', %al
        call    putc
        lea     s_cmdline(%rip), %rsi
        call    puts
        mov     0x228(%r12), %esi
        call    puts
        mov     $'\n', %al
        call    putc
        jmp     reset

        .include "common64.inc"
        .section .text
s_ok:      .asciz "bzimage ok version="
s_cmdline: .asciz "cmdline="
        .balign 16
        .space  4096
stack_top:
pm_end:
