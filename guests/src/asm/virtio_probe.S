# virtio_probe: reads the MagicValue, Version and DeviceID registers of the
# first two virtio-MMIO slots (0xc0001000, 0xc0002000) and prints
# "slotN magic=<hex> version=<hex> device=<hex>" for each; then resets.
# An empty slot reads all ones.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     $0xc0001000, %r12d
        xor     %r13d, %r13d
1:      lea     s_slot(%rip), %rsi
        call    puts
        mov     %r13d, %eax
        call    puthex
        lea     s_magic(%rip), %rsi
        call    puts
        mov     0x0(%r12), %eax
        call    puthex
        lea     s_version(%rip), %rsi
        call    puts
        mov     0x4(%r12), %eax
        call    puthex
        lea     s_device(%rip), %rsi
        call    puts
        mov     0x8(%r12), %eax
        call    puthex
        mov     $'\n', %al
        call    putc
        add     $0x1000, %r12d
        inc     %r13d
        cmp     $2, %r13d
        jne     1b
        jmp     reset

        .section .rodata
s_slot:    .asciz "slot"
s_magic:   .asciz " magic="
s_version: .asciz " version="
s_device:  .asciz " device="
