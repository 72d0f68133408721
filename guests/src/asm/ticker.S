# ticker: prints "ticking", then forever writes a byte to port 0x511 (which
# no device claims, so every write is one counted exit) with a short delay
# loop between writes. The exit count shows whether the guest is running:
# pause tests check it stands still while paused and moves again after.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     s_tick(%rip), %rsi
        call    puts
1:      mov     $2000, %ecx
2:      dec     %ecx
        jnz     2b
        mov     $0x511, %dx
        out     %al, %dx
        jmp     1b

        .section .rodata
s_tick: .asciz "ticking\n"
