//! The restart signal: a handler that only writes to a self-pipe, and a
//! watcher thread that reads the pipe and runs the restart outside of signal
//! context, where it may allocate, lock and fork.
//!
//! A successor is started with the restart signal *ignored* (an ignored signal
//! stays ignored across exec), so that `systemctl kill -s USR2` or `pkill -USR2`
//! during a restart cannot kill a successor that is still starting. Its engine
//! then installs the handler on that same signal; the ignore was ours, so the
//! disposition to give back later is the default, not "ignored".
//!
//! An application may also name a *stop* signal (`gr_set_stop_signal`, e.g.
//! `SIGTERM`): the same handler writes it to the same pipe, and the watcher
//! begins the drain, as when a successor took over. The handler writes the
//! signal's number, so the watcher tells the two apart.

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

/// The restart signal we handle now and the disposition it had before us.
static INSTALLED: Mutex<Option<(c_int, libc::sigaction)>> = Mutex::new(None);
/// The stop signal, if the application chose one, and its disposition before us.
static STOP: Mutex<Option<(c_int, libc::sigaction)>> = Mutex::new(None);
/// The stop signal's number for the handler (0: none).
static STOP_SIGNO: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: c_int) {
    // Async-signal-safe: one write to a non-blocking pipe, or in a forked
    // child sigaction and raise. A full pipe already holds a pending request,
    // so dropping the byte is the coalescing we want.
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // does not see our write's errno.
    unsafe {
        if libc::getpid() != OWNER.load(Ordering::Relaxed) {
            // A forked worker: a restart signal is not for it, but a stop
            // signal (SIGTERM) must still end it as it would without us.
            if signo == STOP_SIGNO.load(Ordering::Relaxed) {
                libc::signal(signo, libc::SIG_DFL);
                libc::raise(signo);
            }
            return;
        }
        let errno = *libc::__errno_location();
        let byte = signo as u8;
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

/// The stop signal, 0 when there is none.
pub(crate) fn stop_signal() -> c_int {
    STOP_SIGNO.load(Ordering::Relaxed)
}

/// Makes `signo` the restart signal, giving the previous one back its old disposition.
pub(crate) fn install(signo: c_int) -> io::Result<()> {
    check(signo)?;
    if signo == STOP_SIGNO.load(Ordering::Relaxed) {
        return Err(fail(
            libc::EINVAL,
            format!("signal {signo} is the stop signal; it cannot restart too"),
        ));
    }
    replace(&INSTALLED, Some(signo))
}

/// Makes `signo` the stop signal (`None`: no stop signal), giving the previous
/// one back its old disposition.
pub(crate) fn install_stop(signo: Option<c_int>) -> io::Result<()> {
    if let Some(signo) = signo {
        check(signo)?;
        if signo == current() {
            return Err(fail(
                libc::EINVAL,
                format!("signal {signo} is the restart signal; it cannot stop too"),
            ));
        }
    }
    replace(&STOP, signo)?;
    STOP_SIGNO.store(signo.unwrap_or(0), Ordering::Relaxed);
    Ok(())
}

/// Installs our handler on `signo` (none: just give back) in `slot`, giving
/// the signal held there before back the disposition it had before us.
fn replace(slot: &Mutex<Option<(c_int, libc::sigaction)>>, signo: Option<c_int>) -> io::Result<()> {
    let mut installed = slot.lock().unwrap_or_else(|e| e.into_inner());
    if installed.map(|(current, _)| current) == signo {
        return Ok(());
    }
    let Some(signo) = signo else {
        give_back(installed.take());
        return Ok(());
    };
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
    give_back(installed.take());
    *installed = Some((signo, previous));
    Ok(())
}

/// Restores the disposition a signal had before we installed our handler.
fn give_back(held: Option<(c_int, libc::sigaction)>) {
    if let Some((signo, previous)) = held {
        // SAFETY: restoring a disposition sigaction gave us earlier.
        unsafe { libc::sigaction(signo, &previous, ptr::null_mut()) };
    }
}

/// What arrived on the self-pipe since it was last read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Arrivals {
    /// How many restart signals (a storm of them is one request).
    pub restarts: usize,
    /// Whether the stop signal came.
    pub stop: bool,
}

/// Blocks until a signal arrived at least once, and swallows every arrival since.
pub(crate) fn wait(pipe: &OwnedFd) -> Arrivals {
    // EINTR and spurious wake-ups only loop again.
    while !matches!(
        poll(
            &mut [PollFd::new(pipe.as_fd(), PollFlags::POLLIN)],
            PollTimeout::NONE
        ),
        Ok(1..)
    ) {}
    drain(pipe)
}

/// Reads away every pending byte of the pipe.
pub(crate) fn drain(pipe: &OwnedFd) -> Arrivals {
    let mut buf = [0u8; 256];
    let mut arrivals = Arrivals::default();
    let stop = STOP_SIGNO.load(Ordering::Relaxed);
    // The pipe is non-blocking: EAGAIN once it is empty.
    while let Ok(n @ 1..) = read(pipe.as_fd(), &mut buf) {
        for &byte in &buf[..n] {
            if stop != 0 && c_int::from(byte) == stop {
                arrivals.stop = true;
            } else {
                arrivals.restarts += 1;
            }
        }
    }
    arrivals
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
