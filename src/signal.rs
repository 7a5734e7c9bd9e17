//! The restart signal: a handler that only writes to a self-pipe, and a
//! watcher thread that reads the pipe and runs the restart outside of signal
//! context, where it may allocate, lock and fork.
//!
//! A successor is started with the restart signal *ignored* (an ignored signal
//! stays ignored across exec), so that `systemctl kill -s USR2` or `pkill -USR2`
//! during a restart cannot kill a successor that is still starting. Its engine
//! then installs the handler on that same signal; the ignore was ours, so the
//! disposition to give back later is the default, not "ignored".

use std::ffi::c_int;
use std::io;
use std::mem;
use std::os::fd::{AsFd, IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::unistd::{pipe2, read};

use crate::error::{fail, os_fail, with_context};

/// The write end of the self-pipe; the handler's only state with [`OWNER`].
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The process that installed the handler. A process it forks (a prefork
/// worker) inherits the handler and the pipe, but a signal sent to a worker is
/// not a request to restart its master.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The signal we handle now and the disposition it had before us.
static INSTALLED: Mutex<Option<(c_int, libc::sigaction)>> = Mutex::new(None);

extern "C" fn on_signal(_signo: c_int) {
    // Async-signal-safe: one write to a non-blocking pipe. A full pipe already
    // holds a pending request, so dropping the byte is the coalescing we want.
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // does not see our write's errno.
    unsafe {
        if libc::getpid() != OWNER.load(Ordering::Relaxed) {
            return;
        }
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

/// Creates the self-pipe: (read end for the watcher, write end for [`arm`]).
pub(crate) fn self_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
        .map_err(|e| with_context(e.into(), "cannot create the signal pipe"))
}

/// Points the handler at `wake`, for this process, and installs it on `signo`.
/// `inherited`: this process was started with `signo` ignored by its parent's
/// grestart (see the module comment).
pub(crate) fn arm(wake: OwnedFd, signo: c_int, inherited: bool) -> io::Result<()> {
    // The write end lives as long as the process: the handler may run at any time.
    WAKE.store(wake.into_raw_fd(), Ordering::Relaxed);
    OWNER.store(std::process::id() as i32, Ordering::Relaxed);
    install(signo)?;
    if inherited {
        let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, previous)) = installed.as_mut() {
            if previous.sa_sigaction == libc::SIG_IGN {
                previous.sa_sigaction = libc::SIG_DFL;
            }
        }
    }
    Ok(())
}

/// The restart signal now (`SIGUSR2` until the engine started or the
/// application chose another).
pub(crate) fn current() -> c_int {
    let installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    installed
        .as_ref()
        .map_or(libc::SIGUSR2, |(signo, _)| *signo)
}

/// Makes `signo` the restart signal, giving the previous one back its old disposition.
pub(crate) fn install(signo: c_int) -> io::Result<()> {
    check(signo)?;
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*installed, Some((current, _)) if current == signo) {
        return Ok(());
    }
    // libc's sigaction, not nix's: nix cannot name the real-time signals,
    // which an application may choose as its restart signal.
    // SAFETY: all-zero is a valid `struct sigaction` (SIG_DFL, no flags).
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = on_signal as extern "C" fn(c_int) as usize;
    // SA_RESTART: the application's blocking calls must not fail with EINTR
    // just because an operator asked for a restart.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a valid sigset to empty.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: as above; sigaction fills it.
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
    // EINTR and spurious wake-ups only loop again.
    while !matches!(
        poll(
            &mut [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)],
            PollTimeout::NONE
        ),
        Ok(1..)
    ) {}
    drain(pipe);
}

/// Reads away every pending byte of the pipe, returning how many there were.
pub(crate) fn drain(pipe: &OwnedFd) -> usize {
    let mut buf = [0u8; 256];
    let mut total = 0;
    // The pipe is non-blocking: EAGAIN once it is empty.
    while let Ok(n @ 1..) = read(pipe.as_fd(), &mut buf) {
        total += n;
    }
    total
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
