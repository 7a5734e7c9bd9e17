/*
 * The server of the stop-and-start baseline (benches/peers.rs): what a user
 * has without a graceful restart library. It serves on the listening socket
 * systemd passes as fd 3 (socket activation) and dies on SIGTERM like any
 * server that does nothing about it. One thread per connection, HTTP/1.1
 * keep-alive, every request answered with 200 and X-Pid.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_FD 3 /* SD_LISTEN_FDS_START */

static int write_all(int fd, const char *data, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void *serve(void *arg) {
    int fd = (int)(intptr_t)arg;
    char in[8192];
    size_t len = 0;
    for (;;) {
        char *end;
        /* Answer every whole request head received so far (no bodies: GETs). */
        while ((end = memmem(in, len, "\r\n\r\n", 4)) != NULL) {
            size_t used = (size_t)(end + 4 - in);
            int close_after = memmem(in, used, "onnection: close", 16) != NULL;
            char out[256];
            int n = snprintf(out, sizeof out,
                             "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Pid: %d\r\n"
                             "Connection: %s\r\n\r\nok\n",
                             (int)getpid(), close_after ? "close" : "keep-alive");
            if (write_all(fd, out, (size_t)n) < 0 || close_after)
                goto done;
            memmove(in, in + used, len - used);
            len -= used;
        }
        if (len == sizeof in)
            goto done; /* a head larger than the buffer: not ours to serve */
        ssize_t n = read(fd, in + len, sizeof in - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto done;
        len += (size_t)n;
    }
done:
    close(fd);
    return NULL;
}

int main(void) {
    if (getenv("LISTEN_FDS") == NULL) {
        fprintf(stderr, "plain_server: no LISTEN_FDS: start me from a systemd socket unit\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-answer is an error return, not death */
    fprintf(stderr, "plain_server: pid %d serving fd %d\n", (int)getpid(), LISTEN_FD);
    for (;;) {
        int connection = accept4(LISTEN_FD, NULL, NULL, SOCK_CLOEXEC);
        if (connection < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("plain_server: accept");
            return 1;
        }
        pthread_t thread;
        if (pthread_create(&thread, NULL, serve, (void *)(intptr_t)connection) != 0) {
            close(connection);
            continue;
        }
        pthread_detach(thread);
    }
}
