/* A deliberately simple server for failure tests. Each generation reads what
 * to do from the file named by GR_TEST_MODE_FILE when it starts:
 *   serve  - serve one request per connection until told to drain (default)
 *   exit   - exit with status 3 before ready
 *   crash  - die of SIGSEGV before ready
 *   hang   - never call gr_ready
 *   deaf   - close the readiness channel (as a daemon closing every fd would)
 *            and never call gr_ready
 *   lost   - close the readiness channel, then call gr_ready (which tells
 *            systemd MAINPID=<self> while the parent never hears "ready")
 *   hoard  - ask for handed-over connections (gr_adopt_fd), never adopt one
 *   orphan - before any grestart call, log "orphan waiting" and wait until the
 *            parent has exited (the test kills it); then serve, asking for
 *            handed-over connections (gr_adopt_fd) as the examples do
 *   readydie - before any grestart call, wait for a byte on the FIFO named by
 *            GR_TEST_FIFO, then write "ready" on the readiness channel and
 *            exit at once (the test holds the parent stopped meanwhile)
 *   keepalive - serve keep-alive HTTP with the C examples' loop (http_loop.h),
 *            adopting handed-over connections and handing its own over when
 *            it drains; logs "adopted PORT" (the client's port) per adoption
 *   threads - a thread per connection, keep-alive until the client closes,
 *            for connections accepted (gr_accept) and adopted
 *            (gr_adopt_counted); none is handed over; gr_shutdown waits for
 *            them, then a hook logs "hooks ran"
 * Other knobs (environment): GR_TEST_READY_TIMEOUT_MS, GR_TEST_DRAIN_DEADLINE_MS,
 * GR_TEST_PROBATION_MS (gr_set_probation_ms),
 * GR_TEST_PID_FILE, GR_TEST_BLOCK_SIGTERM and GR_TEST_IGNORE_SIGCHLD (first
 * generation only: block SIGTERM and ignore SIGHUP / ignore SIGCHLD, to check
 * the successor does not inherit that), GR_TEST_REAP_CHILDREN (a thread reaps
 * every child with waitpid(-1)), GR_TEST_UNIX (also serve HTTP on this Unix
 * socket path), GR_TEST_UDP (also answer datagrams on udp://127.0.0.1:0 with
 * "PID GENERATION"; the port is logged as "udp port N"), GR_TEST_WANDER (before
 * any grestart call: chdir("/") and overwrite argv[0], as programs that set
 * their process title do), GR_TEST_HEAP_MB (fill that much heap with a pattern
 * before ready; a shutdown hook logs "heap of N MB intact" if it still reads
 * back, "heap of N MB CHANGED" if not). Answers carry X-Version: APP_VERSION.
 * GR_TEST_BLOCK_ALL_SIGNALS (every generation: block every signal before any
 * grestart call, as a server that waits for its signals with sigwait or
 * signalfd does), GR_TEST_FORK_ON_DRAIN (first generation only: when it
 * drains, fork a child that lives on without exec, holding every fd, and log
 * "drain child PID").
 * Heir only (LISTEN_FDS set), for the hand-over tests: GR_TEST_READY_DELAY_MS
 * (wait that long before gr_ready: a late heir, adopting meanwhile),
 * GR_TEST_NOFILE (lower the soft RLIMIT_NOFILE to that before any grestart
 * call, so handed-over connections fail with EMFILE; SIGUSR1 lifts it back to
 * the hard limit).
 * In keepalive mode: GR_TEST_CRASH_VERSION (that release dies of SIGSEGV
 * GR_TEST_CRASH_AFTER_MS, default 1000, after gr_ready), GR_TEST_UNHEALTHY_VERSION
 * (that release answers "GET /health" with 503).
 * "GET /restart" makes 8 threads call gr_restart() at once; each logs
 * "restart thread: RESULT ERRNO" (connections queue meanwhile).
 * "GET /shutdown" calls gr_shutdown() and logs "shutdown returned RESULT". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include "grestart.h"

static void log_adopted(int fd);
static const char *status_of(const char *head, int served);
#define HTTP_LOOP_ON_ADOPT(fd) log_adopted(fd)
#define HTTP_LOOP_STATUS(head, served) status_of(head, served)
#include "../../examples/c/http_loop.h"

#ifndef APP_VERSION
#define APP_VERSION "1"
#endif

/* GR_TEST_UNHEALTHY_VERSION: this release answers "GET /health" with 503. */
static const char *status_of(const char *head, int served) {
    const char *unhealthy = getenv("GR_TEST_UNHEALTHY_VERSION");
    if (unhealthy && strcmp(unhealthy, APP_VERSION) == 0 && strncmp(head, "get /health ", 12) == 0) {
        return "503 Service Unavailable";
    }
    return served ? "200 OK" : "405 Method Not Allowed";
}

/* GR_TEST_CRASH_VERSION: this release dies of SIGSEGV GR_TEST_CRASH_AFTER_MS
 * (default 1000) after it is ready. */
static void *crash_later(void *arg) {
    long long ms = *(long long *)arg;
    struct timespec delay = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&delay, &delay) < 0 && errno == EINTR) {
    }
    fprintf(stderr, "flaky_server: pid %d version %s crashing now\n", (int)getpid(), APP_VERSION);
    signal(SIGSEGV, SIG_DFL);
    raise(SIGSEGV);
    return NULL;
}

static void crash_if_doomed(void) {
    static long long after_ms = 1000;
    const char *doomed = getenv("GR_TEST_CRASH_VERSION");
    if (!doomed || strcmp(doomed, APP_VERSION) != 0) {
        return;
    }
    const char *knob = getenv("GR_TEST_CRASH_AFTER_MS");
    if (knob) {
        after_ms = strtoll(knob, NULL, 10);
    }
    pthread_t thread;
    pthread_create(&thread, NULL, crash_later, &after_ms);
}

static void die(const char *what) {
    fprintf(stderr, "flaky_server: %s: %s\n", what, gr_last_error());
    exit(1);
}

static void *reap_everything(void *arg) {
    (void)arg;
    for (;;) {
        if (waitpid(-1, NULL, 0) < 0) {
            sleep(1); /* no child right now; this thread only exists to race grestart */
        }
    }
    return NULL;
}

/* The client's port names the connection in the test. */
static void log_adopted(int fd) {
    struct sockaddr_in peer;
    socklen_t peer_len = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &peer_len) == 0) {
        fprintf(stderr, "adopted %d\n", ntohs(peer.sin_port));
    }
}

/* SIGUSR1 in an EMFILE heir: fds become available again, as when another part
 * of a server frees some. */
static void lift_nofile(int signo) {
    (void)signo;
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }
}

/* One keep-alive connection of the threads mode, counted as work in flight
 * (gr_accept's, gr_adopt_counted's): served until the client closes. */
static void *serve_keepalive(void *arg) {
    int c = (int)(intptr_t)arg;
    char request[4096];
    size_t got = 0;
    ssize_t n;
    while ((n = recv(c, request + got, sizeof request - 1 - got, 0)) > 0) {
        got += (size_t)n;
        request[got] = '\0';
        char *end = strstr(request, "\r\n\r\n");
        if (!end) {
            continue;
        }
        char response[256];
        int size = snprintf(response, sizeof response,
                            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pid: %d\r\nX-Generation: %lld\r\n"
                            "X-Version: %s\r\nConnection: keep-alive\r\n\r\n",
                            (int)getpid(), (long long)gr_generation(), APP_VERSION);
        send(c, response, (size_t)size, MSG_NOSIGNAL);
        got -= (size_t)(end + 4 - request);
        memmove(request, end + 4, got);
    }
    close(c);
    gr_work_end();
    return NULL;
}

static void hooks_ran(void *arg) {
    (void)arg;
    fprintf(stderr, "hooks ran\n");
}

static void serve_threads(int listener) {
    pthread_t thread;
    int adopt_fd = gr_adopt_fd();
    if (adopt_fd < 0 || gr_on_shutdown(hooks_ran, NULL) < 0 || gr_ready() < 0) {
        die("threads");
    }
    struct pollfd fds[3] = {{gr_shutdown_fd(), POLLIN, 0}, {listener, POLLIN, 0}, {adopt_fd, POLLIN, 0}};
    while (!(fds[0].revents & POLLIN)) {
        if (poll(fds, 3, -1) < 0) {
            continue;
        }
        int c;
        while ((c = gr_adopt_counted(NULL, 0, 0)) >= 0) {
            fcntl(c, F_SETFL, 0);
            pthread_create(&thread, NULL, serve_keepalive, (void *)(intptr_t)c);
            pthread_detach(thread);
        }
        if ((fds[1].revents & POLLIN) && (c = gr_accept(listener)) >= 0) {
            pthread_create(&thread, NULL, serve_keepalive, (void *)(intptr_t)c);
            pthread_detach(thread);
        }
    }
    exit(gr_shutdown() < 0); /* waits for every connection's thread */
}

static unsigned char *heap;
static size_t heap_size;

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + (i >> 20)); }

static void check_heap(void *arg) {
    (void)arg;
    size_t i = 0;
    while (i < heap_size && heap[i] == pattern(i)) {
        i++;
    }
    fprintf(stderr, "heap of %zu MB %s\n", heap_size >> 20, i == heap_size ? "intact" : "CHANGED");
}

static void *restart_now(void *arg) {
    (void)arg;
    int result = gr_restart();
    fprintf(stderr, "restart thread: %d %d\n", result, result < 0 ? errno : 0);
    return NULL;
}

/* Answers one HTTP request on a new stream connection, read to the end of its
 * head (blocking: a client that sends nothing holds this generation, on
 * purpose). */
static void serve_connection(int c) {
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
                        "X-Version: %s\r\nConnection: close\r\n\r\n",
                        (int)getpid(), (long long)gr_generation(), APP_VERSION);
    if (getenv("GR_TEST_PLAIN_WRITE")) {
        /* As many C servers do: write(2), twice, relying on SIGPIPE being
         * ignored (systemd's IgnoreSIGPIPE=yes) for a client that is gone. */
        size_t half = (size_t)size / 2;
        (void)!write(c, response, half); /* ECONNRESET, once the client reset */
        (void)!write(c, response + half, (size_t)size - half); /* then EPIPE */
    } else {
        send(c, response, (size_t)size, MSG_NOSIGNAL);
    }
    close(c);
    if (got > 0 && strncmp(request, "GET /shutdown ", 14) == 0) {
        fprintf(stderr, "shutdown returned %d\n", gr_shutdown());
    }
    if (got > 0 && strncmp(request, "GET /restart ", 13) == 0) {
        pthread_t threads[8];
        for (int i = 0; i < 8; i++) {
            pthread_create(&threads[i], NULL, restart_now, NULL);
        }
        for (int i = 0; i < 8; i++) {
            pthread_join(threads[i], NULL); /* so every result is logged before we exit */
        }
    }
}

/* Non-blocking: the socket is shared with the next generation, which may take
 * a connection or datagram between our poll() and our accept()/recv(). */
static int claim(const char *address, const char *name) {
    int fd = gr_listen(address, name);
    if (fd < 0) {
        die(address);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        return 2;
    }
    const char *hold = getenv("GR_TEST_HOLD_FIFO");
    if (hold) { /* before any gr_ call: the test signals us while we wait here */
        int fifo = open(hold, O_RDONLY);
        char byte;
        if (fifo < 0 || read(fifo, &byte, 1) != 1) {
            return 3;
        }
        close(fifo);
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
    if (getenv("GR_TEST_BLOCK_ALL_SIGNALS")) {
        sigset_t all;
        sigfillset(&all);
        sigprocmask(SIG_BLOCK, &all, NULL);
    }
    const char *knob;
    int heir = getenv("LISTEN_FDS") != NULL;
    if (heir && (knob = getenv("GR_TEST_NOFILE"))) {
        struct rlimit limit;
        getrlimit(RLIMIT_NOFILE, &limit);
        limit.rlim_cur = strtoull(knob, NULL, 10);
        setrlimit(RLIMIT_NOFILE, &limit);
        struct sigaction lift = {.sa_handler = lift_nofile};
        sigaction(SIGUSR1, &lift, NULL);
    }
    int fork_on_drain = getenv("GR_TEST_FORK_ON_DRAIN") && !getenv("LISTEN_FDS");
    if (getenv("GR_TEST_IGNORE_SIGCHLD") && !getenv("LISTEN_FDS")) {
        signal(SIGCHLD, SIG_IGN);
    }
    if (getenv("GR_TEST_WANDER")) {
        if (chdir("/") < 0) {
            return 4;
        }
        memset(argv[0], 'x', strlen(argv[0]));
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
    if (strcmp(mode, "orphan") == 0 && getenv("GRESTART_READY_FD")) {
        int parent = (int)syscall(SYS_pidfd_open, getppid(), 0);
        fprintf(stderr, "orphan waiting\n");
        struct pollfd gone = {parent, POLLIN, 0};
        while (parent >= 0 && poll(&gone, 1, -1) < 0) {
        }
        close(parent);
    }
    if (strcmp(mode, "readydie") == 0 && getenv("GRESTART_READY_FD")) {
        int fifo = open(getenv("GR_TEST_FIFO"), O_RDONLY);
        char go;
        if (fifo < 0 || read(fifo, &go, 1) != 1) {
            return 5;
        }
        send(atoi(getenv("GRESTART_READY_FD")), "R", 1, MSG_NOSIGNAL);
        _exit(0);
    }
    int lost = strcmp(mode, "lost") == 0 && getenv("GRESTART_READY_FD");
    if (lost) {
        close(atoi(getenv("GRESTART_READY_FD")));
    }
    char address[300];
    snprintf(address, sizeof address, "tcp://%s", argv[1]);
    int listener = claim(address, "http");
    int unix_listener = -1, udp = -1;
    const char *unix_path = getenv("GR_TEST_UNIX");
    if (unix_path) {
        snprintf(address, sizeof address, "unix:%s", unix_path);
        unix_listener = claim(address, "unix");
    }
    if (getenv("GR_TEST_UDP")) {
        udp = claim("udp://127.0.0.1:0", "udp");
        struct sockaddr_in udp_bound;
        socklen_t udp_len = sizeof udp_bound;
        getsockname(udp, (struct sockaddr *)&udp_bound, &udp_len);
        fprintf(stderr, "udp port %d\n", ntohs(udp_bound.sin_port));
    }
    if (getenv("GR_TEST_REAP_CHILDREN")) {
        pthread_t reaper;
        pthread_create(&reaper, NULL, reap_everything, NULL);
    }
    if ((knob = getenv("GR_TEST_READY_TIMEOUT_MS")) && gr_set_ready_timeout_ms(strtoull(knob, NULL, 10)) < 0) {
        die("ready timeout");
    }
    if ((knob = getenv("GR_TEST_DRAIN_DEADLINE_MS")) && gr_set_drain_deadline_ms(strtoull(knob, NULL, 10)) < 0) {
        die("drain deadline");
    }
    if ((knob = getenv("GR_TEST_PROBATION_MS")) && gr_set_probation_ms(strtoull(knob, NULL, 10)) < 0) {
        die("probation");
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
    if ((knob = getenv("GR_TEST_HEAP_MB"))) {
        heap_size = (size_t)strtoull(knob, NULL, 10) << 20;
        heap = malloc(heap_size);
        if (!heap) {
            die("heap");
        }
        for (size_t i = 0; i < heap_size; i++) {
            heap[i] = pattern(i);
        }
        if (gr_on_shutdown(check_heap, NULL) < 0) {
            die("heap hook");
        }
    }
    if ((strcmp(mode, "hoard") == 0 || strcmp(mode, "orphan") == 0) && gr_adopt_fd() < 0) {
        die("adopt_fd");
    }
    if (strcmp(mode, "threads") == 0) {
        serve_threads(listener);
    }
    if (strcmp(mode, "keepalive") == 0) {
        (void)listen_from_args; /* http_loop.h's, unused here: flaky claims its own */
        (void)print_listening;
        reported_pid = (int)getpid();
        int adopt_fd = gr_adopt_fd();
        if (adopt_fd < 0) {
            die("adopt_fd");
        }
        handing_over = 1;
        if (heir && (knob = getenv("GR_TEST_READY_DELAY_MS"))) {
            long long ms = strtoll(knob, NULL, 10);
            struct timespec delay = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
            while (nanosleep(&delay, &delay) < 0 && errno == EINTR) {
            }
        }
        if (open_http_loop(listener, adopt_fd) != 0) { /* before gr_ready: it needs an fd */
            return 1;
        }
        if (gr_ready() < 0) {
            die("ready");
        }
        crash_if_doomed();
        if (serve_http(listener, adopt_fd) != 0) {
            return 1;
        }
        return gr_shutdown() < 0;
    }
    if (strcmp(mode, "hang") == 0) {
        for (;;) {
            pause();
        }
    }
    if (gr_ready() < 0) {
        die("ready");
    }
    if (lost) {
        for (;;) {
            pause();
        }
    }
    struct pollfd fds[4] = {
        {gr_shutdown_fd(), POLLIN, 0}, {listener, POLLIN, 0}, {unix_listener, POLLIN, 0}, {udp, POLLIN, 0}};
    while (!(fds[0].revents & POLLIN)) {
        if (poll(fds, 4, -1) < 0) {
            continue;
        }
        for (int i = 1; i <= 2; i++) {
            int c = (fds[i].revents & POLLIN) ? accept4(fds[i].fd, NULL, NULL, SOCK_CLOEXEC) : -1;
            if (c >= 0) {
                serve_connection(c);
            }
        }
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof peer;
        char datagram[64];
        if ((fds[3].revents & POLLIN) &&
            recvfrom(udp, datagram, sizeof datagram, 0, (struct sockaddr *)&peer, &peer_len) >= 0) {
            int size = snprintf(datagram, sizeof datagram, "%d %lld", (int)getpid(), (long long)gr_generation());
            sendto(udp, datagram, (size_t)size, 0, (struct sockaddr *)&peer, peer_len);
        }
    }
    if (fork_on_drain) {
        pid_t child = fork();
        if (child == 0) {
            for (;;) {
                pause();
            }
        }
        fprintf(stderr, "drain child %d\n", (int)child);
    }
    /* Closing our copies never unlinks the Unix path nor stops the successor. */
    if (unix_listener >= 0) {
        close(unix_listener);
    }
    if (udp >= 0) {
        close(udp);
    }
    close(listener);
    return gr_shutdown() < 0;
}
