/* grestart's C quick start: a blocking, thread-per-connection HTTP server
 * that restarts on SIGUSR2 without losing a request. README.md ("Quick
 * start") has the commands that build and run it. */
#define _GNU_SOURCE
#include <errno.h>
#include <grestart.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

static void *answer(void *arg) { /* one request per connection */
    int c = (int)(intptr_t)arg;
    char request[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof request && (n = read(c, request + got, sizeof request - got)) > 0) {
        got += (size_t)n;
        if (memmem(request, got, "\r\n\r\n", 4)) { /* the whole request head */
            dprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n"
                       "X-Pid: %d\r\nX-Generation: %lld\r\n\r\n", (int)getpid(), (long long)gr_generation());
            break;
        }
    }
    close(c);
    gr_work_end(); /* gr_accept counted the connection as work in flight */
    return NULL;
}

int main(int argc, char **argv) {
    char address[300];
    snprintf(address, sizeof address, "tcp://%s", argc > 1 ? argv[1] : "127.0.0.1:8080");
    int listener = gr_listen(address, "http"); /* inherited, or bound now */
    if (listener < 0) {
        fprintf(stderr, "quickstart: %s\n", gr_last_error());
        return 1;
    }
    struct sockaddr_in bound;
    socklen_t size = sizeof bound;
    getsockname(listener, (struct sockaddr *)&bound, &size);
    printf("quickstart: pid %d listening on %s:%d\n", (int)getpid(), inet_ntoa(bound.sin_addr), ntohs(bound.sin_port));
    fflush(stdout);
    gr_ready(); /* the previous generation drains now */
    int c;
    while ((c = gr_accept(listener)) >= 0 || errno != ESHUTDOWN) { /* until a successor serves */
        pthread_t thread;
        if (c >= 0 && pthread_create(&thread, NULL, answer, (void *)(intptr_t)c) == 0) {
            pthread_detach(thread);
        } else if (c >= 0) {
            close(c);
            gr_work_end();
        }
    }
    return gr_shutdown(); /* waits for the connections in flight, then runs the hooks */
}
