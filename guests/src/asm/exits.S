# exits: the exit benchmark. With N from "count=N" (default 1000) it makes
# N port writes to port 0x510, N port reads from it, and N 4-byte MMIO
# writes to 0xc0000008 (inside the boot-timer page, not a marker), marking
# the phase boundaries with port 0x80 writes of 0xe1, 0xe2, 0xe3 and 0xe4;
# then resets.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     key_count(%rip), %rsi
        mov     $1000, %edx
        call    param_or_default
        mov     %rax, %r13
        mov     $0x510, %dx

        mov     $0xe1, %al
        out     %al, $0x80
        mov     %r13, %rcx
        test    %rcx, %rcx
        jz      2f
1:      out     %al, %dx
        dec     %rcx
        jnz     1b
2:      mov     $0xe2, %al
        out     %al, $0x80
        mov     %r13, %rcx
        test    %rcx, %rcx
        jz      4f
3:      in      %dx, %al
        dec     %rcx
        jnz     3b
4:      mov     $0xe3, %al
        out     %al, $0x80
        mov     $0xc0000008, %ebx
        mov     %r13, %rcx
        test    %rcx, %rcx
        jz      6f
5:      movl    %ecx, (%rbx)
        dec     %rcx
        jnz     5b
6:      mov     $0xe4, %al
        out     %al, $0x80
        jmp     reset

        .section .rodata
key_count: .asciz "count="
