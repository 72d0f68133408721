# smp: starts every AP and has each report its APIC id. The BSP prints
# "cpu 0 up", reads N from "cpus=N" (default 1), copies a real-mode
# trampoline to 0x80000 and, for each AP id 1..N-1 in turn, sends INIT and
# a start-up IPI (vector 0x80) through the local APIC's ICR and waits
# (bounded) for that AP's flag. Each AP reads its APIC id from CPUID leaf 1,
# prints "cpu <id> up", sets its flag and halts. The BSP ends with
# "all <N> cpus up" (or "cpu <id> timeout") and resets.
        .include "common64.inc"
        .include "stack.inc"
        .set    TRAMPOLINE, 0x80000
        .set    FLAGS, TRAMPOLINE + 0x800       # one byte per APIC id
        .set    ICR_LOW, 0xfee00300
        .set    ICR_HIGH, 0xfee00310
        .globl  _start
_start:
        lea     stack_top(%rip), %rsp
        mov     %rsi, %r12
        lea     s_cpu0(%rip), %rsi
        call    puts
        lea     key_cpus(%rip), %rsi
        mov     $1, %edx
        call    param_or_default
        mov     %rax, %r13                      # N

        # Copy the trampoline below 1 MiB, where a SIPI can start it.
        lea     ap_start(%rip), %rsi
        mov     $TRAMPOLINE, %edi
        mov     $(ap_end - ap_start), %ecx
        rep movsb

        mov     $1, %r14d                       # next AP id
1:      cmp     %r13, %r14
        jae     5f
        mov     %r14d, %eax
        shl     $24, %eax
        mov     $ICR_HIGH, %ebx
        mov     %eax, (%rbx)
        mov     $ICR_LOW, %ebx
        movl    $0x4500, (%rbx)                 # INIT
        mov     %r14d, %eax
        shl     $24, %eax
        mov     $ICR_HIGH, %ebx
        mov     %eax, (%rbx)
        mov     $ICR_LOW, %ebx
        movl    $(0x4600 | (TRAMPOLINE >> 12)), (%rbx)  # start-up IPI
        mov     $20000000, %ecx                 # bounded wait
        mov     $FLAGS, %ebx
2:      cmpb    $0, (%rbx,%r14)
        jne     4f
        dec     %ecx
        jnz     2b
        lea     s_cpu(%rip), %rsi
        call    puts
        mov     %r14, %rax
        call    putdec
        lea     s_timeout(%rip), %rsi
        call    puts
        jmp     reset
4:      inc     %r14
        jmp     1b
5:      lea     s_all(%rip), %rsi
        call    puts
        mov     %r13, %rax
        call    putdec
        lea     s_cpus_up(%rip), %rsi
        call    puts
        jmp     reset

# The AP trampoline: runs in real mode at TRAMPOLINE (CS = 0x8000, IP = 0),
# so it addresses its own data relative to ap_start.
        .code16
ap_start:
        cli
        mov     %cs, %ax
        mov     %ax, %ds
        mov     %ax, %ss
        mov     $0x700, %sp                     # inside the trampoline page
        mov     $1, %eax
        cpuid
        shr     $24, %ebx                       # initial APIC id
        mov     $0x3f8, %dx
        mov     $(ap_msg - ap_start), %si
1:      lodsb
        test    %al, %al
        jz      2f
        out     %al, %dx
        jmp     1b
2:      mov     %bx, %ax                        # id in decimal (< 256)
        mov     $10, %cl
        xor     %di, %di
3:      div     %cl                             # al = ax / 10, ah = ax % 10
        movzbw  %ah, %bp
        push    %bp
        inc     %di
        xor     %ah, %ah
        test    %al, %al
        jnz     3b
4:      pop     %ax
        add     $'0', %al
        out     %al, %dx
        dec     %di
        jnz     4b
        mov     $(ap_up - ap_start), %si
5:      lodsb
        test    %al, %al
        jz      6f
        out     %al, %dx
        jmp     5b
6:      movb    $1, (FLAGS - TRAMPOLINE)(%bx)
7:      hlt
        jmp     7b
ap_msg: .asciz  "cpu "
ap_up:  .asciz  " up\n"
ap_end:
        .code64

        .section .rodata
s_cpu0:    .asciz "cpu 0 up\n"
s_cpu:     .asciz "cpu "
s_timeout: .asciz " timeout\n"
s_all:     .asciz "all "
s_cpus_up: .asciz " cpus up\n"
key_cpus:  .asciz "cpus="
