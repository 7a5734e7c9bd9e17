//! The handler, and the restart and stop signals it is installed on.

use std::ffi::c_int;
use std::io;
use std::mem;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use nix::fcntl::OFlag;
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::unistd::pipe2;

use super::start::{arrived_early, bit, is_guard};
use super::watcher::{reclaim, retune_watcher};
use super::{RESTART_BYTE, STOP_BYTE};
use crate::error::{fail, os_fail, with_context};
use crate::log::{self, info};

/// The write end of the self-pipe; the handler's only state with [`OWNER`]
/// and [`STOPPED`].
pub(super) static WAKE: AtomicI32 = AtomicI32::new(-1);
/// The self-pipe's read end, the watcher's. Made with [`WAKE`] once per
/// process ([`MADE_IN`]) and never closed: the handler may write at any
/// time, also while no watcher reads (the engine's start failed after
/// [`arm`]; the next start's watcher reads the pipe).
static PIPE: AtomicI32 = AtomicI32::new(-1);
/// The process that made [`PIPE`], [`WAKE`] and [`STOPPED`]: a process forked
/// from it after a start that failed makes its own, or its watcher and its
/// parent's would read each other's bytes.
static MADE_IN: AtomicI32 = AtomicI32::new(0);
/// An eventfd the handler makes readable when the stop signal arrives: a
/// restart under way gives up for it at once (the watcher, which reads the
/// pipe, is busy with that very restart).
static STOPPED: AtomicI32 = AtomicI32::new(-1);
/// The process that installed the handler. A process it forks (a prefork
/// worker) inherits the handler and the pipe, but a signal sent to a worker is
/// not a request to restart its master.
static OWNER: AtomicI32 = AtomicI32::new(0);

/// The signals we handle, each with the disposition it had before us. One
/// lock for both, so that one signal never becomes the restart and the stop
/// signal at once (two threads choosing the same one each see it free).
struct Handled {
    /// The restart signal; `None` until [`arm`].
    restart: Option<(c_int, libc::sigaction)>,
    /// The stop signal, if the application chose one.
    stop: Option<(c_int, libc::sigaction)>,
}

static HANDLED: Mutex<Handled> = Mutex::new(Handled {
    restart: None,
    stop: None,
});
/// The restart signal's number (0: none yet), read without [`HANDLED`]'s
/// lock: the watcher reads it while [`install`], holding that lock, waits
/// for the watcher.
pub(super) static RESTART_SIGNO: AtomicI32 = AtomicI32::new(0);
/// The stop signal's number for the handler (0: none).
static STOP_SIGNO: AtomicI32 = AtomicI32::new(0);
/// Former stop signals our handler still catches, until they are given back
/// (bit `signo - 1`): they keep their role meanwhile.
static FORMER_STOPS: AtomicU64 = AtomicU64::new(0);
/// The address [`handle`] installed [`on_signal`] with, to tell a signal
/// still ours from one the application has taken since.
static ON_SIGNAL: AtomicUsize = AtomicUsize::new(0);

fn handled() -> MutexGuard<'static, Handled> {
    HANDLED.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn on_signal(signo: c_int) {
    // Async-signal-safe: one write to a non-blocking pipe, or in a forked
    // child sigaction and raise. A full pipe already holds a pending request,
    // so dropping the byte is the coalescing we want.
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // does not see our write's errno.
    unsafe {
        let stop = signo == STOP_SIGNO.load(Ordering::Relaxed)
            || FORMER_STOPS.load(Ordering::Relaxed) & bit(signo) != 0;
        if libc::getpid() != OWNER.load(Ordering::Relaxed) {
            // A forked worker: a restart signal is not for it, but a stop
            // signal (SIGTERM) must still end it as it would without us.
            if stop {
                libc::signal(signo, libc::SIG_DFL);
                libc::raise(signo);
            }
            return;
        }
        let errno = *libc::__errno_location();
        let byte = if stop { STOP_BYTE } else { RESTART_BYTE };
        libc::write(WAKE.load(Ordering::Relaxed), (&byte as *const u8).cast(), 1);
        let stopped = STOPPED.load(Ordering::Relaxed);
        if stop && stopped >= 0 {
            let one: u64 = 1;
            libc::write(stopped, (&one as *const u64).cast(), mem::size_of::<u64>());
        }
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

/// Makes the self-pipe and the stop eventfd (once per process), points the
/// handler at them, for this process, and installs it on `signo`; returns the
/// pipe's read end, for the watcher.
/// `inherited`: this process was started with `signo` ignored by its parent's
/// grestart (see the module comment). That ignore, if still there, was ours,
/// as is [`at_start`](super::at_start)'s guard ([`handle`] sees to that):
/// the disposition to give back is the default.
/// Called again after a failed start, it makes nothing twice.
pub(crate) fn arm(signo: c_int, inherited: bool) -> io::Result<BorrowedFd<'static>> {
    let pid = std::process::id() as i32;
    if MADE_IN.load(Ordering::Relaxed) != pid {
        let stopped = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| with_context(e.into(), "cannot create the stop eventfd"))?;
        let (pipe, wake) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| with_context(e.into(), "cannot create the signal pipe"))?;
        // They live as long as the process: the handler may run at any time.
        // A parent's, inherited, are closed: the handler writes to them only
        // in the process OWNER (set below) names, which is not this one yet.
        let parents = [
            STOPPED.swap(OwnedFd::from(stopped).into_raw_fd(), Ordering::Relaxed),
            PIPE.swap(pipe.into_raw_fd(), Ordering::Relaxed),
            WAKE.swap(wake.into_raw_fd(), Ordering::Relaxed),
        ];
        for fd in parents.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: our copy of the parent's, which nothing here uses now.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        MADE_IN.store(pid, Ordering::Relaxed);
    }
    OWNER.store(pid, Ordering::Relaxed);
    install(signo)?;
    if inherited {
        if let Some((_, previous)) = handled().restart.as_mut() {
            if previous.sa_sigaction == libc::SIG_IGN {
                previous.sa_sigaction = libc::SIG_DFL;
            }
        }
    }
    let early = arrived_early();
    if early > 0 {
        info!("{early} restart signal(s) arrived before grestart started; they restart nothing");
    }
    // SAFETY: made above or by an earlier call, and never closed.
    Ok(unsafe { BorrowedFd::borrow_raw(PIPE.load(Ordering::Relaxed)) })
}

/// The restart signal now (`SIGUSR2` until the engine started or the
/// application chose another).
pub(crate) fn current() -> c_int {
    match RESTART_SIGNO.load(Ordering::Relaxed) {
        0 => libc::SIGUSR2,
        signo => signo,
    }
}

/// Readable once the stop signal has arrived (see [`STOPPED`]).
pub(crate) fn stopped_fd() -> Option<BorrowedFd<'static>> {
    let fd = STOPPED.load(Ordering::Relaxed);
    // SAFETY: once made in this process, the eventfd is never closed here
    // (only a copy inherited from a parent is, in `arm`, before it is used).
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The stop signal, 0 when there is none.
pub(crate) fn stop_signal() -> c_int {
    STOP_SIGNO.load(Ordering::Relaxed)
}

/// Makes `signo` the restart signal, giving the previous one back its old disposition.
pub(crate) fn install(signo: c_int) -> io::Result<()> {
    check(signo)?;
    // What this logs goes out once the lock is released: a logger may call in.
    let _defer = log::Defer::new();
    let mut handled = handled();
    if handled.stop.is_some_and(|(stop, _)| stop == signo) {
        return Err(fail(
            libc::EINVAL,
            format!("signal {signo} is the stop signal; it cannot restart too"),
        ));
    }
    if handled.restart.is_some_and(|(current, _)| current == signo) {
        return Ok(());
    }
    let previous = handle(signo)?;
    RESTART_SIGNO.store(signo, Ordering::Relaxed);
    retune_watcher(handled.restart.replace((signo, previous)));
    Ok(())
}

/// Makes `signo` the stop signal (`None`: no stop signal), giving the previous
/// one back its old disposition.
pub(crate) fn install_stop(signo: Option<c_int>) -> io::Result<()> {
    if let Some(signo) = signo {
        check(signo)?;
    }
    let _defer = log::Defer::new();
    let mut handled = handled();
    if let Some(signo) = signo.filter(|&signo| signo == current()) {
        return Err(fail(
            libc::EINVAL,
            format!("signal {signo} is the restart signal; it cannot stop too"),
        ));
    }
    if handled.stop.map(|(current, _)| current) == signo {
        return Ok(());
    }
    let previous = signo.map(handle).transpose()?;
    if let Some((former, _)) = handled.stop {
        FORMER_STOPS.fetch_or(bit(former), Ordering::Relaxed);
    }
    STOP_SIGNO.store(signo.unwrap_or(0), Ordering::Relaxed);
    retune_watcher(mem::replace(&mut handled.stop, signo.zip(previous)));
    Ok(())
}

/// Restores the disposition a signal had before we installed our handler,
/// unless the application has given it one of its own since.
pub(super) fn give_back((signo, previous): (c_int, libc::sigaction)) {
    if still_ours(signo) {
        // SAFETY: restoring a disposition sigaction gave us earlier.
        unsafe { libc::sigaction(signo, &previous, ptr::null_mut()) };
    }
    FORMER_STOPS.fetch_and(!bit(signo), Ordering::Relaxed);
}

/// Whether our handler is `signo`'s disposition now.
fn still_ours(signo: c_int) -> bool {
    crate::sys::handler_of(signo) == Some(ON_SIGNAL.load(Ordering::Relaxed))
}

/// Installs our handler on `signo` (or finds it still there, let go but not
/// given back yet); returns the disposition it had before us.
fn handle(signo: c_int) -> io::Result<libc::sigaction> {
    FORMER_STOPS.fetch_and(!bit(signo), Ordering::Relaxed);
    if let Some(previous) = reclaim(signo).filter(|_| still_ours(signo)) {
        return Ok(previous);
    }
    let (installed, mut previous) = set_handler(signo, on_signal)?;
    ON_SIGNAL.store(installed, Ordering::Relaxed);
    if is_guard(&previous) {
        // The constructor's guard was ours too: what was there before it is the default.
        previous.sa_sigaction = libc::SIG_DFL;
    }
    Ok(previous)
}

/// Installs `handler` on `signo`; returns the address it was installed with
/// (two pointers to one function may differ, one per codegen unit: compare
/// with this one) and the disposition `signo` had.
pub(super) fn set_handler(
    signo: c_int,
    handler: extern "C" fn(c_int),
) -> io::Result<(libc::sighandler_t, libc::sigaction)> {
    // libc's sigaction, not nix's: nix cannot name the real-time signals,
    // which an application may choose as its restart signal.
    // SAFETY: all-zero is a valid `struct sigaction` (SIG_DFL, no flags).
    let mut action: libc::sigaction = unsafe { mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    // SA_RESTART: the application's blocking calls must not fail with EINTR
    // just because an operator asked for a restart.
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: `action.sa_mask` is a valid sigset to empty.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    // SAFETY: as above; sigaction fills it.
    let mut previous: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: valid sigaction structs; the handlers are async-signal-safe.
    if unsafe { libc::sigaction(signo, &action, &mut previous) } < 0 {
        return Err(os_fail(format!(
            "cannot install a handler for signal {signo}"
        )));
    }
    Ok((action.sa_sigaction, previous))
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
