# triple_fault: prints "about to triple fault", loads an IDT with limit 0
# and executes ud2: the #UD cannot be delivered, nor the #GP or #DF that
# follow, so the CPU shuts down (a KVM shutdown exit).
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     s_about(%rip), %rsi
        call    puts
        lidt    empty_idt(%rip)
        ud2
1:      jmp     1b

        .section .rodata
s_about: .asciz "about to triple fault\n"
        .balign 16
empty_idt:
        .word   0
        .quad   0
