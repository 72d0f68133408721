# spin: prints "spinning" and loops forever (for signal and timeout tests).
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     s_spin(%rip), %rsi
        call    puts
1:      jmp     1b

        .section .rodata
s_spin: .asciz "spinning\n"
