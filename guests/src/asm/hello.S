# hello: the smallest useful guest. Prints "hello from sie guest", writes the
# values 1..N to port 0x80 (N from "markers=N" on the command line, default
# 3), writes 123 to the boot timer at MMIO 0xc0000000 (unless "boot_timer=0":
# Firecracker's page tables map only the first GiB, so there the write is a
# page fault and the guest's end), prints "bye" and resets through the i8042.
#
# Exits, exactly: PIO writes = 21 ("hello from sie guest\n") + N + 4 ("bye\n")
# + 1 (reset) = 26 + N; PIO reads 0; MMIO writes 1 (0 with boot_timer=0);
# MMIO reads 0.
        .include "common64.inc"
        .include "stack.inc"
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12                      # boot_params
        lea     hello(%rip), %rsi
        call    puts
        lea     key_markers(%rip), %rsi
        mov     $3, %edx
        call    param_or_default
        mov     %rax, %rcx
        xor     %ebx, %ebx
1:      cmp     %rcx, %rbx
        jae     2f
        inc     %rbx
        mov     %bl, %al
        out     %al, $0x80
        jmp     1b
2:      lea     key_boot_timer(%rip), %rsi
        mov     $1, %edx
        call    param_or_default
        test    %rax, %rax
        jz      3f
        mov     $0xc0000000, %eax
        movl    $123, (%rax)
3:      lea     bye(%rip), %rsi
        call    puts
        jmp     reset

        .section .rodata
hello:  .asciz  "hello from sie guest\n"
bye:    .asciz  "bye\n"
key_markers: .asciz "markers="
key_boot_timer: .asciz "boot_timer="
