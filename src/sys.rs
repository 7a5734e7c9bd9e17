//! The small fd and socket questions several modules ask, answered once,
//! through `nix` where it can serve.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{SockType, getsockopt, sockopt};

/// Whether `fd` is an open descriptor. Raw numbers come from the C edge and
/// from the environment, where nothing guarantees they are open.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the flags of whatever `fd` names, if anything.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// Whether `fd` is an open socket.
pub(crate) fn fd_is_socket(fd: RawFd) -> bool {
    // SAFETY: borrowed only for this check, after it was found open.
    fd_is_open(fd) && socket_type(unsafe { BorrowedFd::borrow_raw(fd) }).is_some()
}

/// The socket's type, or `None` when `fd` is not a socket.
pub(crate) fn socket_type(fd: BorrowedFd<'_>) -> Option<SockType> {
    getsockopt(&fd, sockopt::SockType).ok()
}

/// The state of a TCP socket (`TCP_ESTABLISHED` and the kernel's other
/// `TCP_*` states), or `None` when `fd` is no TCP socket: the first byte of
/// its `TCP_INFO`, the only byte asked for.
pub(crate) fn tcp_state(fd: BorrowedFd<'_>) -> Option<u8> {
    let mut state = 0u8;
    let mut len: libc::socklen_t = 1;
    // SAFETY: the kernel writes at most `len` (1) bytes to `state`.
    let got = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut state).cast(),
            &raw mut len,
        )
    };
    (got == 0 && len == 1).then_some(state)
}

/// Whether a stream socket is listening (`SO_ACCEPTCONN`).
pub(crate) fn is_listening(fd: BorrowedFd<'_>) -> bool {
    getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false)
}

/// Whether the other end of a Unix stream socket pair has closed (its
/// process exited): the kernel then reports `POLLHUP`, which poll always
/// returns. (Not `POLLRDHUP`: nix has no name for it, and a flag it cannot
/// name makes it drop the whole answer.)
pub(crate) fn peer_closed(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::ZERO);
    fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
}

/// A pidfd for `pid` (Linux 5.3): it turns readable when that process exits,
/// and never names another process, whatever reuses the pid.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new close-on-exec fd that only we hold.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` has exited.
pub(crate) fn has_exited(pidfd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
}

/// Marks `fd` close-on-exec, so that programs the application launches do
/// not hold it.
pub(crate) fn set_cloexec(fd: &OwnedFd) {
    let _ = fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// Clears `O_NONBLOCK` on `fd` (a flag of the open file, which every
/// process holding it shares).
pub(crate) fn set_blocking(fd: BorrowedFd<'_>) -> nix::Result<()> {
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    if flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// The kernel's `struct sigaction` (not the C library's, which is laid out
/// differently); all zero means `SIG_DFL`. The raw system call, because the C
/// library refuses to touch the signals it reserves (32, 33), which may be
/// ignored too.
#[repr(C)]
#[derive(Default)]
pub(crate) struct KernelSigaction {
    pub handler: usize,
    pub flags: u64,
    pub restorer: usize,
    pub mask: u64,
}

/// The signals, as the kernel numbers them.
pub(crate) const SIGNALS: std::ops::RangeInclusive<i32> = 1..=64;

/// The size of the kernel's signal set (one bit per signal), which
/// `rt_sigaction` wants to be told.
const KERNEL_SIGSET_SIZE: usize = SIGNALS.end().unsigned_abs() as usize / 8;

/// Sets `signo`'s disposition with the raw system call: async-signal-safe,
/// and no C library wrapper in between (nothing of the parent's runs in a
/// spawned child).
pub(crate) fn set_disposition(signo: i32, action: &KernelSigaction) {
    // SAFETY: rt_sigaction reads a kernel sigaction of the size we pass.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signo,
            action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            KERNEL_SIGSET_SIZE,
        )
    };
}

/// Whether `signo` is ignored (`SIG_IGN`) in this process now.
pub(crate) fn is_ignored(signo: i32) -> bool {
    handler_of(signo) == Some(libc::SIG_IGN)
}

/// `signo`'s handler in this process now (`SIG_DFL`, `SIG_IGN` or a
/// function's address); `None` for a number that is no signal.
pub(crate) fn handler_of(signo: i32) -> Option<libc::sighandler_t> {
    let mut now = KernelSigaction::default();
    // SAFETY: rt_sigaction with no new action only writes the current one
    // into `now`, a kernel sigaction of the size we pass.
    let read = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signo,
            std::ptr::null::<KernelSigaction>(),
            &mut now as *mut KernelSigaction,
            KERNEL_SIGSET_SIZE,
        )
    };
    (read == 0).then_some(now.handler)
}

/// Sends `signo` to the process `pidfd` refers to (never a recycled pid).
pub(crate) fn pidfd_signal(pidfd: BorrowedFd<'_>, signo: i32) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd the caller holds, no siginfo.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            signo,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `SIGTERM` to `pid` and waits up to `timeout` for it to exit (a
/// pidfd: the pid cannot be recycled under us); `false` if it is still there.
/// A process already gone counts as stopped.
pub(crate) fn terminate_and_wait(pid: i32, timeout: std::time::Duration) -> std::io::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(true),
            _ => Err(err),
        };
    }
    // SAFETY: a new fd that only we hold.
    let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) };
    if let Err(err) = pidfd_signal(pidfd.as_fd(), libc::SIGTERM) {
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(
            &mut fds,
            PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
        ) {
            Ok(1..) => return Ok(true),
            Ok(_) if left.is_zero() => return Ok(false),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn a_closed_peer_is_seen() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        assert!(!peer_closed(ours.as_fd()));
        drop(theirs);
        assert!(peer_closed(ours.as_fd()));
    }

    #[test]
    fn sockets_and_listening_sockets_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("gr-sys-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixListener::bind(&dir).unwrap();
        let (stream, _) = UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(socket_type(listener.as_fd()), Some(SockType::Stream));
        assert!(is_listening(listener.as_fd()) && !is_listening(stream.as_fd()));
        assert_eq!(socket_type(file.as_fd()), None);
        assert!(fd_is_socket(stream.as_raw_fd()) && !fd_is_socket(file.as_raw_fd()));
        assert!(!fd_is_open(-1));
        std::fs::remove_file(&dir).unwrap();
    }
}
