# counter: keeps a count in guest RAM (not in a register): every tick (a
# delay loop of `delay=N` iterations, default 20000) it adds one and prints
# "count N"; after `limit=N` counts (default 50) it resets. A snapshot of it
# restored in another process goes on from the count it had, so the two
# processes' output together is exactly "count 1" .. "count LIMIT".
# With `dirty=N` (default 0) each tick also writes the count into N pages
# from 4 MiB up, so a benchmark can dirty a share of RAM for Diff snapshots.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     key_limit(%rip), %rsi
        mov     $50, %edx
        call    param_or_default
        mov     %rax, limit(%rip)
        lea     key_delay(%rip), %rsi
        mov     $20000, %edx
        call    param_or_default
        or      $1, %rax
        mov     %rax, delay(%rip)
        lea     key_dirty(%rip), %rsi
        xor     %edx, %edx
        call    param_or_default
        mov     %rax, dirty(%rip)
1:      mov     delay(%rip), %rcx
2:      dec     %rcx
        jnz     2b
        incq    counter(%rip)
        mov     counter(%rip), %rax
        mov     dirty(%rip), %rcx
        mov     $0x400000, %rdi
3:      test    %rcx, %rcx
        jz      4f
        mov     %rax, (%rdi)
        add     $4096, %rdi
        dec     %rcx
        jmp     3b
4:
        lea     s_count(%rip), %rsi
        call    puts
        mov     counter(%rip), %rax
        call    putdec
        mov     $'\n', %al
        call    putc
        mov     counter(%rip), %rax
        cmp     limit(%rip), %rax
        jb      1b
        jmp     reset

        .section .rodata
key_limit: .asciz "limit="
key_delay: .asciz "delay="
key_dirty: .asciz "dirty="
s_count:   .asciz "count "

        .section .bss
        .balign 8
counter: .quad 0
limit:   .quad 0
delay:   .quad 0
dirty:   .quad 0
