/* The C ABI seen from C: bad input gets -1, the right errno and a message;
 * never a crash. Built against include/grestart.h by tests/c_abi.rs. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <netinet/in.h>

#include "grestart.h"

#include "expect.h"

/* `call` fails with -1, errno `err` and a non-empty message. */
#define EXPECT_FAIL(call, err)                                                        \
    do {                                                                              \
        errno = 0;                                                                    \
        long long result_ = (call);                                                   \
        int errno_ = errno;                                                           \
        checks++;                                                                     \
        if (result_ != -1 || errno_ != (err) || gr_last_error()[0] == '\0') {         \
            failures++;                                                               \
            fprintf(stderr, "%s:%d: %s returned %lld errno %d (%s), wanted -1 %s\n",    \
                    __FILE__, __LINE__, #call, result_, errno_, gr_last_error(), #err); \
        } else {                                                                      \
            printf("ok: %-55s -> %s: %s\n", #call, #err, gr_last_error());            \
        }                                                                             \
    } while (0)

static int tcp_socket(int listening) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof a);
    if (listening) {
        listen(fd, 16);
    }
    return fd;
}

static int order[3], ran;
static void hook(void *arg) { order[ran++] = *(int *)arg; }

int main(void) {
    EXPECT(strcmp(gr_version(), GR_VERSION) == 0);
    EXPECT(gr_generation() == 1);

    /* fds that cannot be listeners */
    EXPECT_FAIL(gr_register_listener(-1, "web"), EBADF);
    int closed = tcp_socket(1);
    close(closed);
    EXPECT_FAIL(gr_register_listener(closed, "web"), EBADF);
    int file = open("/dev/null", O_RDONLY | O_CLOEXEC);
    EXPECT_FAIL(gr_register_listener(file, "web"), ENOTSOCK);
    int unlistening = tcp_socket(0);
    EXPECT_FAIL(gr_register_listener(unlistening, "web"), EINVAL);

    /* names */
    int listener = tcp_socket(1);
    char long_name[GR_NAME_MAX + 2];
    memset(long_name, 'x', GR_NAME_MAX + 1);
    long_name[GR_NAME_MAX + 1] = '\0';
    EXPECT_FAIL(gr_register_listener(listener, NULL), EINVAL);
    EXPECT_FAIL(gr_register_listener(listener, ""), EINVAL);
    EXPECT_FAIL(gr_register_listener(listener, "a:b"), EINVAL);
    EXPECT_FAIL(gr_register_listener(listener, long_name), EINVAL);
    EXPECT_FAIL(gr_register_listener(listener, "tab\there"), EINVAL);
    long_name[GR_NAME_MAX] = '\0';
    EXPECT(gr_register_listener(listener, long_name) == 0);
    EXPECT(gr_register_listener(listener, "web") == 0);
    EXPECT_FAIL(gr_register_listener(listener, "web"), EEXIST);

    /* a UDP socket is handed over without listening */
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    EXPECT(gr_register_listener(udp, "dns") == 0);

    /* inheritance on a fresh start */
    EXPECT_FAIL(gr_inherit_listener("web"), ENOENT);
    EXPECT_FAIL(gr_inherit_listener(NULL), EINVAL);
    EXPECT_FAIL(gr_inherit_listener("a:b"), EINVAL);

    /* inherit-or-listen */
    EXPECT_FAIL(gr_listen("127.0.0.1:80", NULL), EINVAL);
    EXPECT_FAIL(gr_listen("ftp://127.0.0.1:21", NULL), EINVAL);
    EXPECT_FAIL(gr_listen(NULL, NULL), EINVAL);
    int fresh = gr_listen("tcp://127.0.0.1:0", NULL);
    EXPECT(fresh >= 3);
    EXPECT(fcntl(fresh, F_GETFD) & FD_CLOEXEC);
    EXPECT_FAIL(gr_listen("tcp://127.0.0.1:0", NULL), EEXIST);
    EXPECT_FAIL(gr_listen("tcp://127.0.0.1:0", "web"), EEXIST);

    /* signals */
    EXPECT_FAIL(gr_set_signal(SIGKILL), EINVAL);
    EXPECT_FAIL(gr_set_signal(SIGSTOP), EINVAL);
    EXPECT_FAIL(gr_set_signal(SIGSEGV), EINVAL);
    EXPECT_FAIL(gr_set_signal(0), EINVAL);
    EXPECT_FAIL(gr_set_signal(99), EINVAL);
    EXPECT_FAIL(gr_set_signal(-5), EINVAL);
    EXPECT(gr_set_signal(SIGUSR1) == 0);
    struct sigaction previous;
    sigaction(SIGUSR2, NULL, &previous);
    EXPECT(previous.sa_handler == SIG_DFL); /* SIGUSR2 got its old disposition back */
    EXPECT(gr_set_signal(SIGUSR2) == 0);

    /* settings and callbacks */
    EXPECT_FAIL(gr_set_log_level(9), EINVAL);
    EXPECT(gr_set_log_level(GR_LOG_WARN) == 0);
    EXPECT_FAIL(gr_set_ready_timeout_ms(0), EINVAL);
    EXPECT(gr_set_ready_timeout_ms(5000) == 0);
    EXPECT_FAIL(gr_set_executable(NULL, NULL), EINVAL);
    EXPECT_FAIL(gr_set_pid_file(""), EINVAL);
    EXPECT_FAIL(gr_on_shutdown(NULL, NULL), EINVAL);

    /* lifecycle */
    EXPECT_FAIL(gr_restart(), EAGAIN);
    EXPECT(gr_wait_shutdown(0) == 0);
    int shutdown_fd = gr_shutdown_fd();
    struct pollfd p = {.fd = shutdown_fd, .events = POLLIN};
    EXPECT(poll(&p, 1, 0) == 0);
    int one = 1, two = 2, three = 3;
    EXPECT(gr_on_shutdown(hook, &one) == 0);
    EXPECT(gr_on_shutdown(hook, &two) == 0);
    EXPECT(gr_on_shutdown(hook, &three) == 0);
    EXPECT(gr_ready() == 0);
    EXPECT(gr_ready() == 0);
    EXPECT(gr_shutdown() == 0);
    EXPECT(gr_shutdown() == 0);
    EXPECT(ran == 3 && order[0] == 3 && order[1] == 2 && order[2] == 1);
    EXPECT(poll(&p, 1, 0) == 1);
    EXPECT(gr_wait_shutdown(-1) == 1);
    EXPECT_FAIL(gr_on_shutdown(hook, &one), ESHUTDOWN);
    EXPECT_FAIL(gr_restart(), ESHUTDOWN);
    EXPECT_FAIL(gr_ready(), ESHUTDOWN);
    EXPECT_FAIL(gr_register_listener(listener, "late"), ESHUTDOWN);

    return report("abi_test");
}
