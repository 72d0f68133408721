/* sietool: the small network helpers the rig's network and vsock cases need
 * on both sides of the VM boundary (busybox has no vsock, and its nc cannot
 * be told to close after sending). Built static by build-images.
 *
 *   sietool tcp-recv PORT FILE          accept one TCP connection, save it
 *   sietool tcp-serve PORT FILE         accept one TCP connection, send FILE
 *   sietool tcp-send HOST PORT FILE     connect, send FILE, wait for close
 *   sietool tcp-get HOST PORT FILE      connect, save what arrives
 *   sietool vsock-echo PORT             guest: accept one vsock stream, echo
 *   sietool vsock-ask CID PORT MESSAGE  guest: connect, send, print the reply
 *   sietool uds-echo PATH               host: accept one Unix stream, echo
 *   sietool uds-ask PATH PORT MESSAGE   host: Firecracker-style CONNECT, send,
 *                                       print the reply
 *   sietool blk-bench DEV MIB OPS       O_DIRECT on DEV: sequential read and
 *                                       write of MIB MiB in 1 MiB blocks, OPS
 *                                       random 4 KiB reads, then writes; prints
 *                                       `@@BENCH key=value` lines (the pattern
 *                                       `sie bench blk` runs on the host file),
 *                                       with the bytes the sequential read got
 *                                       and their checksum (see word_sum)
 *   sietool net-bench HOST SINK SOURCE MIB
 *                                       send MIB MiB to HOST:SINK, wait for the
 *                                       close, then read HOST:SOURCE to its end;
 *                                       prints `@@BENCH` lines, with the bytes
 *                                       sent and received
 *   sietool kallsyms-elf FROM TO OUT    /proc/kallsyms on stdin: its text
 *                                       symbols, moved from base FROM to TO
 *                                       (hex), as an ELF file of symbols only
 *                                       (gdb's `symbol-file OUT`)
 *   sietool tap-persist NAME            host: create tap NAME and keep it after
 *                                       exit (busybox's ip has no tuntap), so
 *                                       it can join a bridge before a sie
 *                                       opens it
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <elf.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void copy(int from, int to) {
    char buf[65536];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n < 0) die("read");
        if (n == 0) return;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(to, buf + off, n - off);
            if (w <= 0) die("write");
            off += w;
        }
    }
}

static int tcp_accept_one(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) die("tcp listen");
    int c = accept(s, NULL, NULL);
    if (c < 0) die("accept");
    close(s);
    return c;
}

static int tcp_connect(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) die("address");
    for (int tries = 0; tries < 100; tries++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (void *)&a, sizeof a) == 0) return s;
        close(s);
        usleep(100000);
    }
    die("tcp connect");
    return -1;
}

/* Sends MESSAGE, half-closes, prints everything that comes back. */
static void ask(int s, const char *message) {
    if (write(s, message, strlen(message)) != (ssize_t)strlen(message)) die("send");
    shutdown(s, SHUT_WR);
    copy(s, 1);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

/* The random offsets `sie bench blk` uses too: a 64-bit LCG, its high bits
 * picking a 4 KiB block. */
static uint64_t next_block(uint64_t *state, uint64_t blocks) {
    *state = *state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (*state >> 33) % blocks;
}

/* The checksum `sie bench blk` compares: FNV-1a over little-endian 64-bit
 * words, top 48 bits (exact in a double). */
static uint64_t word_sum(uint64_t h, const char *buf, size_t len) {
    for (size_t i = 0; i + 8 <= len; i += 8) {
        uint64_t w;
        memcpy(&w, buf + i, 8);
        h = (h ^ w) * 0x100000001b3ULL;
    }
    return h;
}

static void blk_bench(const char *dev, long mib, long ops) {
    int fd = open(dev, O_RDWR | O_DIRECT);
    if (fd < 0) die("open O_DIRECT");
    const size_t block = 1 << 20, small = 4096;
    char *buf;
    if (posix_memalign((void **)&buf, 4096, block)) die("posix_memalign");
    memset(buf, 0x5a, block);
    /* Only the reads are timed; the checksum runs between them. */
    double t, spent = 0;
    long long got = 0;
    uint64_t sum = 0xcbf29ce484222325ULL;
    for (long i = 0; i < mib; i++) {
        t = now();
        ssize_t n = pread(fd, buf, block, (off_t)i * block);
        spent += now() - t;
        if (n != (ssize_t)block) die("seq read");
        got += n;
        sum = word_sum(sum, buf, block);
    }
    printf("@@BENCH seq_read_mib_s=%.1f\n", mib / spent);
    printf("@@BENCH read_bytes=%lld\n@@BENCH read_sum=%llu\n", got,
           (unsigned long long)(sum >> 16));
    t = now();
    for (long i = 0; i < mib; i++)
        if (pwrite(fd, buf, block, (off_t)i * block) != (ssize_t)block) die("seq write");
    if (fsync(fd)) die("fsync");
    printf("@@BENCH seq_write_mib_s=%.1f\n", mib / (now() - t));
    uint64_t blocks = (uint64_t)mib * block / small, state = 1;
    t = now();
    for (long i = 0; i < ops; i++)
        if (pread(fd, buf, small, (off_t)(next_block(&state, blocks) * small)) != (ssize_t)small)
            die("rand read");
    printf("@@BENCH rand_read_iops=%.0f\n", ops / (now() - t));
    state = 2;
    t = now();
    for (long i = 0; i < ops; i++)
        if (pwrite(fd, buf, small, (off_t)(next_block(&state, blocks) * small)) != (ssize_t)small)
            die("rand write");
    if (fsync(fd)) die("fsync");
    printf("@@BENCH rand_write_iops=%.0f\n", ops / (now() - t));
    fflush(stdout);
    close(fd);
}

static void net_bench(const char *host, int sink, int source, long mib) {
    static char buf[65536];
    memset(buf, 0x5a, sizeof buf);
    long long total = (long long)mib << 20, got = 0, sent = 0;
    double t = now();
    int s = tcp_connect(host, sink);
    while (sent < total) {
        size_t chunk = total - sent < (long long)sizeof buf ? (size_t)(total - sent) : sizeof buf;
        ssize_t w = write(s, buf, chunk);
        if (w <= 0) die("send");
        sent += w;
    }
    shutdown(s, SHUT_WR);
    while (read(s, buf, sizeof buf) > 0) {}
    close(s);
    printf("@@BENCH tx_mib_s=%.1f\n@@BENCH tx_bytes=%lld\n", mib / (now() - t), sent);
    fflush(stdout);
    t = now();
    s = tcp_connect(host, source);
    for (ssize_t n; (n = read(s, buf, sizeof buf)) > 0;) got += n;
    close(s);
    if (got != total) {
        fprintf(stderr, "net-bench: received %lld of %lld bytes\n", got, total);
        exit(1);
    }
    printf("@@BENCH rx_mib_s=%.1f\n@@BENCH rx_bytes=%lld\n", mib / (now() - t), got);
    fflush(stdout);
}

/* kallsyms-elf: an ELF64 file holding a NOBITS .text over the symbols'
 * range and one global function symbol per text symbol of stdin (kernel
 * only: module symbols end in "[mod]"). */
static void kallsyms_elf(uint64_t from, uint64_t to, const char *path) {
    size_t cap = 1 << 17, count = 1, str_len = 1, str_cap = 1 << 22;
    Elf64_Sym *syms = calloc(cap, sizeof *syms);
    char *strs = malloc(str_cap), line[512], type, name[256];
    unsigned long long addr;
    uint64_t low = UINT64_MAX, high = 0;
    if (!syms || !strs) die("kallsyms-elf: memory");
    strs[0] = 0;
    while (fgets(line, sizeof line, stdin)) {
        if (strchr(line, '[')) continue;
        if (sscanf(line, "%llx %c %255s", &addr, &type, name) != 3) continue;
        if (type != 't' && type != 'T' && type != 'w' && type != 'W') continue;
        size_t len = strlen(name) + 1;
        if (count == cap || str_len + len > str_cap) break;
        uint64_t value = addr - from + to;
        memcpy(strs + str_len, name, len);
        syms[count++] = (Elf64_Sym){.st_name = (Elf64_Word)str_len,
                                    .st_info = ELF64_ST_INFO(STB_GLOBAL, STT_FUNC),
                                    .st_shndx = 1, .st_value = value};
        str_len += len;
        if (value < low) low = value;
        if (value > high) high = value;
    }
    if (count == 1) die("kallsyms-elf: no text symbols");
    static const char shstr[] = "\0.text\0.symtab\0.strtab\0.shstrtab";
    size_t str_at = sizeof(Elf64_Ehdr), shstr_at = str_at + str_len;
    size_t sym_at = (shstr_at + sizeof shstr + 7) & ~(size_t)7;
    size_t sh_at = sym_at + count * sizeof *syms;
    Elf64_Ehdr eh = {.e_type = ET_EXEC, .e_machine = EM_X86_64, .e_version = EV_CURRENT,
                     .e_shoff = sh_at, .e_ehsize = sizeof eh, .e_shentsize = sizeof(Elf64_Shdr),
                     .e_shnum = 5, .e_shstrndx = 4};
    memcpy(eh.e_ident, ELFMAG, SELFMAG);
    eh.e_ident[EI_CLASS] = ELFCLASS64;
    eh.e_ident[EI_DATA] = ELFDATA2LSB;
    eh.e_ident[EI_VERSION] = EV_CURRENT;
    Elf64_Shdr sh[5] = {
        {0},
        {.sh_name = 1, .sh_type = SHT_NOBITS, .sh_flags = SHF_ALLOC | SHF_EXECINSTR,
         .sh_addr = low, .sh_offset = str_at, .sh_size = high - low + 1, .sh_addralign = 16},
        {.sh_name = 7, .sh_type = SHT_SYMTAB, .sh_offset = sym_at,
         .sh_size = count * sizeof *syms, .sh_link = 3, .sh_info = 1, .sh_addralign = 8,
         .sh_entsize = sizeof *syms},
        {.sh_name = 15, .sh_type = SHT_STRTAB, .sh_offset = str_at, .sh_size = str_len,
         .sh_addralign = 1},
        {.sh_name = 23, .sh_type = SHT_STRTAB, .sh_offset = shstr_at, .sh_size = sizeof shstr,
         .sh_addralign = 1},
    };
    FILE *out = fopen(path, "wb");
    static const char zeros[8];
    if (!out) die("kallsyms-elf: open");
    fwrite(&eh, sizeof eh, 1, out);
    fwrite(strs, 1, str_len, out);
    fwrite(shstr, 1, sizeof shstr, out);
    fwrite(zeros, 1, sym_at - shstr_at - sizeof shstr, out);
    fwrite(syms, sizeof *syms, count, out);
    fwrite(sh, sizeof sh, 1, out);
    if (fclose(out)) die("kallsyms-elf: write");
    printf("%zu symbols\n", count - 1);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "tcp-recv") && argc == 4) {
        int out = open(argv[3], O_WRONLY | O_CREAT | O_TRUNC, 0644);
        copy(tcp_accept_one(atoi(argv[2])), out);
    } else if (!strcmp(mode, "tcp-serve") && argc == 4) {
        int c = tcp_accept_one(atoi(argv[2]));
        copy(open(argv[3], O_RDONLY), c);
        close(c);
    } else if (!strcmp(mode, "tcp-send") && argc == 5) {
        int s = tcp_connect(argv[2], atoi(argv[3]));
        copy(open(argv[4], O_RDONLY), s);
        shutdown(s, SHUT_WR);
        char byte;
        while (read(s, &byte, 1) > 0) {}
    } else if (!strcmp(mode, "tcp-get") && argc == 5) {
        int s = tcp_connect(argv[2], atoi(argv[3]));
        copy(s, open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644));
    } else if (!strcmp(mode, "vsock-echo") && argc == 3) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY,
                                .svm_port = (unsigned)atoi(argv[2])};
        if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) die("vsock listen");
        puts("listening");
        fflush(stdout);
        int c = accept(s, NULL, NULL);
        if (c < 0) die("vsock accept");
        copy(c, c);
        close(c);
    } else if (!strcmp(mode, "vsock-ask") && argc == 5) {
        int s = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(argv[2]),
                                .svm_port = (unsigned)atoi(argv[3])};
        if (connect(s, (void *)&a, sizeof a)) die("vsock connect");
        ask(s, argv[4]);
    } else if (!strcmp(mode, "uds-echo") && argc == 3) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        unlink(argv[2]);
        if (bind(s, (void *)&a, sizeof a) || listen(s, 1)) die("uds listen");
        int c = accept(s, NULL, NULL);
        if (c < 0) die("uds accept");
        copy(c, c);
        close(c);
    } else if (!strcmp(mode, "uds-ask") && argc == 5) {
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        strncpy(a.sun_path, argv[2], sizeof a.sun_path - 1);
        if (connect(s, (void *)&a, sizeof a)) die("uds connect");
        dprintf(s, "CONNECT %s\n", argv[3]);
        char line[64];
        size_t n = 0;
        while (n < sizeof line - 1 && read(s, line + n, 1) == 1 && line[n] != '\n') n++;
        line[n] = 0;
        printf("%s\n", line);
        fflush(stdout);
        if (strncmp(line, "OK ", 3)) return 1;
        ask(s, argv[4]);
    } else if (!strcmp(mode, "blk-bench") && argc == 5) {
        blk_bench(argv[2], atol(argv[3]), atol(argv[4]));
    } else if (!strcmp(mode, "net-bench") && argc == 6) {
        net_bench(argv[2], atoi(argv[3]), atoi(argv[4]), atol(argv[5]));
    } else if (!strcmp(mode, "tap-persist") && argc == 3) {
        /* The flags sie opens it with (but vnet headers, set per opener). */
        int fd = open("/dev/net/tun", O_RDWR);
        if (fd < 0) die("/dev/net/tun");
        struct ifreq req = {.ifr_flags = IFF_TAP | IFF_NO_PI};
        strncpy(req.ifr_name, argv[2], IFNAMSIZ - 1);
        if (ioctl(fd, TUNSETIFF, &req)) die("TUNSETIFF");
        if (ioctl(fd, TUNSETPERSIST, 1)) die("TUNSETPERSIST");
        close(fd);
    } else if (!strcmp(mode, "kallsyms-elf") && argc == 5) {
        kallsyms_elf(strtoull(argv[2], NULL, 16), strtoull(argv[3], NULL, 16), argv[4]);
    } else {
        fprintf(stderr, "usage: see the comment at the top of sietool.c\n");
        return 2;
    }
    return 0;
}
