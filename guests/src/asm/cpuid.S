# cpuid: prints what CPUID tells this vCPU about its features, one line per
# leaf, registers in hex, then resets:
#   leaf1 ecx=H edx=H
#   leaf7 ebx=H ecx=H edx=H
#   ext1 ecx=H edx=H
#   msr174=H (IA32_SYSENTER_CS, for CPU templates' MSR modifiers)
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp

        mov     $1, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ecx, %r12d
        mov     %edx, %r13d
        lea     s_leaf1(%rip), %rsi
        call    puts
        mov     %r12, %rax
        call    puthex
        lea     s_edx(%rip), %rsi
        call    puts
        mov     %r13, %rax
        call    puthex
        mov     $'\n', %al
        call    putc

        mov     $7, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ebx, %r12d
        mov     %ecx, %r13d
        mov     %edx, %r14d
        lea     s_leaf7(%rip), %rsi
        call    puts
        mov     %r12, %rax
        call    puthex
        lea     s_ecx(%rip), %rsi
        call    puts
        mov     %r13, %rax
        call    puthex
        lea     s_edx(%rip), %rsi
        call    puts
        mov     %r14, %rax
        call    puthex
        mov     $'\n', %al
        call    putc

        mov     $0x80000001, %eax
        xor     %ecx, %ecx
        cpuid
        mov     %ecx, %r12d
        mov     %edx, %r13d
        lea     s_ext1(%rip), %rsi
        call    puts
        mov     %r12, %rax
        call    puthex
        lea     s_edx(%rip), %rsi
        call    puts
        mov     %r13, %rax
        call    puthex
        mov     $'\n', %al
        call    putc

        mov     $0x174, %ecx
        rdmsr
        shl     $32, %rdx
        or      %rdx, %rax
        lea     s_msr(%rip), %rsi
        call    puts
        call    puthex
        mov     $'\n', %al
        call    putc
        jmp     reset

        .section .rodata
s_leaf1: .asciz "leaf1 ecx="
s_leaf7: .asciz "leaf7 ebx="
s_ext1:  .asciz "ext1 ecx="
s_msr:   .asciz "msr174="
s_ecx:   .asciz " ecx="
s_edx:   .asciz " edx="
