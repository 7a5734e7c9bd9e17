/* Lifecycle rules seen from C, one scenario per run (argv[1]); argv[2] is a
 * scratch file. Every run ends within 20 s (alarm) so that a deadlock is a
 * failure, not a hang. Prints "lifecycle: N passed, M failed".
 *
 *   hooks-deadline       the drain deadline (200 ms) fires while a hook (500 ms)
 *                        runs: the hook finishes, once, before the process exits
 *   hooks-second-caller  gr_shutdown from a second thread returns only when the
 *                        hooks the first one runs have finished
 *   log-reentry          a log callback that calls back into grestart
 *   engine-start-fails   grestart cannot start (no memory for its thread): the
 *                        call fails, and a later one still finds the inherited fd
 *   work-in-flight       gr_shutdown waits for gr_work_end before the hooks
 *   forked-worker        a child forked after grestart started (a prefork
 *                        worker) cannot act for the generation (EPERM), cannot
 *                        make it drain, and sees its drain on the shared fd
 *   thread-masks         in an heir (a forked child posing as one), grestart's
 *                        threads (signal watcher, hand-over, drain deadline)
 *                        block every signal but the restart signal, which only
 *                        the watcher leaves unblocked, also after gr_set_signal
 *   hook-calls-shutdown  a hook that calls gr_shutdown gets 0 at once; another
 *                        thread's gr_shutdown waits for the hook to finish
 *   after-shutdown       the drain deadline (200 ms) fires while gr_shutdown runs
 *                        a hook (400 ms): what the program does after
 *                        gr_shutdown returned still runs (it exits itself)
 *   cloexec-at-start     an heir (this program exec'd again as one) finds the
 *                        fds handed to it close-on-exec before its first gr_
 *                        call, so a helper it starts first gets none of them
 *   log-swap             gr_set_log_callback returns only once no thread runs
 *                        the previous callback (its arg may then be freed);
 *                        called from inside a callback it returns at once
 *   tls-destructor       gr_ calls (failing ones too) from a pthread key
 *                        destructor, which runs after the thread's locals are
 *                        destroyed, neither abort nor crash
 *   signals-together     gr_set_signal and gr_set_stop_signal called at once
 *                        from two threads: neither waits out its bound for the
 *                        watcher (which then warns), and the masks end right
 *   one-signal-one-role  gr_set_signal(SIGHUP) and gr_set_stop_signal(SIGHUP)
 *                        called at once from two threads: one of them is
 *                        refused (EINVAL), never both taken
 *   signal-changed-in-restart  an application that sigwaits for its signals
 *                        makes SIGHUP the restart signal while a restart runs
 *                        (its successor never gets ready): a SIGUSR2 sent
 *                        then is taken by grestart, not by its default action,
 *                        and once the restart is over SIGUSR2 is the
 *                        application's again; a signal the application gave
 *                        a handler of its own meanwhile keeps that handler
 *   stop-changed-in-restart  no stop signal chosen while a restart runs: the
 *                        old one (SIGTERM) still stops until the restart is over
 *   signal-before-start  a restart signal before the first gr_ call does not
 *                        kill the process (the library's constructor guards
 *                        it), a program the process starts meanwhile still
 *                        has its default action, and the engine's start
 *                        says one came
 *   signal-before-start-as-heir  the same in a successor, which its parent
 *                        starts with the restart signal ignored
 *   start-out-of-fds     the engine starts under every fd limit from none to
 *                        plenty: a start that fails leaves no grestart thread
 *                        behind, and the next, with fds, starts one watcher
 *   fork-after-failed-start  a start that failed (no memory for its thread),
 *                        then a fork: the child's engine and the parent's,
 *                        started again, each read a self-pipe of their own
 *                        (the child's gr_set_signal never waits out its bound)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>

#include "expect.h"
#include "grestart.h"

static const char *scratch;

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&t, &t) < 0 && errno == EINTR) {
    }
}

/* Lines in the scratch file: how many times the slow hook completed. */
static int completed_hooks(void) {
    FILE *f = fopen(scratch, "r");
    int lines = 0;
    char line[64];
    while (f && fgets(line, sizeof line, f)) {
        lines++;
    }
    if (f) {
        fclose(f);
    }
    return lines;
}

static void slow_hook(void *arg) {
    sleep_ms((long)(intptr_t)arg);
    FILE *f = fopen(scratch, "a");
    fputs("hook done\n", f);
    fclose(f);
}

static void *second_caller(void *arg) {
    (void)arg;
    sleep_ms(100);
    EXPECT(gr_shutdown() == 0);
    /* Returned: the hooks the first caller runs must have finished. */
    EXPECT(completed_hooks() == 1);
    return NULL;
}

static void log_into_grestart(int level, const char *line, void *arg) {
    (void)level;
    (void)arg;
    /* Each of these takes grestart's lock; the line may come from under it. */
    int draining = gr_wait_shutdown(0);
    EXPECT(draining == 0 || draining == 1);
    EXPECT(gr_generation() == 1);
    EXPECT(gr_shutdown_fd() >= 0);
    fprintf(stderr, "logged: %s\n", line);
}

static void *work_then_end(void *arg) {
    (void)arg;
    sleep_ms(300);
    FILE *f = fopen(scratch, "a");
    fputs("work done\n", f);
    fclose(f);
    EXPECT(gr_work_end() == 0);
    return NULL;
}

static void work_must_be_done(void *arg) {
    (void)arg;
    EXPECT(completed_hooks() == 1); /* the work's line is there already */
}

/* In a forked worker: what acts for the generation is refused, the rest works. */
static int worker_calls(int master_shutdown_fd) {
    int ok = 1;
#define REFUSED(call) ok &= ((call) == -1 && errno == EPERM)
    REFUSED(gr_shutdown());
    REFUSED(gr_restart());
    REFUSED(gr_ready());
    REFUSED(gr_set_signal(SIGHUP));
    REFUSED(gr_set_drain_deadline_ms(1));
    REFUSED(gr_listen("tcp://127.0.0.1:0", "worker"));
#undef REFUSED
    ok &= strstr(gr_last_error(), "forked") != NULL;
    ok &= gr_shutdown_fd() == master_shutdown_fd;
    ok &= gr_wait_shutdown(0) == 0;
    ok &= gr_generation() == 1;
    ok &= gr_work_begin() == 0 && gr_work_end() == 0;
    return ok;
}

static int exit_code(pid_t child) {
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Sets up this process as an heir of a grestart parent would be: a listening
 * socket at fd 3 named "http", described by LISTEN_* for this pid. */
static void pose_as_heir(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    EXPECT(bind(s, (struct sockaddr *)&any, sizeof any) == 0 && listen(s, 16) == 0);
    if (s != 3) {
        EXPECT(dup2(s, 3) == 3);
        close(s);
    }
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("LISTEN_PID", pid, 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_FDNAMES", "http", 1);
}

/* The name of this process's thread `task` (its tid), "" if it has gone. */
static void thread_name(const char *task, char *name, size_t size) {
    char path[300];
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", task);
    FILE *f = fopen(path, "r");
    name[0] = '\0';
    if (f && fgets(name, (int)size, f)) {
        name[strcspn(name, "\n")] = '\0';
    }
    if (f) {
        fclose(f);
    }
}

/* How many of this process's threads are named `name` (NULL: any name). */
static int threads_named(const char *name) {
    int count = 0;
    DIR *tasks = opendir("/proc/self/task");
    EXPECT(tasks != NULL);
    struct dirent *task;
    while (tasks && (task = readdir(tasks))) {
        char comm[64];
        if (task->d_name[0] != '.') {
            thread_name(task->d_name, comm, sizeof comm);
            count += name == NULL || strcmp(comm, name) == 0;
        }
    }
    if (tasks) {
        closedir(tasks);
    }
    return count;
}

/* Checks the signal masks of this process's threads other than the main one:
 * the one named grestart-signal blocks every signal but `restart`, the others
 * every signal. The kernel never blocks SIGKILL and SIGSTOP, glibc never its
 * own 32 and 33. Returns how many such threads there are, or -1 when a mask
 * differs (said and counted as a failure if `report`). */
static int check_thread_masks(int restart, int report) {
    int threads = 0, differs = 0;
    DIR *tasks = opendir("/proc/self/task");
    EXPECT(tasks != NULL);
    struct dirent *task;
    while (tasks && (task = readdir(tasks))) {
        if (task->d_name[0] == '.' || atoi(task->d_name) == (int)getpid()) {
            continue;
        }
        char path[300], name[64], line[256];
        unsigned long long blocked = 0;
        thread_name(task->d_name, name, sizeof name);
        snprintf(path, sizeof path, "/proc/self/task/%s/status", task->d_name);
        FILE *f = fopen(path, "r");
        while (f && fgets(line, sizeof line, f)) {
            sscanf(line, "SigBlk: %llx", &blocked);
        }
        if (f) {
            fclose(f);
        }
        int watcher = strcmp(name, "grestart-signal") == 0;
        for (int signo = 1; signo <= 64; signo++) {
            if (signo == SIGKILL || signo == SIGSTOP || signo == 32 || signo == 33) {
                continue;
            }
            int is_blocked = (blocked >> (signo - 1)) & 1;
            if (is_blocked != !(watcher && signo == restart)) {
                if (report) {
                    fprintf(stderr, "thread %s (%s) %s signal %d (SigBlk %llx)\n", task->d_name,
                            name, is_blocked ? "blocks" : "does not block", signo, blocked);
                    EXPECT(0);
                }
                differs = 1;
                break;
            }
        }
        threads++;
    }
    if (tasks) {
        closedir(tasks);
    }
    return differs ? -1 : threads;
}

/* check_thread_masks once the watcher has set its mask: it does so when it
 * first runs, which may come after the call that started it returned (the
 * engine does not wait for its new thread), so look again for up to 2 s.
 * Until the new thread has its name it passes for one of the others, whose
 * mask it still has: wait for the name too. */
static int settled_thread_masks(int restart) {
    for (int i = 0;
         i < 2000 && (threads_named("grestart-signal") == 0 || check_thread_masks(restart, 0) < 0);
         i++) {
        usleep(1000);
    }
    return check_thread_masks(restart, 1);
}

/* threads_named once it is `expected`, within 2 s (a thread ends on its own time). */
static int settled_threads_named(const char *name, int expected) {
    for (int i = 0; i < 2000 && threads_named(name) != expected; i++) {
        usleep(1000);
    }
    return threads_named(name);
}

/* In a child: starts the engine with `room` fds left under RLIMIT_NOFILE,
 * then with the limit as it was. Exits 3 if the first start failed, 0 if it
 * succeeded, 1 if an expectation failed. */
static void start_with_fds_left(int room) {
    failures = 0; /* this process's own */
    alarm(10);    /* fork cleared the parent's */
    unsetenv("NOTIFY_SOCKET"); /* a service manager's: its watch would be a thread too */
    struct rlimit before;
    EXPECT(getrlimit(RLIMIT_NOFILE, &before) == 0);
    int lowest = dup(0); /* the next fd the start would get */
    close(lowest);
    struct rlimit tight = {(rlim_t)(lowest + room), before.rlim_max};
    EXPECT(setrlimit(RLIMIT_NOFILE, &tight) == 0);
    int64_t first = gr_generation();
    EXPECT(setrlimit(RLIMIT_NOFILE, &before) == 0);
    if (first < 0) {
        EXPECT(threads_named(NULL) == 1); /* this one: nothing of grestart's, named yet or not */
    }
    EXPECT(gr_generation() == 1);
    EXPECT(threads_named(NULL) == 2);
    EXPECT(settled_threads_named("grestart-signal", 1) == 1); /* the other is the watcher */
    _exit(failures ? 1 : first < 0 ? 3 : 0);
}

static int watcher_late;

/* Counts the signal watcher's "did not take signals ... within 1 s". */
static void watch_for_late_watcher(int level, const char *line, void *arg) {
    (void)level, (void)arg;
    if (strstr(line, "did not take signals")) {
        __atomic_add_fetch(&watcher_late, 1, __ATOMIC_SEQ_CST);
    }
}

enum { SIGNAL_CHANGES = 5000 };

static void *change_stop_signal(void *arg) {
    (void)arg;
    for (int i = 0; i < SIGNAL_CHANGES; i++) {
        EXPECT(gr_set_stop_signal(i % 2 ? 0 : SIGTERM) == 0);
    }
    return NULL;
}

static pthread_barrier_t both_start, both_done;
static int stop_taken;

/* The stop half of one-signal-one-role: each round, SIGHUP as the stop signal. */
static void *claim_sighup_to_stop(void *arg) {
    (void)arg;
    for (int i = 0; i < SIGNAL_CHANGES; i++) {
        pthread_barrier_wait(&both_start);
        stop_taken = gr_set_stop_signal(SIGHUP) == 0;
        pthread_barrier_wait(&both_done);
        pthread_barrier_wait(&both_start); /* the main thread checked and reset */
    }
    return NULL;
}

static int restart_log[2], coalesced;

/* One byte per line about a restart: 'r' requested, 'f' failed. */
static void watch_restart(int level, const char *line, void *arg) {
    (void)level, (void)arg;
    if (strstr(line, "restart requested")) {
        EXPECT(write(restart_log[1], "r", 1) == 1);
    } else if (strstr(line, "restart failed")) {
        EXPECT(write(restart_log[1], "f", 1) == 1);
    } else if (strstr(line, "coalesced into it")) {
        __atomic_add_fetch(&coalesced, 1, __ATOMIC_SEQ_CST);
    }
}

static int early_lines;

static void count_early(int level, const char *line, void *arg) {
    (void)level, (void)arg;
    if (strstr(line, "1 restart signal(s) arrived before grestart started")) {
        early_lines++;
    }
}

/* A successor that never says it is ready. */
static const char *const never_ready[] = {"sleep", "10", NULL};

static void own_handler(int signo) {
    (void)signo;
}

static char next_restart_line(void) {
    char line = 0;
    EXPECT(read(restart_log[0], &line, 1) == 1);
    return line;
}

static void shutdown_inside(void *arg) {
    (void)arg;
    /* Nested: returns at once instead of waiting for the hooks it is part of. */
    EXPECT(gr_shutdown() == 0);
    sleep_ms(200); /* the second caller must wait until this returns */
    FILE *f = fopen(scratch, "a");
    fputs("hook done\n", f);
    fclose(f);
}

static int slow_logger_running, log_pipe[2];

/* The first line it gets takes a while; it says when it has begun. */
static void slow_logger(int level, const char *line, void *arg) {
    (void)level;
    (void)line;
    (void)arg;
    static int first = 1;
    if (__atomic_exchange_n(&first, 0, __ATOMIC_SEQ_CST)) {
        __atomic_store_n(&slow_logger_running, 1, __ATOMIC_SEQ_CST);
        EXPECT(write(log_pipe[1], "L", 1) == 1);
        sleep_ms(300);
        __atomic_store_n(&slow_logger_running, 0, __ATOMIC_SEQ_CST);
    }
}

static void *ready_now(void *arg) {
    (void)arg;
    EXPECT(gr_ready() == 0); /* logs "ready" through slow_logger */
    return NULL;
}

/* Replaces itself: must not wait for its own return. */
static void self_replacing_logger(int level, const char *line, void *arg) {
    (void)level;
    (void)line;
    (void)arg;
    EXPECT(gr_set_log_callback(NULL, NULL) == 0);
}

static pthread_key_t exiting_key;
static int destructor_ran;

/* Runs as the thread exits, after its thread-locals were destroyed. */
static void call_while_exiting(void *arg) {
    (void)arg;
    EXPECT(gr_listen("not an address", NULL) == -1 && errno == EINVAL);
    EXPECT(gr_last_error() != NULL);
    EXPECT(gr_generation() == 1);
    EXPECT(gr_wait_shutdown(0) == 0);
    EXPECT(gr_restart() == -1); /* not ready: refused, not a crash */
    destructor_ran = 1;
}

static void *thread_with_destructor(void *arg) {
    (void)arg;
    /* Make grestart's thread-locals exist on this thread, so they are
     * destroyed before the destructor runs. */
    EXPECT(gr_listen("not an address", NULL) == -1);
    EXPECT(gr_set_log_level(GR_LOG_DEBUG) == 0);
    pthread_setspecific(exiting_key, (void *)1);
    return NULL;
}

/* The address space in use now, from /proc/self/statm (pages). */
static rlim_t address_space_now(void) {
    unsigned long pages = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%lu", &pages) != 1) {
        pages = 0;
    }
    if (f) {
        fclose(f);
    }
    return (rlim_t)pages * (rlim_t)sysconf(_SC_PAGESIZE);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: lifecycle SCENARIO SCRATCH_FILE\n");
        return 2;
    }
    alarm(20);
    scratch = argv[2];
    const char *scenario = argv[1];
    pthread_t thread;

    if (strcmp(scenario, "hooks-deadline") == 0) {
        EXPECT(gr_set_drain_deadline_ms(200) == 0);
        EXPECT(gr_on_shutdown(slow_hook, (void *)(intptr_t)500) == 0);
        EXPECT(gr_ready() == 0);
        pthread_create(&thread, NULL, second_caller, NULL);
        /* Runs the hook for 500 ms; the deadline thread exits the process
         * once it has finished, maybe before this returns. */
        gr_shutdown();
        pthread_join(thread, NULL);
    } else if (strcmp(scenario, "hooks-second-caller") == 0) {
        EXPECT(gr_on_shutdown(slow_hook, (void *)(intptr_t)300) == 0);
        EXPECT(gr_ready() == 0);
        pthread_create(&thread, NULL, second_caller, NULL);
        EXPECT(gr_shutdown() == 0);
        pthread_join(thread, NULL);
        EXPECT(completed_hooks() == 1);
    } else if (strcmp(scenario, "log-reentry") == 0) {
        EXPECT(gr_set_log_level(GR_LOG_DEBUG) == 0);
        EXPECT(gr_set_log_callback(log_into_grestart, NULL) == 0);
        int listener = gr_listen("tcp://127.0.0.1:0", "http");
        EXPECT(listener >= 0);
        EXPECT(gr_ready() == 0);
        EXPECT(gr_shutdown() == 0);
    } else if (strcmp(scenario, "engine-start-fails") == 0) {
        pose_as_heir();
        struct rlimit before;
        getrlimit(RLIMIT_AS, &before);
        /* Room for small allocations, none for a thread's stack. */
        struct rlimit tight = {address_space_now() + (1 << 20), before.rlim_max};
        EXPECT(setrlimit(RLIMIT_AS, &tight) == 0);
        errno = 0;
        int fd = gr_inherit_listener("http");
        int err = errno;
        EXPECT(setrlimit(RLIMIT_AS, &before) == 0);
        fprintf(stderr, "without memory: %d errno %d (%s)\n", fd, err, gr_last_error());
        EXPECT(fd == -1 && err != ENOENT);
        EXPECT(getenv("LISTEN_FDS") != NULL); /* not consumed by the failed start */
        fd = gr_inherit_listener("http");
        fprintf(stderr, "with memory: %d (%s)\n", fd, fd < 0 ? gr_last_error() : "");
        EXPECT(fd == 3);
        EXPECT(getenv("LISTEN_FDS") == NULL);
    } else if (strcmp(scenario, "work-in-flight") == 0) {
        EXPECT(gr_on_shutdown(work_must_be_done, NULL) == 0);
        EXPECT(gr_ready() == 0);
        EXPECT(gr_work_end() == -1 && errno == EINVAL); /* nothing in flight */
        EXPECT(gr_work_begin() == 0);
        pthread_create(&thread, NULL, work_then_end, NULL);
        EXPECT(gr_shutdown() == 0); /* waits ~300 ms for the work */
        pthread_join(thread, NULL);
    } else if (strcmp(scenario, "forked-worker") == 0) {
        EXPECT(gr_ready() == 0);
        int shutdown_fd = gr_shutdown_fd();
        pid_t worker = fork();
        if (worker == 0) {
            _exit(worker_calls(shutdown_fd) ? 0 : 1);
        }
        EXPECT(exit_code(worker) == 0);
        EXPECT(gr_wait_shutdown(0) == 0); /* the master was not made to drain */
        worker = fork();
        if (worker == 0) {
            _exit(gr_wait_shutdown(10000) == 1 ? 0 : 1); /* wakes on the master's drain */
        }
        EXPECT(gr_shutdown() == 0);
        EXPECT(exit_code(worker) == 0);
    } else if (strcmp(scenario, "thread-masks") == 0) {
        int link[2];
        EXPECT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, link) == 0);
        pid_t heir = fork();
        if (heir == 0) {
            /* An heir of this process: a listener at fd 3, the link at fd 10. */
            pose_as_heir();
            EXPECT(dup2(link[1], 10) == 10);
            setenv("GRESTART_READY_FD", "10", 1);
            EXPECT(gr_adopt_fd() >= 0); /* starts the hand-over thread */
            EXPECT(gr_set_drain_deadline_ms(20000) == 0);
            EXPECT(gr_ready() == 0);
            EXPECT(gr_shutdown() == 0); /* the deadline thread now waits */
            EXPECT(settled_thread_masks(SIGUSR2) == 3);
            EXPECT(gr_set_signal(SIGHUP) == 0);
            EXPECT(check_thread_masks(SIGHUP, 1) == 3); /* the watcher runs: set_signal waits */
            _exit(failures != 0);
        }
        close(link[1]);
        EXPECT(exit_code(heir) == 0);
        close(link[0]);
    } else if (strcmp(scenario, "after-shutdown") == 0) {
        EXPECT(gr_set_drain_deadline_ms(200) == 0);
        EXPECT(gr_on_shutdown(slow_hook, (void *)(intptr_t)400) == 0);
        EXPECT(gr_ready() == 0);
        EXPECT(gr_shutdown() == 0);
        sleep_ms(300); /* the program's own last work, past the deadline */
        FILE *f = fopen(scratch, "a");
        fputs("after shutdown\n", f);
        fclose(f);
    } else if (strcmp(scenario, "cloexec-at-start") == 0) {
        /* Exec'd as an heir: a listener at fd 3, the link at fd 10, both
         * inheritable (as a grestart parent's spawn leaves them). */
        int link[2];
        EXPECT(socketpair(AF_UNIX, SOCK_STREAM, 0, link) == 0);
        pose_as_heir();
        EXPECT(dup2(link[1], 10) == 10);
        setenv("GRESTART_READY_FD", "10", 1);
        execl("/proc/self/exe", argv[0], "cloexec-as-heir", scratch, (char *)NULL);
        EXPECT(0); /* exec failed */
    } else if (strcmp(scenario, "cloexec-as-heir") == 0) {
        /* Before any gr_ call. */
        EXPECT(fcntl(3, F_GETFD) & FD_CLOEXEC);
        EXPECT(fcntl(10, F_GETFD) & FD_CLOEXEC);
        EXPECT(gr_inherit_listener("http") == 3); /* and it is still handed over */
    } else if (strcmp(scenario, "log-swap") == 0) {
        EXPECT(pipe(log_pipe) == 0);
        EXPECT(gr_set_log_callback(slow_logger, NULL) == 0);
        pthread_create(&thread, NULL, ready_now, NULL);
        char begun;
        EXPECT(read(log_pipe[0], &begun, 1) == 1);
        EXPECT(gr_set_log_callback(self_replacing_logger, NULL) == 0);
        EXPECT(__atomic_load_n(&slow_logger_running, __ATOMIC_SEQ_CST) == 0);
        pthread_join(thread, NULL);
        EXPECT(gr_shutdown() == 0); /* logs through self_replacing_logger */
    } else if (strcmp(scenario, "tls-destructor") == 0) {
        EXPECT(pthread_key_create(&exiting_key, call_while_exiting) == 0);
        pthread_create(&thread, NULL, thread_with_destructor, NULL);
        pthread_join(thread, NULL);
        EXPECT(destructor_ran);
    } else if (strcmp(scenario, "signals-together") == 0) {
        EXPECT(gr_set_log_callback(watch_for_late_watcher, NULL) == 0);
        EXPECT(gr_generation() == 1); /* starts the engine, and its watcher */
        EXPECT(settled_thread_masks(SIGUSR2) >= 1); /* the watcher runs: set_signal waits */
        pthread_create(&thread, NULL, change_stop_signal, NULL);
        for (int i = 0; i < SIGNAL_CHANGES; i++) {
            EXPECT(gr_set_signal(i % 2 ? SIGUSR2 : SIGHUP) == 0);
        }
        pthread_join(thread, NULL);
        EXPECT(__atomic_load_n(&watcher_late, __ATOMIC_SEQ_CST) == 0);
        EXPECT(check_thread_masks(SIGUSR2, 1) >= 1); /* the last of each: SIGUSR2, no stop */
    } else if (strcmp(scenario, "one-signal-one-role") == 0) {
        EXPECT(gr_generation() == 1);
        EXPECT(settled_thread_masks(SIGUSR2) >= 1); /* the watcher runs: set_signal waits */
        pthread_barrier_init(&both_start, NULL, 2);
        pthread_barrier_init(&both_done, NULL, 2);
        pthread_create(&thread, NULL, claim_sighup_to_stop, NULL);
        int both = 0, restart_taken = 0;
        for (int i = 0; i < SIGNAL_CHANGES; i++) {
            pthread_barrier_wait(&both_start);
            int restart = gr_set_signal(SIGHUP) == 0;
            pthread_barrier_wait(&both_done);
            restart_taken += restart;
            both += restart && stop_taken;
            EXPECT(restart || stop_taken); /* the first to come takes it */
            EXPECT(gr_set_stop_signal(0) == 0 && gr_set_signal(SIGUSR2) == 0);
            pthread_barrier_wait(&both_start);
        }
        pthread_join(thread, NULL);
        fprintf(stderr, "SIGHUP restarts in %d rounds of %d, stops in %d\n", restart_taken,
                SIGNAL_CHANGES, SIGNAL_CHANGES - restart_taken);
        EXPECT(both == 0);
    } else if (strcmp(scenario, "signal-changed-in-restart") == 0) {
        sigset_t waited;
        sigemptyset(&waited);
        sigaddset(&waited, SIGUSR2);
        sigaddset(&waited, SIGHUP);
        EXPECT(pthread_sigmask(SIG_BLOCK, &waited, NULL) == 0); /* to sigwait for them */
        EXPECT(pipe(restart_log) == 0);
        EXPECT(gr_set_log_callback(watch_restart, NULL) == 0);
        EXPECT(gr_set_executable("/bin/sleep", never_ready) == 0);
        EXPECT(gr_set_ready_timeout_ms(3000) == 0);
        EXPECT(gr_ready() == 0);
        EXPECT(settled_thread_masks(SIGUSR2) >= 1);
        EXPECT(kill(getpid(), SIGUSR2) == 0);
        EXPECT(next_restart_line() == 'r'); /* the watcher runs the restart */
        EXPECT(gr_set_signal(SIGHUP) == 0);
        EXPECT(kill(getpid(), SIGUSR2) == 0); /* the watcher still takes it */
        EXPECT(gr_set_signal(SIGUSR1) == 0);
        signal(SIGHUP, own_handler); /* the application's own, while grestart still holds it */
        EXPECT(next_restart_line() == 'f'); /* the successor's ready timeout */
        EXPECT(settled_thread_masks(SIGUSR1) >= 1); /* the watcher now blocks SIGUSR2 */
        EXPECT(gr_set_stop_signal(SIGTERM) == 0); /* and has given it back (it waits for that) */
        struct sigaction now;
        EXPECT(sigaction(SIGUSR2, NULL, &now) == 0 && now.sa_handler == SIG_DFL);
        EXPECT(sigaction(SIGHUP, NULL, &now) == 0 && now.sa_handler == own_handler);
        EXPECT(kill(getpid(), SIGUSR2) == 0);
        struct timespec bound = {2, 0};
        EXPECT(sigtimedwait(&waited, NULL, &bound) == SIGUSR2);
        EXPECT(__atomic_load_n(&coalesced, __ATOMIC_SEQ_CST) == 1);
    } else if (strcmp(scenario, "stop-changed-in-restart") == 0) {
        EXPECT(pipe(restart_log) == 0);
        EXPECT(gr_set_log_callback(watch_restart, NULL) == 0);
        EXPECT(gr_set_executable("/bin/sleep", never_ready) == 0);
        EXPECT(gr_set_ready_timeout_ms(3000) == 0);
        EXPECT(gr_ready() == 0);
        EXPECT(gr_set_stop_signal(SIGTERM) == 0);
        EXPECT(kill(getpid(), SIGUSR2) == 0);
        EXPECT(next_restart_line() == 'r');
        EXPECT(gr_set_stop_signal(0) == 0);
        EXPECT(kill(getpid(), SIGTERM) == 0); /* still stops: the restart is not over */
        EXPECT(gr_wait_shutdown(2000) == 1);  /* the restart gave up for it, at once */
        EXPECT(gr_shutdown() == 0);
    } else if (strcmp(scenario, "signal-before-start") == 0) {
        signal(SIGUSR2, SIG_DFL); /* as a shell starts it, whatever started this */
        execl("/proc/self/exe", argv[0], "signal-before-start-exec", scratch, (char *)NULL);
        EXPECT(0); /* exec failed */
    } else if (strcmp(scenario, "signal-before-start-as-heir") == 0) {
        /* As a grestart parent execs its successor: the restart signal ignored. */
        signal(SIGUSR2, SIG_IGN);
        pose_as_heir();
        setenv("GRESTART_SIGNAL", "12", 1);
        setenv("GRESTART_IGNORED", "0", 1); /* the first generation ignored none */
        execl("/proc/self/exe", argv[0], "signal-before-start-exec", scratch, (char *)NULL);
        EXPECT(0); /* exec failed */
    } else if (strcmp(scenario, "signal-before-start-exec") == 0) {
        EXPECT(raise(SIGUSR2) == 0); /* before any gr_ call: this process lives on */
        pid_t child = fork();
        if (child == 0) {
            execl("/bin/sh", "sh", "-c", "kill -USR2 $$; exit 3", (char *)NULL);
            _exit(4);
        }
        int status;
        EXPECT(waitpid(child, &status, 0) == child);
        EXPECT(WIFSIGNALED(status) && WTERMSIG(status) == SIGUSR2); /* its default action */
        EXPECT(gr_set_log_callback(count_early, NULL) == 0);
        EXPECT(gr_generation() == 1);
        EXPECT(early_lines == 1);
    } else if (strcmp(scenario, "start-out-of-fds") == 0) {
        int failed_starts = 0, room = 0;
        for (int started = 0; !started && room < 32; room++) {
            pid_t child = fork();
            if (child == 0) {
                start_with_fds_left(room);
            }
            int code = exit_code(child);
            EXPECT(code == 0 || code == 3);
            failed_starts += code == 3;
            started = code == 0;
        }
        fprintf(stderr, "the start needs %d fds\n", room - 1);
        EXPECT(failed_starts == room - 1 && room < 32);
    } else if (strcmp(scenario, "fork-after-failed-start") == 0) {
        struct rlimit before;
        getrlimit(RLIMIT_AS, &before);
        struct rlimit tight = {address_space_now() + (1 << 20), before.rlim_max};
        EXPECT(setrlimit(RLIMIT_AS, &tight) == 0);
        int64_t failed = gr_generation(); /* armed, but no thread to read the pipe */
        EXPECT(setrlimit(RLIMIT_AS, &before) == 0);
        EXPECT(failed < 0);
        int go[2];
        EXPECT(pipe(go) == 0);
        pid_t child = fork();
        if (child == 0) {
            failures = 0;
            alarm(15);
            char byte;
            EXPECT(gr_set_log_callback(watch_for_late_watcher, NULL) == 0);
            EXPECT(gr_generation() == 1);
            EXPECT(settled_thread_masks(SIGUSR2) == 1);
            EXPECT(read(go[0], &byte, 1) == 1); /* the parent's watcher runs too */
            for (int i = 0; i < 10; i++) {
                EXPECT(gr_set_signal(i % 2 ? SIGUSR2 : SIGHUP) == 0);
            }
            EXPECT(__atomic_load_n(&watcher_late, __ATOMIC_SEQ_CST) == 0);
            _exit(failures != 0);
        }
        EXPECT(gr_generation() == 1);
        EXPECT(settled_thread_masks(SIGUSR2) == 1);
        EXPECT(write(go[1], "g", 1) == 1);
        EXPECT(exit_code(child) == 0);
    } else if (strcmp(scenario, "hook-calls-shutdown") == 0) {
        EXPECT(gr_on_shutdown(shutdown_inside, NULL) == 0);
        EXPECT(gr_ready() == 0);
        pthread_create(&thread, NULL, second_caller, NULL);
        EXPECT(gr_shutdown() == 0);
        pthread_join(thread, NULL);
        EXPECT(completed_hooks() == 1);
    } else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    return report("lifecycle");
}
