# unknown_io: reads port 0x1234 and the 32-bit word at MMIO 0xd0000000,
# which no device claims, and prints "port=<hex>" and "mmio=<hex>"
# (expected: port=ff, mmio=ffffffff); then resets.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     s_port(%rip), %rsi
        call    puts
        mov     $0x1234, %dx
        xor     %eax, %eax
        in      %dx, %al
        call    puthex
        mov     $'\n', %al
        call    putc
        lea     s_mmio(%rip), %rsi
        call    puts
        mov     $0xd0000000, %ebx
        mov     (%rbx), %eax
        call    puthex
        mov     $'\n', %al
        call    putc
        jmp     reset

        .section .rodata
s_port: .asciz "port="
s_mmio: .asciz "mmio="
