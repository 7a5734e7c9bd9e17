/* seccomp_exec [--no-vfork] PROGRAM ARGS...: runs PROGRAM under a seccomp
 * filter that answers EPERM to clone3, as the seccomp profiles of some
 * container runtimes do; with --no-vfork also to clone with CLONE_VM (a
 * vfork-style spawn), leaving only fork. The filter is inherited by every
 * process PROGRAM starts.
 *
 * glibc's own thread creation also uses clone3 and gives up on EPERM (it
 * falls back only on ENOSYS), so on a C library that predates clone3, only a
 * direct clone3 call would meet the refusal. To keep threads working here the
 * filter lets through clone3 calls whose size argument is glibc's struct
 * clone_args (88 bytes) and refuses every other clone3.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define THIS_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define THIS_ARCH AUDIT_ARCH_AARCH64
#else
#error "add this architecture's AUDIT_ARCH_ value"
#endif

#define GLIBC_CLONE_ARGS_SIZE 88

#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
#define REFUSE BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA))

int main(int argc, char **argv) {
    int no_vfork = argc > 1 && strcmp(argv[1], "--no-vfork") == 0;
    argv += no_vfork;
    argc -= no_vfork;
    if (argc < 2) {
        fprintf(stderr, "usage: seccomp_exec [--no-vfork] PROGRAM ARGS...\n");
        return 2;
    }
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, THIS_ARCH, 1, 0),
        ALLOW,
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone3, 0, 4),
        /* clone3: glibc's own (threads) passes, any other is refused */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[1])),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, GLIBC_CLONE_ARGS_SIZE, 1, 0),
        REFUSE,
        ALLOW,
        /* clone: with --no-vfork, refused when its flags (args[0]) share memory */
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_clone, 0, 3),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])),
        BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, no_vfork ? CLONE_VM : 0, 0, 1),
        REFUSE,
        ALLOW,
    };
    struct sock_fprog program = {.len = sizeof filter / sizeof filter[0], .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) < 0) {
        perror("seccomp_exec: installing the filter");
        return 1;
    }
    execvp(argv[1], argv + 1);
    perror("seccomp_exec: exec");
    return 127;
}
