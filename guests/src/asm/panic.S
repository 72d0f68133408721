# panic: prints "panicking", stores the marker 0x5a5a_c0de_0000_0001 in a
# RAM word (`marker`, so a core dump can be checked against it), reads the
# pvpanic port (0x505, the events the host understands) and writes its
# "panicked" bit (1) there, as Linux's pvpanic driver does on panic. Then
# halts forever (sie ends the VM with the panic status first).
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        lea     msg(%rip), %rsi
        call    puts
        movabs  $0x5a5ac0de00000001, %rax
        mov     %rax, marker(%rip)
        mov     $0x505, %dx
        in      %dx, %al
        mov     $1, %al
        out     %al, %dx
1:      hlt
        jmp     1b

        .section .rodata
msg:    .asciz  "panicking\n"

        .section .data
        .balign 8
        .globl  marker
marker: .quad 0
