# loop: counts down "iterations=N" (default 1000000) with a two-instruction
# loop (dec; jnz), then resets. `sie doctor` times it for the guest
# instruction rate.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     key_iterations(%rip), %rsi
        mov     $1000000, %edx
        call    param_or_default
        mov     %rax, %rcx
        test    %rcx, %rcx
        jz      2f
1:      dec     %rcx
        jnz     1b
2:      jmp     reset

        .section .rodata
key_iterations: .asciz "iterations="
