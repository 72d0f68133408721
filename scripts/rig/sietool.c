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
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    } else {
        fprintf(stderr, "usage: see the comment at the top of sietool.c\n");
        return 2;
    }
    return 0;
}
