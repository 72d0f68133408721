# echo: prints "echo ready", then forever: polls COM1's line status register
# (LSR, port 0x3fd) and, when it says data is ready (bit 0), reads the byte
# from the receive buffer (RBR, port 0x3f8) and prints "<" BYTE ">". A short
# delay loop between polls keeps the exit rate modest. With nothing to read
# it never ends (the test stops sie).
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     ready(%rip), %rsi
        call    puts
1:      mov     $2000, %ecx
2:      dec     %ecx
        jnz     2b
        mov     $0x3fd, %dx
        in      %dx, %al
        test    $1, %al
        jz      1b
        mov     $0x3f8, %dx
        in      %dx, %al
        mov     %al, %bl
        mov     $'<', %al
        call    putc
        mov     %bl, %al
        call    putc
        mov     $'>', %al
        call    putc
        jmp     1b

        .section .rodata
ready:  .asciz  "echo ready\n"
