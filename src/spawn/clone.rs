//! Starting the child on a stack of its own: `clone3`, then `clone`, then
//! `fork` (see the module comment of `spawn` for why each is safe).

use std::ffi::{c_int, c_void};
use std::io;
use std::mem;
use std::num::NonZeroUsize;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect, munmap};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use nix::unistd::{SysconfVar, sysconf};

use super::Prepared;
use super::child::exec_child;
use crate::error::{os_fail, with_context};
#[cfg(doc)]
use crate::exec_watch::ExecWatch; // the doc comments link to it
use crate::log::{debug, warning};

/// The child's own stack for a `CLONE_VM` spawn, with a guard page below it
/// (stacks grow down on every architecture Linux runs grestart on).
pub(super) struct ChildStack {
    mapping: NonNull<c_void>,
    len: usize,
}

impl ChildStack {
    /// Plenty for `exec_child`'s few hundred bytes of locals and the C
    /// library's system call wrappers.
    const SIZE: usize = 64 * 1024;

    pub(super) fn new() -> io::Result<ChildStack> {
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
pub(super) fn start_child(
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
