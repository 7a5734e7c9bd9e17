/*
 * A small HTTP/1.1 server that restarts gracefully on SIGUSR2 through grestart.
 *
 * Built and run as README.md's C quick start is, with this file in place of
 * examples/c/quickstart.c; kill -USR2 <pid> restarts it onto the binary on
 * disk, and nothing is lost.
 *
 * Every GET and POST is answered with 200 and the headers X-Pid, X-Generation
 * and X-Version. One thread, epoll: the listener, the connections, grestart's
 * shutdown fd and its adopt fd (see http_loop.h). When the shutdown fd turns
 * readable a successor serves: stop accepting, finish what each connection
 * sent, hand the idle connections to the successor (no connection is closed
 * by a restart), then run the shutdown hooks and exit.
 */
#define _GNU_SOURCE
#include <signal.h>

#include "http_loop.h"

static void say_goodbye(void *arg) {
    (void)arg;
    fprintf(stderr, "http_server: pid %d generation %lld exiting after %llu requests\n", (int)getpid(),
            (long long)gr_generation(), requests_served);
}

int main(int argc, char **argv) {
    int listener = listen_from_args(argc, argv); /* inherited, or bound now */
    /* SIGTERM (docker stop, systemctl stop, the launcher) drains like a hand-over: hooks run, exit 0. */
    if (gr_on_shutdown(say_goodbye, NULL) < 0 || gr_set_drain_deadline_ms(30000) < 0 ||
        gr_set_stop_signal(SIGTERM) < 0) {
        fprintf(stderr, "http_server: %s\n", gr_last_error());
        return 1;
    }
    reported_pid = (int)getpid();
    /* Before gr_ready: the previous generation then hands us its idle connections. */
    int adopt_fd = gr_adopt_fd();
    if (adopt_fd < 0) {
        fprintf(stderr, "http_server: %s\n", gr_last_error());
        return 1;
    }
    handing_over = 1;
    print_listening("http_server", listener);
    if (open_http_loop(listener, adopt_fd) != 0) { /* before gr_ready: it needs an fd */
        return 1;
    }
    if (gr_ready() < 0) {
        fprintf(stderr, "http_server: %s\n", gr_last_error());
        return 1;
    }
    if (serve_http(listener, adopt_fd) != 0) {
        return 1;
    }
    return gr_shutdown() < 0 ? 1 : 0;
}
