//! Starting the successor: the fd plan, the spawn, and waiting for "ready".
//!
//! Everything the child needs (argv, envp, the fd plan, scratch space, a stack)
//! is built before the spawn. Between spawn and exec the child runs a short
//! straight line of async-signal-safe system calls and never allocates or takes
//! a lock: another thread of the parent may hold the allocator's lock at that
//! moment, and it would never be released in the child.
//!
//! # A spawn whose cost does not grow with the server's memory
//!
//! A plain `fork` copies the page tables of the whole server (42 ms for 1 GB
//! here, 65 ms for 3 GB) and stalls its serving threads on the memory-map lock
//! meanwhile. The successor is instead created the way glibc's `posix_spawn`
//! and Go create children: `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)`. With
//! `CLONE_VM` nothing is copied: the child runs in the parent's memory, on a
//! stack of its own ([`ChildStack`], mapped before the spawn with a guard page
//! below it), until it execs; `CLONE_VFORK` suspends the calling thread until
//! then, so the stack and the plan outlive the child's use of them. Why that is
//! safe:
//! - the child only reads the prepared plan and writes the scratch space that
//!   was made for it (`lifted`, the `LISTEN_PID=` entry); nothing the parent
//!   reads later is changed, except `errno` of the calling thread, which the
//!   parent does not read after a successful spawn;
//! - every signal is blocked across the spawn, so no handler of the parent can
//!   run on the child's stack; the child resets the dispositions with the raw
//!   system call before it unblocks them, just before `execve`;
//! - the other threads of the parent run on, but the child touches nothing
//!   they own, and exits with `_exit` (one thread group: its own) on failure.
//!
//! A child whose exec does not end (its program on a hung mount) would hold
//! the calling thread for ever: an [`ExecWatch`] kills it at the restart's
//! deadline or when this process is told to stop.
//!
//! Fallbacks, each tested: a `clone3` refused (`ENOSYS` on old kernels, `EPERM`
//! or `ENOSYS` from seccomp profiles) is retried as `clone` with the same
//! flags; when that is refused too, the successor is forked (correct, but
//! paying for the memory again) and its pidfd asked for with `pidfd_open`.

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::mem;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect, munmap};
use nix::sys::resource::{Resource, getrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, socketpair};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use nix::unistd::{SysconfVar, sysconf};

use crate::exec_watch::{ExecWatch, Stage, Why};
use crate::sys::{self, KernelSigaction};

use crate::error::{fail, os_fail, with_context};
use crate::log::{debug, error, warning};
use crate::protocol::{FIRST_FD, LISTEN_PID};

/// What the child tells the parent on the readiness channel.
pub(crate) const READY_BYTE: u8 = b'R';
/// Sent by the child when it cannot exec, followed by a stage byte and the errno.
const FAILED_BYTE: u8 = b'E';
const STAGE_FDS: u8 = 1;
const STAGE_CWD: u8 = 2;
const STAGE_EXEC: u8 = 3;

/// Room for `LISTEN_PID=` and the longest pid, patched in by the child.
const LISTEN_PID_ENTRY: usize = LISTEN_PID.len() + 1 + 20 + 1;

/// Everything the child needs, built before forking.
struct Prepared<'a> {
    exe: &'a CStr,
    cwd: &'a CStr,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
    /// Stable storage for the `LISTEN_PID=` entry that `envp` points at.
    listen_pid: *mut u8,
    /// The fds to pass, in order; the last one is the child's end of the channel.
    sources: Vec<RawFd>,
    /// Scratch space for the fd plan, so the child does not allocate.
    lifted: Vec<RawFd>,
    /// Fallback for `close_range` on kernels before 5.9: close below this.
    fd_limit: RawFd,
    /// The signals the child starts with ignored (bit `signo - 1`); every
    /// other one is at its default.
    ignored: u64,
    /// Whether the channel stays open across exec (a grestart successor says
    /// "ready" on it) or closes there (it only reports a failed exec).
    channel_survives_exec: bool,
}

/// A started successor that has not reported ready yet.
pub(crate) struct Successor {
    pub pid: i32,
    pidfd: OwnedFd,
    /// Our end of the readiness channel.
    pub channel: OwnedFd,
}

/// What the child's end of the channel is for once it runs the program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A grestart successor: it says "ready" on it (fd `3 + listeners`).
    Readiness,
    /// Any other program: the channel closes at exec and only reports a
    /// failed exec; nothing beyond the listeners is passed.
    ExecReport,
}

/// Why a successor did not become ready.
pub(crate) enum NotReady {
    /// It could not even be started, or died, or closed the channel.
    Failed(io::Error),
    /// It is alive but did not report ready in time.
    TimedOut,
    /// This process was told to stop first (`abandon` turned readable).
    Abandoned,
}

/// Forks and execs `exe` with `argv` in `cwd`, passing `listeners` at fds 3..
/// and the other end of a new readiness channel right after them.
///
/// `env` is the successor's environment without `LISTEN_PID`, which the child
/// fills in with its own pid after the fork. Every signal disposition is reset
/// to the default but those in `ignored` (see [`crate::signal::started_ignoring`]),
/// which are ignored.
///
/// With a `watch`, a child whose exec does not end by the watch's deadline
/// (a program on a hung mount), or that the watch is told to abandon, is
/// killed, and the spawn fails.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn(
    exe: &CStr,
    argv: &[CString],
    cwd: &CStr,
    env: &[CString],
    listeners: &[BorrowedFd<'_>],
    ignored: u64,
    purpose: Channel,
    watch: Option<&Arc<ExecWatch>>,
) -> io::Result<Successor> {
    let (ours, theirs) = channel()?;
    let mut listen_pid = [0u8; LISTEN_PID_ENTRY];
    listen_pid[..LISTEN_PID.len()].copy_from_slice(LISTEN_PID.as_bytes());
    listen_pid[LISTEN_PID.len()] = b'=';

    let mut sources: Vec<RawFd> = listeners.iter().map(|fd| fd.as_raw_fd()).collect();
    sources.push(theirs.as_raw_fd());
    let mut plan = Prepared {
        exe,
        cwd,
        argv: argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([ptr::null()])
            .collect(),
        envp: env.iter().map(|e| e.as_ptr()).collect(),
        listen_pid: listen_pid.as_mut_ptr(),
        lifted: vec![-1; sources.len()],
        sources,
        fd_limit: fd_limit(),
        ignored,
        channel_survives_exec: purpose == Channel::Readiness,
    };
    plan.envp.push(plan.listen_pid as *const c_char);
    plan.envp.push(ptr::null());

    let stack = ChildStack::new()?;
    let mut own_slot: c_int = -1;
    let pidfd_slot = match watch {
        Some(watch) => {
            if let Err(e) = watch.start_watchdog() {
                warning!("{e}: a successor whose exec hangs will not be killed");
            }
            watch.pidfd_slot()
        }
        None => &mut own_slot,
    };
    // Block every signal across the spawn so that no handler of the parent
    // (ours writes to the parent's self-pipe) runs in the child, on its stack
    // and in the parent's memory, before the child has reset the dispositions.
    // The child empties its mask just before exec.
    let previous = SigSet::all()
        .thread_swap_mask(SigmaskHow::SIG_SETMASK)
        .map_err(|e| with_context(e.into(), "cannot block signals for the spawn"))?;
    let started = start_child(&mut plan, &stack, pidfd_slot);
    let stage = watch.map(|watch| watch.end());
    if let Err(e) = previous.thread_set_mask() {
        error!("cannot restore the signal mask after the spawn: {e}");
    }
    drop(theirs);
    let (pid, pidfd, how) = started?;
    debug!("successor {pid} spawned with {how}");
    let successor = Successor {
        pid,
        pidfd,
        channel: ours,
    };
    match (stage, watch) {
        (Some(Stage::Killed(why)), Some(watch)) => Err(successor.killed_in_exec(exe, why, watch)),
        _ => Ok(successor),
    }
}

/// The child's own stack for a `CLONE_VM` spawn, with a guard page below it
/// (stacks grow down on every architecture Linux runs grestart on).
struct ChildStack {
    mapping: NonNull<c_void>,
    len: usize,
}

impl ChildStack {
    /// Plenty for `exec_child`'s few hundred bytes of locals and the C
    /// library's system call wrappers.
    const SIZE: usize = 64 * 1024;

    fn new() -> io::Result<ChildStack> {
        let guard = page_size();
        let len = guard + Self::SIZE;
        // SAFETY: a fresh anonymous mapping; nothing else refers to it.
        let mapping = unsafe {
            mmap_anonymous(
                None,
                NonZeroUsize::new(len).expect("non-zero"),
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK,
            )
        }
        .map_err(|e| with_context(e.into(), "cannot map the successor's spawn stack"))?;
        let stack = ChildStack { mapping, len };
        // SAFETY: the first page of our own mapping.
        unsafe { mprotect(mapping, guard, ProtFlags::PROT_NONE) }
            .map_err(|e| with_context(e.into(), "cannot protect the spawn stack's guard page"))?;
        Ok(stack)
    }

    /// The lowest usable address (above the guard page) and the usable size.
    fn usable(&self) -> (*mut c_void, usize) {
        let guard = self.len - Self::SIZE;
        // SAFETY: within the mapping.
        (
            unsafe { self.mapping.as_ptr().cast::<u8>().add(guard).cast() },
            Self::SIZE,
        )
    }

    /// The initial stack pointer: the top, page-aligned and so 16-byte aligned.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, as stacks start.
        unsafe { self.mapping.as_ptr().cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our mapping; CLONE_VFORK returned only after the child left it.
        if let Err(e) = unsafe { munmap(self.mapping, self.len) } {
            warning!("cannot unmap the spawn stack: {e}");
        }
    }
}

fn page_size() -> usize {
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |n| n as usize)
}

/// A connected pair for "ready" (child to parent), "parent gone" (EOF the
/// other way) and handed-over connections (`handover.rs`). A socket rather
/// than a pipe so that writing to a dead peer is an `EPIPE` we can ask not to
/// be signalled for (`MSG_NOSIGNAL`), and fds can travel. A stream: its
/// buffer holds thousands of connections in flight, where a datagram socket
/// queues ten (`net.unix.max_dgram_qlen`).
fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| with_context(e.into(), "cannot create the readiness channel"))
}

fn fd_limit() -> RawFd {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft.min(1 << 20) as RawFd)
}

/// `struct clone_args` of `clone3(2)`; libc only defines it on some targets.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

const VFORK_FLAGS: c_int = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD;

/// Whether a refusal of a spawn method means "try the next one": missing
/// (`ENOSYS`), forbidden by a seccomp profile (`EPERM`), or a flag unknown to
/// this kernel (`EINVAL`).
fn refused(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)
    )
}

/// Starts the child running [`exec_child`] with `plan`; returns its pid, a
/// pidfd for it and the method that worked. See the module comment.
///
/// The pidfd comes from the same system call as the child (`CLONE_PIDFD`) where
/// it can, so it refers to our child even if the application reaps children
/// with `waitpid(-1)` or ignores `SIGCHLD` and the pid is recycled.
///
/// The clone stores the pidfd at `pidfd_slot`, where another thread may use it
/// while the child execs (see [`ExecWatch`]).
fn start_child(
    plan: &mut Prepared<'_>,
    stack: &ChildStack,
    pidfd_slot: *mut c_int,
) -> io::Result<(i32, OwnedFd, &'static str)> {
    let arg = (plan as *mut Prepared<'_>).cast::<c_void>();

    #[cfg(target_arch = "x86_64")]
    {
        let (base, size) = stack.usable();
        let args = CloneArgs {
            flags: VFORK_FLAGS as u64,
            pidfd: pidfd_slot as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: base as u64,
            stack_size: size as u64,
            ..CloneArgs::default()
        };
        // SAFETY: `args` describes our own stack mapping, which outlives the
        // child's use of it (CLONE_VFORK); `child_entry` never returns.
        let pid = unsafe { clone3_on_stack(&args, child_entry, arg) };
        if pid > 0 {
            // SAFETY: CLONE_PIDFD stored a new close-on-exec pidfd only we
            // hold. A watch may still signal through it, but it is not closed
            // before `spawn` has ended the watch's use of it.
            let pidfd = unsafe { OwnedFd::from_raw_fd(*pidfd_slot) };
            return Ok((pid as i32, pidfd, "clone3"));
        }
        let err = io::Error::from_raw_os_error((-pid) as i32);
        if !refused(&err) {
            return Err(with_context(err, "cannot start the successor (clone3)"));
        }
        debug!("clone3 refused ({err}); trying clone");
    }

    // SAFETY: the C library's clone runs `child_entry(arg)` on the top of our
    // stack mapping; with CLONE_PIDFD the pidfd is stored where `parent_tid`
    // points. CLONE_VFORK keeps the stack and the plan alive until exec.
    let pid = unsafe {
        libc::clone(
            child_entry,
            stack.top(),
            VFORK_FLAGS | libc::SIGCHLD,
            arg,
            pidfd_slot,
        )
    };
    if pid > 0 {
        // SAFETY: as for clone3 above.
        let pidfd = unsafe { OwnedFd::from_raw_fd(*pidfd_slot) };
        return Ok((pid, pidfd, "clone"));
    }
    let err = io::Error::last_os_error();
    if !refused(&err) {
        return Err(with_context(err, "cannot start the successor (clone)"));
    }
    debug!("clone with CLONE_VM|CLONE_VFORK refused ({err}); forking instead");
    fork_with_pidfd(plan)
}

/// The child's entry point on its own stack: [`exec_child`], which never returns.
extern "C" fn child_entry(plan: *mut c_void) -> c_int {
    // SAFETY: `plan` is the `Prepared` that `start_child` passed, alive
    // (CLONE_VFORK) and ours alone until the exec.
    unsafe { exec_child(&mut *plan.cast::<Prepared<'_>>()) }
}

/// `clone3` whose child starts on the stack `args` describes and runs
/// `entry(arg)`. The system call itself is fine to make, but its child returns
/// from it on a stack with no frame to return to: it must be sent straight to
/// `entry`, which is what this does (as glibc's internal `__clone3` does).
/// Returns the child's pid, or a negative errno.
///
/// # Safety
/// `args` must carry `CLONE_VM` with a valid stack, and `entry` must never
/// return (it execs or exits).
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(
    args: &CloneArgs,
    entry: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> isize {
    let result: isize;
    // SAFETY: per this function's contract. In the child every register but
    // rax (0), rcx and r11 keeps its value and rsp is the new stack's top,
    // 16-byte aligned as a call requires; the parent falls through to 2.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => result,
            in("rdi") args as *const CloneArgs,
            in("rsi") mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}

/// The last resort: a plain fork (the child runs [`exec_child`] on a copy of
/// our memory), then a pidfd. The child cannot be reaped by anyone before it
/// execs, so the pid still names it when `pidfd_open` runs.
fn fork_with_pidfd(plan: &mut Prepared<'_>) -> io::Result<(i32, OwnedFd, &'static str)> {
    // SAFETY: plain fork; the child only runs exec_child, async-signal-safe.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; `plan` was built before.
        unsafe { exec_child(plan) }
    }
    if pid < 0 {
        return Err(os_fail("cannot fork the successor"));
    }
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = os_fail("pidfd_open (grestart needs Linux 5.3 or later)");
        // The child is ours and not reaped yet: its pid cannot have been reused.
        let child = Pid::from_raw(pid);
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(err);
    }
    // SAFETY: pidfd_open returned a new close-on-exec fd that only we hold.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }, "fork"))
}

/// The child between fork and exec. Only async-signal-safe system calls, and
/// nothing that can panic (no unwinding in a child that shares our memory).
///
/// # Safety
/// Must be called only in a freshly forked child, with `plan` built before the fork.
unsafe fn exec_child(plan: &mut Prepared<'_>) -> ! {
    // Handlers are reset by exec anyway, but ignored signals stay ignored.
    // The successor starts with the dispositions the first generation was
    // started with: what was ignored then (SIGPIPE under systemd, SIGHUP
    // under nohup) is ignored, everything else (what the application ignored
    // since, the parent's handlers) at its default. And the restart signal is
    // ignored until the successor's grestart installs its handler, so that a
    // restart signal sent to every process of the service cannot kill a
    // successor that is still starting.
    let default = KernelSigaction::default(); // SIG_DFL, no flags, empty mask
    let ignore = KernelSigaction {
        handler: libc::SIG_IGN,
        ..KernelSigaction::default()
    };
    for signo in sys::SIGNALS.filter(|&s| s != libc::SIGKILL && s != libc::SIGSTOP) {
        let action = if plan.ignored >> (signo - 1) & 1 == 1 {
            &ignore
        } else {
            &default
        };
        sys::set_disposition(signo, action);
    }

    // First lift every fd above the target range, so that moving one into
    // place never overwrites another that is still to be moved; dup2 onto the
    // target then also clears close-on-exec, which a lifted fd never equals
    // (dup2 of an fd onto itself would keep the flag). The last source is
    // the child's end of the channel, where failures are reported.
    let Some(&(mut report_fd)) = plan.sources.last() else {
        // SAFETY: _exit ends this child only.
        unsafe { libc::_exit(127) }
    };
    let count = plan.sources.len() as RawFd;
    let above = FIRST_FD + count;
    for (lifted, &source) in plan.lifted.iter_mut().zip(&plan.sources) {
        // SAFETY: fcntl on an fd of the plan.
        *lifted = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if *lifted < 0 {
            // SAFETY: report_fd is the channel, open in this child.
            unsafe { child_failed(report_fd, STAGE_FDS) }
        }
    }
    for (target, &lifted) in (FIRST_FD..).zip(&plan.lifted) {
        // SAFETY: dup2 of an fd we just made onto a number we own in the child.
        if unsafe { libc::dup2(lifted, target) } < 0 {
            // SAFETY: as above.
            unsafe { child_failed(report_fd, STAGE_FDS) }
        }
    }
    report_fd = above - 1;
    if !plan.channel_survives_exec {
        // SAFETY: fcntl on the channel's new number.
        unsafe { libc::fcntl(report_fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Nothing else of the parent's leaks into the successor.
    // SAFETY: close_range closes this child's copies of the fds only.
    if unsafe { libc::syscall(libc::SYS_close_range, above as u32, u32::MAX, 0) } < 0 {
        for fd in above..plan.fd_limit {
            // SAFETY: as close_range.
            unsafe { libc::close(fd) };
        }
    }

    // SAFETY: `listen_pid` holds LISTEN_PID_ENTRY bytes: the name, `=`, and
    // room for 20 digits and the NUL after them.
    unsafe {
        write_decimal(
            plan.listen_pid.add(LISTEN_PID.len() + 1),
            libc::getpid() as u32,
        )
    };

    // SAFETY: chdir with the NUL-terminated path the plan borrows.
    if unsafe { libc::chdir(plan.cwd.as_ptr()) } < 0 {
        // SAFETY: report_fd is the channel at its new number.
        unsafe { child_failed(report_fd, STAGE_CWD) }
    }
    // A fork from a thread that blocks signals would otherwise hand the
    // successor a blocked SIGTERM.
    let empty = SigSet::empty();
    // SAFETY: sigprocmask with a valid set, in this single-threaded child.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), ptr::null_mut()) };
    // SAFETY: the program's path, and argv and envp as NULL-terminated
    // arrays of NUL-terminated strings, all built before the fork.
    unsafe { libc::execve(plan.exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr()) };
    // SAFETY: as above.
    unsafe { child_failed(report_fd, STAGE_EXEC) }
}

/// Writes `n` in decimal and a NUL at `out`, which has room for 21 bytes.
///
/// # Safety
/// `out` must be valid for 21 bytes of writes.
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        // SAFETY: at most 10 digits and the NUL, within the caller's 21 bytes.
        unsafe { *out.add(i) = digits[len - 1 - i] };
    }
    // SAFETY: as above.
    unsafe { *out.add(len) = 0 };
}

/// Tells the parent which step failed with which errno, then exits.
///
/// # Safety
/// Only in the child, before exec: it ends the process.
unsafe fn child_failed(report_fd: RawFd, stage: u8) -> ! {
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let mut message = [FAILED_BYTE, stage, 0, 0, 0, 0];
    message[2..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: send of a local buffer; a closed or broken channel only fails.
    unsafe {
        libc::send(
            report_fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    // SAFETY: _exit ends this child only, running nothing of the parent's.
    unsafe { libc::_exit(127) }
}

impl Successor {
    /// Waits until the successor reports ready, exits, or `deadline` passes,
    /// or one of `abandon` turns readable (this process must stop: a successor that
    /// becomes ready now would serve on after its parent was told to stop).
    /// Ready, what it said after "ready" (that it adopts handed-over
    /// connections, `handover.rs`).
    pub(crate) fn wait_ready(
        &self,
        exe: &CStr,
        deadline: Instant,
        abandon: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, NotReady> {
        let mut listening = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotReady::TimedOut);
            }
            let wait = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            // The exit, the stop, and the channel while it can still say
            // "ready" (after that only the exit counts).
            let mut fds: Vec<PollFd<'_>> = [self.pidfd.as_fd()]
                .into_iter()
                .chain(abandon.iter().copied())
                .chain(listening.then(|| self.channel.as_fd()))
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            let stops = 1..1 + abandon.len();
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // We can no longer tell whether it becomes ready: it must
                    // not serve behind our back, nor stay a zombie.
                    let status = self.kill();
                    return Err(NotReady::Failed(with_context(
                        e.into(),
                        format!(
                            "cannot wait for successor {}; killed it, it {status}",
                            self.pid
                        ),
                    )));
                }
            }
            let exited = fds[0].any() == Some(true);
            if fds[stops.clone()].iter().any(|fd| fd.any() == Some(true)) {
                // Before "ready": the stop wins even over a successor that
                // says it at the same moment.
                return Err(NotReady::Abandoned);
            }
            if listening && fds[stops.end].any() == Some(true) {
                // The channel speaks first: the child may report an exec error and
                // exit at once, and its message is better than its exit status.
                let mut message = [0u8; 6];
                let got = recv(
                    self.channel.as_raw_fd(),
                    &mut message,
                    MsgFlags::MSG_DONTWAIT,
                )
                .unwrap_or(0);
                return match (got, message[0]) {
                    // A successor that said "ready" and died (a crash right
                    // after gr_ready) serves nobody: we must not drain for it.
                    (1.., READY_BYTE) if self.has_exited() => Err(NotReady::Failed(fail(
                        libc::ECHILD,
                        format!(
                            "successor {} said it was ready, then {}",
                            self.pid,
                            self.reap()
                        ),
                    ))),
                    (1.., READY_BYTE) => Ok(message[1..got].to_vec()),
                    (6, FAILED_BYTE) => Err(NotReady::Failed(self.exec_failed(exe, &message))),
                    // EOF or garbage: the channel can no longer say "ready" (the
                    // successor may have closed it on purpose, like a daemon closing
                    // every fd). Stop listening to it and wait for the successor's
                    // exit or the timeout; reaping now could block on a live child.
                    _ => {
                        listening = false;
                        continue;
                    }
                };
            }
            if exited {
                return Err(NotReady::Failed(self.died()));
            }
        }
    }

    /// Decodes the child's report that it could not exec, and reaps it (it
    /// `_exit`s right after reporting: never leave a zombie).
    fn exec_failed(&self, exe: &CStr, message: &[u8; 6]) -> io::Error {
        let errno = i32::from_ne_bytes([message[2], message[3], message[4], message[5]]);
        let what = match message[1] {
            STAGE_FDS => "could not place the listener fds".to_string(),
            STAGE_CWD => "could not enter the working directory".to_string(),
            _ => format!("could not execute {}", exe.to_string_lossy()),
        };
        let reason = io::Error::from_raw_os_error(errno);
        let status = self.reap();
        fail(
            errno,
            format!("successor {}: {what}: {reason}; it {status}", self.pid),
        )
    }

    /// For a [`Channel::ExecReport`] spawn: the error when the program could
    /// not be executed. The spawn returns once the child has exec'd or failed
    /// (`CLONE_VFORK`), so the report, if any, is already there.
    pub(crate) fn exec_error(&self, exe: &CStr) -> Option<io::Error> {
        let mut message = [0u8; 6];
        let got = recv(
            self.channel.as_raw_fd(),
            &mut message,
            MsgFlags::MSG_DONTWAIT,
        );
        match got {
            Ok(6) if message[0] == FAILED_BYTE => Some(self.exec_failed(exe, &message)),
            _ => None,
        }
    }

    /// Whether the successor has exited (its pidfd is readable), now.
    fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
    }

    /// Kills a successor that will never be ready, and reaps it.
    pub(crate) fn kill(&self) -> String {
        // Already gone (ESRCH) is fine: the reap follows either way.
        let _ = sys::pidfd_signal(self.pidfd.as_fd(), libc::SIGKILL);
        self.reap()
    }

    /// The error for a successor its [`ExecWatch`] killed before its exec ended.
    fn killed_in_exec(&self, exe: &CStr, why: Why, watch: &ExecWatch) -> io::Error {
        let status = self.kill();
        let exe = exe.to_string_lossy();
        match why {
            Why::TimedOut => fail(
                libc::ETIMEDOUT,
                format!(
                    "successor {} had not finished its exec of {exe} within the ready timeout \
                     of {:?} (a hung file system?); killed it, it {status}",
                    self.pid,
                    watch.timeout()
                ),
            ),
            Why::Abandoned => fail(
                libc::ESHUTDOWN,
                format!(
                    "this process was told to stop while successor {} was executing {exe}; \
                     killed it, it {status}",
                    self.pid
                ),
            ),
        }
    }

    /// The error for a successor that died (or closed the channel) before ready.
    fn died(&self) -> io::Error {
        let status = self.reap();
        fail(
            libc::ECHILD,
            format!("successor {} {status} before it was ready", self.pid),
        )
    }

    /// Waits for the successor to exit and says how it ended. It never stays a zombie.
    fn reap(&self) -> String {
        loop {
            return match waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED) {
                Ok(WaitStatus::Exited(_, status)) => format!("exited with status {status}"),
                Ok(WaitStatus::Signaled(_, signal, true)) => {
                    format!("was killed by signal {} (core dumped)", signal as i32)
                }
                Ok(WaitStatus::Signaled(_, signal, false)) => {
                    format!("was killed by signal {}", signal as i32)
                }
                Ok(other) => format!("ended ({other:?})"),
                Err(Errno::EINTR) => continue,
                // The application reaps children itself or ignores SIGCHLD.
                Err(Errno::ECHILD) => "exited (its status was collected elsewhere)".to_string(),
                Err(e) => format!("could not be waited for ({e})"),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_pid_fits_in_place() {
        let mut buf = [b'x'; 21];
        for (n, text) in [
            (0u32, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (u32::MAX, "4294967295"),
        ] {
            // SAFETY: `buf` has the 21 bytes write_decimal may write.
            unsafe { write_decimal(buf.as_mut_ptr(), n) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(&buf[..end], text.as_bytes());
        }
    }
}
