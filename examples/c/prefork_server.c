/*
 * A prefork HTTP/1.1 server, the shape of gunicorn, uWSGI or Apache prefork:
 * a master binds the listener and forks workers that accept on it. The
 * operator signals the master; grestart restarts it like any other server.
 *
 * Built and run as README.md's C quick start is, with this file in place of
 * examples/c/quickstart.c; restarted with kill -USR2 <master pid>.
 *
 * Answers carry X-Pid (the master, the process to signal) and X-Worker-Pid
 * (the worker that answered). On SIGUSR2 the master starts a successor, which
 * says it is ready and forks its own workers; the old master's shutdown fd then
 * turns readable, in its workers too (a forked child shares it), so each old
 * worker stops accepting, finishes its connections and exits; the old master
 * reaps them, runs its hooks and exits.
 *
 * What a forked worker may call: gr_shutdown_fd, gr_wait_shutdown, gr_accept,
 * gr_work_begin/end and gr_generation. Everything that acts on the generation
 * (gr_ready, gr_restart, gr_shutdown, settings) is the master's and fails with
 * EPERM in a worker, and a restart signal sent to a worker is ignored, so a
 * worker can neither start a hand-over nor make its master drain.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "http_loop.h"

#define WORKERS 4

int main(int argc, char **argv) {
    int listener = listen_from_args(argc, argv);
    if (gr_set_drain_deadline_ms(30000) < 0) {
        fprintf(stderr, "prefork_server: %s\n", gr_last_error());
        return 1;
    }
    reported_pid = (int)getpid();
    print_listening("prefork_server", listener);

    /* Ready before the workers exist, as every server is ready before it
     * accepts: the previous generation stops accepting now, and what arrives
     * meanwhile waits in the listener's queue for our workers. (Forking first
     * would let workers answer for a master that cannot restart yet.) */
    if (gr_ready() < 0) {
        fprintf(stderr, "prefork_server: %s\n", gr_last_error());
        return 1;
    }
    pid_t workers[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        workers[i] = fork();
        if (workers[i] < 0) {
            perror("prefork_server: fork");
            return 1;
        }
        if (workers[i] == 0) {
            /* A master that is killed outright takes its workers along. */
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != reported_pid) {
                _exit(1);
            }
            _exit(serve_http(listener, -1)); /* a worker adopts nothing, hands nothing over */
        }
    }

    gr_wait_shutdown(-1); /* a successor serves now; our workers see it too */
    close(listener);
    for (int i = 0; i < WORKERS; i++) {
        while (waitpid(workers[i], NULL, 0) < 0 && errno == EINTR) {
        }
    }
    fprintf(stderr, "prefork_server: master %d generation %lld exiting after its workers\n", (int)getpid(),
            (long long)gr_generation());
    return gr_shutdown() < 0 ? 1 : 0;
}
