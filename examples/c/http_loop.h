/*
 * The HTTP/1.1 machinery of the C examples: a one-thread epoll loop over a
 * listener, its connections and grestart's shutdown fd, answering every GET
 * and POST with 200 and the headers X-Pid, X-Generation and X-Version (and
 * X-Worker-Pid when a prefork worker answers for its master).
 *
 * When the shutdown fd turns readable a successor serves: stop accepting,
 * finish what each connection sent, and hand every idle connection to the
 * successor (gr_hand_over), which adopts it (gr_adopt) and serves its next
 * request: no connection is closed by a restart. Where the successor takes
 * none (an older one, a prefork worker), answer each connection's next
 * request with "Connection: close" and close connections that stay idle.
 * Included by http_server.c (one process) and prefork_server.c (a master and
 * its workers, each running this loop on the shared listener). Everything is
 * static: one copy per program.
 */
#ifndef HTTP_LOOP_H
#define HTTP_LOOP_H

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "grestart.h"

#ifndef APP_VERSION
#define APP_VERSION "1"
#endif

#define MAX_CONNECTIONS 65536
#define BUFFER_SIZE 8192 /* a request, head and body */
#define OUT_SIZE 2048    /* answers queued; a few pipelined ones */
/* Called with each connection adopted from the previous generation; a test
 * server defines it to report which ones its heir holds. */
#ifndef HTTP_LOOP_ON_ADOPT
#define HTTP_LOOP_ON_ADOPT(fd) ((void)(fd))
#endif
/* The status line of an answer, from the request's head (in lower case); a
 * test server defines it to fail a health check. */
#ifndef HTTP_LOOP_STATUS
#define HTTP_LOOP_STATUS(head, served) ((served) ? "200 OK" : "405 Method Not Allowed")
#endif

struct connection {
    int fd;
    int index;       /* in `connections` */
    uint32_t events; /* what epoll waits for on it: EPOLLIN or EPOLLOUT, 0 before it is added */
    size_t in_len, out_len, out_sent;
    int close_after_write;
    long long last_active_ms;
    /* Only while a request is read or answered: an idle connection holds
     * none, which keeps thousands of them cheap to hold, hand over and adopt. */
    struct buffers {
        char in[BUFFER_SIZE];
        char out[OUT_SIZE];
    } *buffers;
};

/* The pid the answers name in X-Pid: the process an operator signals. */
static int reported_pid;
/* Whether idle connections are handed to the successor when draining (until
 * the first gr_hand_over that fails: then they are closed as before). */
static int handing_over;

static struct connection *connections[MAX_CONNECTIONS];
static int connection_count;
static int epoll_fd = -1;
static unsigned long long requests_served;

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Makes epoll wait on `c` for what it needs next: room to send what is
 * queued, else a request. Returns -1 when epoll cannot take it. */
static int watch(struct connection *c) {
    uint32_t events = c->out_len > c->out_sent ? EPOLLOUT : EPOLLIN;
    if (events == c->events) {
        return 0;
    }
    struct epoll_event event = {.events = events, .data.ptr = c};
    if (epoll_ctl(epoll_fd, c->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, c->fd, &event) < 0) {
        perror("epoll_ctl");
        return -1;
    }
    c->events = events;
    return 0;
}

static void drop_connection(int index) {
    struct connection *c = connections[index];
    /* Taken out of epoll first: a connection handed over lives on in
     * grestart's copy, and epoll forgets a socket only when its last copy closes. */
    if (c->events) {
        epoll_ctl(epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
    }
    close(c->fd);
    free(c->buffers);
    free(c);
    if (index != --connection_count) {
        connections[index] = connections[connection_count];
        connections[index]->index = index;
    }
}

/* The value of header `name` (lower case, with the colon) in the lower-cased
 * header block `headers`, or NULL. */
static const char *header(const char *headers, const char *name) {
    const char *found = strstr(headers, name);
    return found ? found + strlen(name) : NULL;
}

/* Parses every complete request in the input buffer and queues its answer;
 * `closing`: say "Connection: close" and close after it. Returns -1 when the
 * connection must be dropped at once (garbage). */
static int handle_requests(struct connection *c, int closing) {
    for (;;) {
        char *in = c->buffers->in, *out = c->buffers->out;
        char *end = memmem(in, c->in_len, "\r\n\r\n", 4);
        if (!end) {
            return c->in_len == BUFFER_SIZE ? -1 : 0; /* header too large */
        }
        size_t head_len = (size_t)(end - in) + 4;
        char head[BUFFER_SIZE + 1];
        for (size_t i = 0; i < head_len; i++) {
            head[i] = (char)tolower((unsigned char)in[i]);
        }
        head[head_len] = '\0';

        const char *length_value = header(head, "\r\ncontent-length:");
        size_t body_len = length_value ? strtoul(length_value, NULL, 10) : 0;
        if (body_len > BUFFER_SIZE - head_len) {
            return -1;
        }
        if (c->in_len < head_len + body_len) {
            return 0; /* wait for the body */
        }
        const char *connection_value = header(head, "\r\nconnection:");
        const char *line_end = strstr(head, "\r\n");
        int http10 = line_end - head >= 8 && strncmp(line_end - 8, "http/1.0", 8) == 0;
        const char *option = connection_value ? connection_value + strspn(connection_value, " \t") : "";
        int client_closes = http10 ? strncmp(option, "keep-alive", 10) != 0 : strncmp(option, "close", 5) == 0;
        int served = strncmp(head, "get ", 4) == 0 || strncmp(head, "post ", 5) == 0;
        c->close_after_write = client_closes || closing || !served;

        int worker = reported_pid != (int)getpid();
        char worker_pid[16];
        snprintf(worker_pid, sizeof worker_pid, "%d", (int)getpid());
        char body[128];
        int body_size = served ? snprintf(body, sizeof body, "served by pid %d generation %lld\n", (int)getpid(),
                                          (long long)gr_generation())
                               : snprintf(body, sizeof body, "only GET and POST are served here\n");
        int n = snprintf(out + c->out_len, OUT_SIZE - c->out_len,
                         "HTTP/1.1 %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                         "X-Pid: %d\r\n%s%s%sX-Generation: %lld\r\nX-Version: %s\r\nConnection: %s\r\n\r\n%s",
                         HTTP_LOOP_STATUS(head, served), body_size, reported_pid,
                         worker ? "X-Worker-Pid: " : "", worker ? worker_pid : "", worker ? "\r\n" : "",
                         (long long)gr_generation(), APP_VERSION, c->close_after_write ? "close" : "keep-alive",
                         body);
        if (n < 0 || (size_t)n >= OUT_SIZE - c->out_len) {
            return -1; /* pipelined faster than we can answer */
        }
        c->out_len += (size_t)n;
        requests_served++;

        size_t used = head_len + body_len;
        memmove(in, in + used, c->in_len - used);
        c->in_len -= used;
        if (c->close_after_write) {
            c->in_len = 0; /* nothing after a closing request is answered */
            return 0;
        }
    }
}

/* Reads what arrived and answers it. Returns -1 when the connection is done. */
static int on_readable(struct connection *c, int closing) {
    if (!c->buffers && !(c->buffers = malloc(sizeof *c->buffers))) {
        return -1;
    }
    for (;;) {
        ssize_t n = recv(c->fd, c->buffers->in + c->in_len, BUFFER_SIZE - c->in_len, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->last_active_ms = now_ms();
            if (handle_requests(c, closing) < 0) {
                return -1;
            }
            if (c->close_after_write || c->in_len == BUFFER_SIZE) {
                return 0;
            }
            continue;
        }
        if (n == 0) {
            return c->out_len > c->out_sent ? 0 : -1; /* peer closed */
        }
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    }
}

/* Sends what is queued. Returns -1 when the connection is done. */
static int on_writable(struct connection *c) {
    while (c->out_sent < c->out_len) {
        ssize_t n = send(c->fd, c->buffers->out + c->out_sent, c->out_len - c->out_sent, MSG_NOSIGNAL);
        if (n < 0) {
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        }
        c->out_sent += (size_t)n;
    }
    c->out_len = c->out_sent = 0;
    return c->close_after_write ? -1 : 0;
}

static int add_connection(int fd) {
    struct connection *c = calloc(1, sizeof *c);
    if (!c) {
        close(fd);
        return -1;
    }
    c->fd = fd;
    c->last_active_ms = now_ms();
    if (watch(c) < 0) {
        close(fd);
        free(c);
        return -1;
    }
    c->index = connection_count;
    connections[connection_count++] = c;
    return 0;
}

static void accept_all(int listener) {
    while (connection_count < MAX_CONNECTIONS) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED) {
                perror("accept");
            }
            return;
        }
        if (add_connection(fd) < 0) {
            return;
        }
    }
}

/* Takes the connections the previous generation handed over: each is served
 * as if just accepted. */
static void adopt_all(void) {
    while (connection_count < MAX_CONNECTIONS) {
        int fd = gr_adopt(NULL, 0, 0);
        if (fd < 0) {
            if (errno != EAGAIN) {
                fprintf(stderr, "gr_adopt: %s\n", gr_last_error());
            }
            return;
        }
        fcntl(fd, F_SETFL, O_NONBLOCK);
        HTTP_LOOP_ON_ADOPT(fd);
        if (add_connection(fd) < 0) {
            return;
        }
    }
}

/* While draining, hands connection `index` to the successor if it is idle
 * (nothing read and unanswered, nothing to send). Returns 1 when handed over
 * (drop it: closing our fd closes nothing), 0 when it stays. The first refusal
 * (no successor takes connections) turns hand-over off: close as before. */
static int hand_over_if_idle(struct connection *c) {
    if (!handing_over || c->in_len > 0 || c->out_len > 0 || c->close_after_write) {
        return 0;
    }
    if (gr_hand_over(c->fd, "http") == 0) {
        return 1;
    }
    if (errno != ESRCH) {
        fprintf(stderr, "gr_hand_over: %s\n", gr_last_error());
    }
    handing_over = 0; /* from now on, answer with "Connection: close" */
    for (int i = 0; i < connection_count; i++) {
        connections[i]->last_active_ms = now_ms();
    }
    return 0;
}

/* The listener named "http" for the HOST:PORT of argv[1], non-blocking (the
 * next generation may take a connection between our poll and our accept):
 * inherited from the previous generation, or bound now. Exits on error. */
static int listen_from_args(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s HOST:PORT   (e.g. 127.0.0.1:8080)\n", argv[0]);
        exit(2);
    }
    char address[300];
    snprintf(address, sizeof address, "tcp://%s", argv[1]);
    int listener = gr_listen(address, "http");
    if (listener < 0) {
        fprintf(stderr, "%s: %s\n", argv[0], gr_last_error());
        exit(1);
    }
    fcntl(listener, F_SETFL, fcntl(listener, F_GETFL) | O_NONBLOCK);
    return listener;
}

/* Prints "NAME: pid P generation G version V listening on HOST:PORT", the
 * line every example starts with (IPv6 hosts in brackets). */
static void print_listening(const char *name, int listener) {
    struct sockaddr_storage bound;
    socklen_t bound_len = sizeof bound;
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (getsockname(listener, (struct sockaddr *)&bound, &bound_len) == 0) {
        if (bound.ss_family == AF_INET) {
            struct sockaddr_in *v4 = (struct sockaddr_in *)&bound;
            inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
            port = ntohs(v4->sin_port);
        } else {
            struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&bound;
            inet_ntop(AF_INET6, &v6->sin6_addr, host, sizeof host);
            port = ntohs(v6->sin6_port);
        }
    }
    int v6 = bound.ss_family == AF_INET6;
    printf("%s: pid %d generation %lld version %s listening on %s%s%s:%d\n", name, (int)getpid(),
           (long long)gr_generation(), APP_VERSION, v6 ? "[" : "", host, v6 ? "]" : "", port);
    fflush(stdout);
}

/* What an epoll event is about, when it is not a connection. */
static char shutdown_event, listener_event, adopt_event;

static int watch_fd(int fd, char *what) {
    struct epoll_event event = {.events = EPOLLIN, .data.ptr = what};
    return fd < 0 ? 0 : epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event);
}

/* Serves what epoll said of connection `c`. Returns 1 when it is done
 * (closed, or handed over while draining). */
static int on_event(struct connection *c, uint32_t events, int draining) {
    int closing = draining && !handing_over;
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && on_readable(c, closing) < 0) {
        return 1;
    }
    if (c->out_len > c->out_sent && on_writable(c) < 0) {
        return 1;
    }
    if (c->in_len == 0 && c->out_len == 0) {
        free(c->buffers); /* idle */
        c->buffers = NULL;
    }
    if (draining && hand_over_if_idle(c)) {
        return 1;
    }
    return watch(c) < 0;
}

/* Draining: hands over every idle connection, and closes those silent for
 * the idle grace when the successor takes none (one that sends a request
 * gets its answer first). */
static void sweep(void) {
    long long now = now_ms();
    /* Walk backwards: drop_connection moves the last connection into the gap. */
    for (int i = connection_count - 1; i >= 0; i--) {
        struct connection *c = connections[i];
        int done = hand_over_if_idle(c);
        if (!done && !handing_over && c->out_len == 0 && now - c->last_active_ms > GR_DEFAULT_IDLE_GRACE_MS) {
            done = 1;
        }
        if (done) {
            drop_connection(i);
        }
    }
}

/* Makes the loop's epoll instance, watching grestart's shutdown fd,
 * `listener` and `adopt_fd` (gr_adopt_fd, or -1). Call it before gr_ready:
 * from then on the connections handed over take fds, and a loop that could
 * not be made after the predecessor began to drain would leave nobody
 * serving. Returns 0, or 1 when epoll failed. */
static int open_http_loop(int listener, int adopt_fd) {
    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd < 0 || watch_fd(gr_shutdown_fd(), &shutdown_event) < 0 ||
        watch_fd(listener, &listener_event) < 0 || watch_fd(adopt_fd, &adopt_event) < 0) {
        perror("epoll");
        return 1;
    }
    return 0;
}

/* Serves HTTP on `listener` (non-blocking) until this process must drain and
 * every connection is finished or handed over. `adopt_fd` (gr_adopt_fd, or -1)
 * brings the connections the previous generation handed over. epoll, not
 * poll(): a wake-up costs what is ready, not every connection held. Opens the
 * loop unless open_http_loop did. Returns 0, or 1 when epoll failed. */
static int serve_http(int listener, int adopt_fd) {
    if (epoll_fd < 0 && open_http_loop(listener, adopt_fd) != 0) {
        return 1;
    }
    int shutdown_fd = gr_shutdown_fd();
    int draining = 0;
    long long swept_ms = 0;
    static struct epoll_event events[256];
    while (!draining || connection_count > 0) {
        int n = epoll_wait(epoll_fd, events, sizeof events / sizeof events[0], draining ? 100 : -1);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        int drain_began = 0;
        for (int e = 0; e < n; e++) {
            char *what = events[e].data.ptr;
            if (what == &shutdown_event) {
                /* A successor serves now. The shared listening socket stays open in
                 * it, so connections still queued there are its to accept. */
                draining = drain_began = 1;
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, shutdown_fd, NULL);
                epoll_ctl(epoll_fd, EPOLL_CTL_DEL, listener, NULL);
                close(listener);
                if (adopt_fd >= 0) {
                    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, adopt_fd, NULL);
                }
                for (int i = 0; i < connection_count; i++) {
                    connections[i]->last_active_ms = now_ms();
                }
            } else if (what == &listener_event) {
                if (!draining) {
                    accept_all(listener);
                }
            } else if (what == &adopt_event) {
                if (!draining) {
                    adopt_all();
                }
            } else {
                struct connection *c = (struct connection *)what;
                if (on_event(c, events[e].events, draining)) {
                    drop_connection(c->index);
                }
            }
        }
        /* After the events: the sweep drops connections later events may name. */
        if (draining && (drain_began || now_ms() - swept_ms >= 100)) {
            sweep();
            swept_ms = now_ms();
        }
    }
    close(epoll_fd);
    return 0;
}

#endif
