# bootinfo: reports what the Linux boot protocol handed it, from the
# boot_params "zero page" at %rsi:
#   cmdline=<text>
#   initrd=<hex addr> <hex size>        (0 0 without an initrd)
#   e820 <hex addr> <hex size> <type>   (one line per entry)
#   e820_entries=<n>
# then resets.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     s_cmdline(%rip), %rsi
        call    puts
        mov     0x228(%r12), %esi               # hdr.cmd_line_ptr
        call    puts
        mov     $'\n', %al
        call    putc

        lea     s_initrd(%rip), %rsi
        call    puts
        mov     0x218(%r12), %eax               # hdr.ramdisk_image
        mov     0xc0(%r12), %edx                # ext_ramdisk_image
        shl     $32, %rdx
        or      %rdx, %rax
        call    puthex
        mov     $' ', %al
        call    putc
        mov     0x21c(%r12), %eax               # hdr.ramdisk_size
        mov     0xc4(%r12), %edx                # ext_ramdisk_size
        shl     $32, %rdx
        or      %rdx, %rax
        call    puthex
        mov     $'\n', %al
        call    putc

        movzbl  0x1e8(%r12), %ecx               # e820_entries
        lea     0x2d0(%r12), %rbx               # e820_table, 20-byte entries
        mov     %ecx, %r13d
1:      test    %ecx, %ecx
        jz      2f
        lea     s_e820(%rip), %rsi
        call    puts
        mov     (%rbx), %rax
        call    puthex
        mov     $' ', %al
        call    putc
        mov     8(%rbx), %rax
        call    puthex
        mov     $' ', %al
        call    putc
        mov     16(%rbx), %eax
        call    putdec
        mov     $'\n', %al
        call    putc
        add     $20, %rbx
        dec     %ecx
        jmp     1b
2:      lea     s_entries(%rip), %rsi
        call    puts
        mov     %r13, %rax
        call    putdec
        mov     $'\n', %al
        call    putc
        jmp     reset

        .section .rodata
s_cmdline: .asciz "cmdline="
s_initrd:  .asciz "initrd="
s_e820:    .asciz "e820 "
s_entries: .asciz "e820_entries="
