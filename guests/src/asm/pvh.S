# pvh: entered through the Xen PVH ABI (32-bit protected mode, paging off,
# %ebx = hvm_start_info). Prints:
#   pvh magic=<hex>
#   cmdline=<text>
#   modules=<n>
#   module <hex paddr> <hex size>       (first module, if any)
#   memmap <hex addr> <hex size> <type> (one line per entry)
# then resets.
        .code32
        .section .text
        .globl  _start
_start:
        mov     $stack_top, %esp
        mov     %ebx, %ebp                      # start_info
        mov     $s_magic, %esi
        call    puts32
        mov     (%ebp), %eax
        call    puthex32
        call    newline32

        mov     $s_cmdline, %esi
        call    puts32
        mov     24(%ebp), %esi                  # cmdline_paddr (low half)
        test    %esi, %esi
        jz      1f
        call    puts32
1:      call    newline32

        mov     $s_modules, %esi
        call    puts32
        mov     12(%ebp), %eax                  # nr_modules
        call    puthex32
        call    newline32
        cmpl    $0, 12(%ebp)
        je      2f
        mov     16(%ebp), %edi                  # modlist_paddr
        mov     $s_module, %esi
        call    puts32
        mov     (%edi), %eax                    # paddr
        call    puthex32
        mov     $' ', %al
        call    putc32
        mov     8(%edi), %eax                   # size
        call    puthex32
        call    newline32

2:      mov     40(%ebp), %edi                  # memmap_paddr
        mov     48(%ebp), %ecx                  # memmap_entries
3:      test    %ecx, %ecx
        jz      4f
        mov     $s_memmap, %esi
        call    puts32
        mov     4(%edi), %eax                   # addr, high half
        mov     (%edi), %edx
        call    puthex64_32
        mov     $' ', %al
        call    putc32
        mov     12(%edi), %eax                  # size, high half
        mov     8(%edi), %edx
        call    puthex64_32
        mov     $' ', %al
        call    putc32
        mov     16(%edi), %eax                  # type
        call    puthex32
        call    newline32
        add     $24, %edi
        dec     %ecx
        jmp     3b
4:      mov     $0xfe, %al
        out     %al, $0x64
5:      hlt
        jmp     5b

putc32:
        push    %edx
        mov     $0x3f8, %dx
        out     %al, %dx
        pop     %edx
        ret

newline32:
        push    %eax
        mov     $'\n', %al
        call    putc32
        pop     %eax
        ret

puts32:
        push    %eax
        push    %esi
1:      lodsb
        test    %al, %al
        jz      2f
        call    putc32
        jmp     1b
2:      pop     %esi
        pop     %eax
        ret

# puthex32: %eax in hex, no leading zeros.
puthex32:
        push    %eax
        push    %ebx
        push    %ecx
        push    %edx
        mov     %eax, %edx
        mov     $28, %ecx
        xor     %ebx, %ebx
1:      mov     %edx, %eax
        shr     %cl, %eax
        and     $0xf, %eax
        or      %eax, %ebx
        jnz     2f
        test    %ecx, %ecx
        jnz     3f
2:      mov     $1, %ebx
        cmp     $10, %al
        jb      4f
        add     $('a' - 10), %al
        jmp     5f
4:      add     $'0', %al
5:      call    putc32
3:      sub     $4, %ecx
        jns     1b
        pop     %edx
        pop     %ecx
        pop     %ebx
        pop     %eax
        ret

# puthex64_32: the 64-bit value %eax:%edx (high:low) in hex, no leading zeros.
puthex64_32:
        test    %eax, %eax
        jnz     1f
        mov     %edx, %eax
        jmp     puthex32
1:      call    puthex32
        push    %ecx
        push    %ebx
        mov     $28, %ecx
2:      mov     %edx, %ebx
        shr     %cl, %ebx
        and     $0xf, %ebx
        mov     %bl, %al
        cmp     $10, %al
        jb      3f
        add     $('a' - 10), %al
        jmp     4f
3:      add     $'0', %al
4:      call    putc32
        sub     $4, %ecx
        jns     2b
        pop     %ebx
        pop     %ecx
        ret

        .section .rodata
s_magic:   .asciz "pvh magic="
s_cmdline: .asciz "cmdline="
s_modules: .asciz "modules="
s_module:  .asciz "module "
s_memmap:  .asciz "memmap "

# The PVH entry point, for the VMM: XEN_ELFNOTE_PHYS32_ENTRY (type 18).
        .section .note.Xen, "a", @note
        .balign 4
        .long   4
        .long   4
        .long   18
        .asciz  "Xen"
        .balign 4
        .long   _start
        .balign 4

        .section .bss
        .balign 16
        .space  4096
stack_top:
