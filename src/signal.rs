//! The restart signal: a handler that only writes to a self-pipe, and a
//! watcher thread that reads the pipe and runs the restart outside of signal
//! context, where it may allocate, lock and fork.

use std::ffi::c_int;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{fail, os_fail};

/// The write end of the self-pipe; the handler's only state.
static WAKE: AtomicI32 = AtomicI32::new(-1);

/// The signal we handle now and the disposition it had before us.
static INSTALLED: Mutex<Option<(c_int, libc::sigaction)>> = Mutex::new(None);

extern "C" fn on_signal(_signo: c_int) {
    // Async-signal-safe: one write to a non-blocking pipe. A full pipe already
    // holds a pending request, so dropping the byte is the coalescing we want.
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // does not see our write's errno.
    unsafe {
        let errno = *libc::__errno_location();
        let byte = 1u8;
        libc::write(WAKE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1);
        *libc::__errno_location() = errno;
    }
}

/// Says why `signo` cannot be the restart signal, if it cannot.
pub(crate) fn check(signo: c_int) -> io::Result<()> {
    let max = libc::SIGRTMAX();
    let problem = match signo {
        libc::SIGKILL | libc::SIGSTOP => "cannot be caught",
        libc::SIGSEGV
        | libc::SIGBUS
        | libc::SIGILL
        | libc::SIGFPE
        | libc::SIGTRAP
        | libc::SIGSYS => "reports a fault of the program itself",
        s if s < 1 || s > max => "is not a signal number",
        s if s > 31 && s < libc::SIGRTMIN() => "is reserved by the C library",
        _ => return Ok(()),
    };
    Err(fail(
        libc::EINVAL,
        format!("signal {signo} {problem}; choose e.g. SIGUSR2 or SIGHUP"),
    ))
}

/// Creates the self-pipe, returning its read end for the watcher.
pub(crate) fn self_pipe() -> io::Result<OwnedFd> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` has room for the two fds pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(os_fail("cannot create the signal pipe"));
    }
    // The write end lives as long as the process: the handler may run at any time.
    WAKE.store(fds[1], Ordering::Relaxed);
    // SAFETY: pipe2 succeeded; the read end is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fds[0]) })
}

/// Makes `signo` the restart signal, giving the previous one back its old disposition.
pub(crate) fn install(signo: c_int) -> io::Result<()> {
    check(signo)?;
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*installed, Some((current, _)) if current == signo) {
        return Ok(());
    }
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(c_int) as usize;
    // SA_RESTART: the application's blocking calls must not fail with EINTR
    // just because an operator asked for a restart.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a valid sigset to empty.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    let mut previous: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: valid sigaction structs; the handler is async-signal-safe.
    if unsafe { libc::sigaction(signo, &action, &mut previous) } < 0 {
        return Err(os_fail(format!(
            "cannot install a handler for signal {signo}"
        )));
    }
    if let Some((old, old_previous)) = installed.take() {
        // SAFETY: restoring a disposition sigaction gave us earlier.
        unsafe { libc::sigaction(old, &old_previous, ptr::null_mut()) };
    }
    *installed = Some((signo, previous));
    Ok(())
}

/// Blocks until the restart signal arrived at least once, and swallows every
/// arrival since (a storm of signals is one request).
pub(crate) fn wait(pipe: &OwnedFd) {
    let mut poll = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; EINTR and spurious wake-ups only loop again.
    while unsafe { libc::poll(&mut poll, 1, -1) } < 1 {}
    drain(pipe);
}

/// Reads away every pending byte of the pipe, returning how many there were.
pub(crate) fn drain(pipe: &OwnedFd) -> usize {
    let mut buf = [0u8; 256];
    let mut total = 0;
    loop {
        // SAFETY: reading into a local buffer from our non-blocking pipe.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_catchable_non_fault_signals() {
        for good in [
            libc::SIGUSR1,
            libc::SIGUSR2,
            libc::SIGHUP,
            libc::SIGTERM,
            libc::SIGRTMIN() + 1,
        ] {
            assert!(check(good).is_ok(), "{good}");
        }
        for bad in [
            0,
            -1,
            32,
            65,
            99,
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
        ] {
            let err = check(bad).unwrap_err();
            assert_eq!(crate::error::errno_of(&err), libc::EINVAL, "{bad}");
        }
    }
}
