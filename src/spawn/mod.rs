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
//!
//! The parts, in the order a spawn runs them: the plan and [`spawn`] are
//! here; the child's stack and the `clone3`, `clone` and `fork` methods are in
//! `clone.rs`; the child's straight line from the spawn to `execve` is in
//! `child.rs`; the started [`Successor`] (waiting for "ready", killing,
//! reaping) is in `successor.rs`.

mod child;
mod clone;
mod successor;

use std::ffi::{CStr, CString, c_char, c_int};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::Arc;

use nix::sys::resource::{Resource, getrlimit};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

use crate::error::with_context;
use crate::exec_watch::{ExecWatch, Stage};
use crate::log::{debug, error, warning};
use crate::protocol::LISTEN_PID;
use clone::{ChildStack, start_child};

pub(crate) use successor::{NotReady, Successor};

/// What the child tells the parent on the readiness channel.
pub(crate) const READY_BYTE: u8 = b'R';

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

/// What the child's end of the channel is for once it runs the program.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// A grestart successor: it says "ready" on it (fd `3 + listeners`).
    Readiness,
    /// Any other program: the channel closes at exec and only reports a
    /// failed exec; nothing beyond the listeners is passed.
    ExecReport,
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

/// A connected pair for "ready" (child to parent), "parent gone" (EOF the
/// other way) and handed-over connections (`handover/`). A socket rather
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
