/* A deliberately simple server for failure tests. Each generation reads what
 * to do from the file named by GR_TEST_MODE_FILE when it starts:
 *   serve  - serve one request per connection until told to drain (default)
 *   exit   - exit with status 3 before ready
 *   crash  - die of SIGSEGV before ready
 *   hang   - never call gr_ready
 *   deaf   - close the readiness channel (as a daemon closing every fd would)
 *            and never call gr_ready
 * Other knobs (environment): GR_TEST_READY_TIMEOUT_MS, GR_TEST_DRAIN_DEADLINE_MS,
 * GR_TEST_PID_FILE, GR_TEST_BLOCK_SIGTERM and GR_TEST_IGNORE_SIGCHLD (first
 * generation only: block SIGTERM and ignore SIGHUP / ignore SIGCHLD, to check
 * the successor does not inherit that). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "grestart.h"

static void die(const char *what) {
    fprintf(stderr, "flaky_server: %s: %s\n", what, gr_last_error());
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    char mode[16] = "serve";
    const char *mode_file = getenv("GR_TEST_MODE_FILE");
    FILE *f = mode_file ? fopen(mode_file, "r") : NULL;
    if (f) {
        if (!fgets(mode, sizeof mode, f)) {
            strcpy(mode, "serve");
        }
        mode[strcspn(mode, "\n")] = '\0';
        fclose(f);
    }
    if (getenv("GR_TEST_BLOCK_SIGTERM") && !getenv("LISTEN_FDS")) {
        sigset_t term;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        sigprocmask(SIG_BLOCK, &term, NULL); /* before grestart starts its thread */
        signal(SIGHUP, SIG_IGN);
    }
    if (getenv("GR_TEST_IGNORE_SIGCHLD") && !getenv("LISTEN_FDS")) {
        signal(SIGCHLD, SIG_IGN);
    }
    if (strcmp(mode, "crash") == 0) {
        raise(SIGSEGV);
    }
    if (strcmp(mode, "exit") == 0) {
        return 3;
    }
    if (strcmp(mode, "deaf") == 0 && getenv("GRESTART_READY_FD")) {
        close(atoi(getenv("GRESTART_READY_FD")));
        for (;;) {
            pause();
        }
    }
    char address[300];
    snprintf(address, sizeof address, "tcp://%s", argv[1]);
    int listener = gr_listen(address, "http");
    if (listener < 0) {
        die("listen");
    }
    /* Non-blocking: the socket is shared with the next generation, which may
     * take a connection between our poll() and our accept(). */
    fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK);
    const char *knob;
    if ((knob = getenv("GR_TEST_READY_TIMEOUT_MS")) && gr_set_ready_timeout_ms(strtoull(knob, NULL, 10)) < 0) {
        die("ready timeout");
    }
    if ((knob = getenv("GR_TEST_DRAIN_DEADLINE_MS")) && gr_set_drain_deadline_ms(strtoull(knob, NULL, 10)) < 0) {
        die("drain deadline");
    }
    if ((knob = getenv("GR_TEST_PID_FILE")) && gr_set_pid_file(knob) < 0) {
        die("pid file");
    }
    struct sockaddr_in bound;
    socklen_t len = sizeof bound;
    getsockname(listener, (struct sockaddr *)&bound, &len);
    printf("flaky_server: pid %d generation %lld listening on 127.0.0.1:%d\n", (int)getpid(),
           (long long)gr_generation(), ntohs(bound.sin_port));
    fflush(stdout);
    if (strcmp(mode, "hang") == 0) {
        for (;;) {
            pause();
        }
    }
    if (gr_ready() < 0) {
        die("ready");
    }
    struct pollfd fds[2] = {{listener, POLLIN, 0}, {gr_shutdown_fd(), POLLIN, 0}};
    while (!(fds[1].revents & POLLIN)) {
        if (poll(fds, 2, -1) < 0 || !(fds[0].revents & POLLIN)) {
            continue;
        }
        int c = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            continue;
        }
        /* One request per connection, read to the end of its head (blocking:
         * a client that sends nothing holds this generation, on purpose). */
        char request[4096];
        size_t got = 0;
        ssize_t n;
        while (got < sizeof request - 1 && (n = recv(c, request + got, sizeof request - 1 - got, 0)) > 0) {
            got += (size_t)n;
            request[got] = '\0';
            if (strstr(request, "\r\n\r\n")) {
                break;
            }
        }
        char response[256];
        int size = snprintf(response, sizeof response,
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pid: %d\r\nX-Generation: %lld\r\n"
                            "Connection: close\r\n\r\n",
                            (int)getpid(), (long long)gr_generation());
        send(c, response, (size_t)size, MSG_NOSIGNAL);
        close(c);
    }
    close(listener);
    return gr_shutdown() < 0;
}
