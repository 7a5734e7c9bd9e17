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
//! grestart's threads never take the application's signals: each starts with
//! every signal blocked ([`spawn_thread`]), so a process-directed `SIGINT` or
//! `SIGTERM` goes to a thread of the application (CPython, say, only acts on a
//! signal its main thread receives). The watcher alone then unblocks the
//! restart signal, so that the restart works even in an application that blocks
//! it in all its threads (the `sigwait`/`signalfd` design): the kernel delivers
//! a process-directed signal to a thread that does not block it. A thread's mask
//! can only be changed by the thread itself, so when the restart signal changes
//! [`install`] asks the watcher, through the self-pipe, to change its own mask.
//!
//! An application may also name a *stop* signal (`gr_set_stop_signal`, e.g.
//! `SIGTERM`): the same handler writes another byte to the same pipe, the
//! watcher leaves that signal unblocked too, and begins the drain, as when a
//! successor took over.

use std::cell::Cell;
use std::ffi::c_int;
use std::io;
use std::mem;
use std::os::fd::{AsFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::{pipe2, read};

use crate::error::{fail, os_fail, with_context};
use crate::log::{self, warning};

/// What the self-pipe carries: a restart request, from the handler...
const RESTART_BYTE: u8 = 1;
/// ... or, from [`install`], a request to the watcher to unblock another signal...
const RETUNE_BYTE: u8 = 2;
/// ... or the stop signal, from the handler.
const STOP_BYTE: u8 = 3;

/// The write end of the self-pipe; the handler's only state with [`OWNER`]
/// and [`STOPPED`].
static WAKE: AtomicI32 = AtomicI32::new(-1);
/// An eventfd the handler makes readable when the stop signal arrives: a
/// restart under way gives up for it at once (the watcher, which reads the
/// pipe, is busy with that very restart).
static STOPPED: AtomicI32 = AtomicI32::new(-1);
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

/// The signal the watcher thread must leave unblocked (0: none yet), besides
/// the stop signal.
static WATCHED: AtomicI32 = AtomicI32::new(0);

/// What the watcher's own mask is now, for [`install`] to wait on.
struct Watcher {
    /// The restart and stop signals its mask leaves unblocked (0: none).
    unblocked: (c_int, c_int),
    /// It runs a restart, and reads the pipe only when that is over.
    busy: bool,
}

static WATCHER: Mutex<Watcher> = Mutex::new(Watcher {
    unblocked: (0, 0),
    busy: false,
});
static WATCHER_CHANGED: Condvar = Condvar::new();

thread_local! {
    static IN_WATCHER: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is the watcher (never while its locals are destroyed).
fn in_watcher() -> bool {
    IN_WATCHER.try_with(Cell::get).unwrap_or(false)
}

fn watcher() -> MutexGuard<'static, Watcher> {
    WATCHER.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn on_signal(signo: c_int) {
    // Async-signal-safe: one write to a non-blocking pipe, or in a forked
    // child sigaction and raise. A full pipe already holds a pending request,
    // so dropping the byte is the coalescing we want.
    // SAFETY: errno is thread-local; we restore it so the interrupted code
    // does not see our write's errno.
    unsafe {
        let stop = signo == STOP_SIGNO.load(Ordering::Relaxed);
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

/// The signals ignored when this process started (bit `signo - 1`).
static STARTED_IGNORING: AtomicU64 = AtomicU64::new(0);
static STARTED_IGNORING_KNOWN: AtomicBool = AtomicBool::new(false);
/// The restart signal [`at_start`] ignored because it had its default action.
static GUARDED: AtomicI32 = AtomicI32::new(0);

/// `signo` as a bit of a disposition mask.
pub(crate) fn bit(signo: c_int) -> u64 {
    match signo {
        1..=64 => 1 << (signo - 1),
        _ => 0,
    }
}

/// Before `main` (the library's constructor): notes which signals this
/// process was started with ignored, and ignores `restart` if it has its
/// default action, so that a restart signal that arrives before the engine
/// is set up (`./server & kill -USR2 $!`) never kills the process.
pub(crate) fn at_start(restart: c_int) {
    let ignored = ignored_now();
    STARTED_IGNORING.store(ignored, Ordering::Relaxed);
    STARTED_IGNORING_KNOWN.store(true, Ordering::Relaxed);
    if ignored & bit(restart) == 0 {
        // SAFETY: setting SIG_IGN on a catchable signal has no requirements.
        if unsafe { libc::signal(restart, libc::SIG_IGN) } != libc::SIG_ERR {
            GUARDED.store(restart, Ordering::Relaxed);
        }
    }
}

/// The signals this process was started with ignored (read now where no
/// constructor ran).
pub(crate) fn started_ignoring() -> u64 {
    if !STARTED_IGNORING_KNOWN.load(Ordering::Relaxed) {
        STARTED_IGNORING.store(ignored_now(), Ordering::Relaxed);
        STARTED_IGNORING_KNOWN.store(true, Ordering::Relaxed);
    }
    STARTED_IGNORING.load(Ordering::Relaxed)
}

/// The signals ignored now, but the C library's own (32, 33): glibc's
/// `posix_spawn`, which Rust's `Command` uses, starts children with those
/// ignored, and the C library sets them up itself when it needs them.
fn ignored_now() -> u64 {
    (1..=64)
        .filter(|&s| s < 32 || s >= libc::SIGRTMIN())
        .filter(|&s| crate::sys::is_ignored(s))
        .map(bit)
        .sum()
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
/// grestart (see the module comment). Either way, an ignore that was ours
/// (the parent's, or [`at_start`]'s) gives back the default, not "ignored".
pub(crate) fn arm(wake: OwnedFd, signo: c_int, inherited: bool) -> io::Result<()> {
    if STOPPED.load(Ordering::Relaxed) < 0 {
        let stopped = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| with_context(e.into(), "cannot create the stop eventfd"))?;
        STOPPED.store(OwnedFd::from(stopped).into_raw_fd(), Ordering::Relaxed);
    }
    // The write end lives as long as the process: the handler may run at any time.
    WAKE.store(wake.into_raw_fd(), Ordering::Relaxed);
    OWNER.store(std::process::id() as i32, Ordering::Relaxed);
    install(signo)?;
    if inherited || GUARDED.load(Ordering::Relaxed) == signo {
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

/// Readable once the stop signal has arrived (see [`STOPPED`]).
pub(crate) fn stopped_fd() -> Option<BorrowedFd<'static>> {
    let fd = STOPPED.load(Ordering::Relaxed);
    // SAFETY: once made, the eventfd is never closed.
    (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The stop signal, 0 when there is none.
pub(crate) fn stop_signal() -> c_int {
    STOP_SIGNO.load(Ordering::Relaxed)
}

/// Makes `signo` the restart signal, giving the previous one back its old disposition.
pub(crate) fn install(signo: c_int) -> io::Result<()> {
    check(signo)?;
    if signo == stop_signal() {
        return Err(fail(
            libc::EINVAL,
            format!("signal {signo} is the stop signal; it cannot restart too"),
        ));
    }
    // What this logs goes out once the lock is released: a logger may call in.
    let _defer = log::Defer::new();
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if matches!(*installed, Some((current, _)) if current == signo) {
        return Ok(());
    }
    let previous = handle(signo)?;
    // The watcher unblocks the new signal and blocks the old one before the old
    // one gets its disposition back: an application that blocks the old signal
    // everywhere (to `sigwait` for it) must not see it handled on our thread.
    WATCHED.store(signo, Ordering::Relaxed);
    retune_watcher();
    give_back(installed.take());
    *installed = Some((signo, previous));
    Ok(())
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
    let _defer = log::Defer::new();
    let mut installed = STOP.lock().unwrap_or_else(|e| e.into_inner());
    if installed.map(|(current, _)| current) == signo {
        return Ok(());
    }
    let previous = signo.map(handle).transpose()?;
    STOP_SIGNO.store(signo.unwrap_or(0), Ordering::Relaxed);
    retune_watcher();
    give_back(installed.take());
    *installed = signo.zip(previous);
    Ok(())
}

/// Restores the disposition a signal had before we installed our handler.
fn give_back(held: Option<(c_int, libc::sigaction)>) {
    if let Some((signo, previous)) = held {
        // SAFETY: restoring a disposition sigaction gave us earlier.
        unsafe { libc::sigaction(signo, &previous, ptr::null_mut()) };
    }
}

/// Installs our handler on `signo`; returns the disposition it had.
fn handle(signo: c_int) -> io::Result<libc::sigaction> {
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
    Ok(previous)
}

/// Starts a grestart thread with every signal blocked: a new thread starts
/// with its creator's mask, so the creator blocks them all for the moment of
/// the spawn (an application thread's mask may let anything through).
pub(crate) fn spawn_thread(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let previous = SigSet::all()
        .thread_swap_mask(SigmaskHow::SIG_SETMASK)
        .map_err(|e| with_context(e.into(), "cannot block signals to start a thread"))?;
    let spawned = thread::Builder::new().name(name.into()).spawn(body);
    if let Err(e) = previous.thread_set_mask() {
        warning!("cannot restore the signal mask after starting a thread: {e}");
    }
    spawned
        .map(drop)
        .map_err(|e| with_context(e, format!("cannot start the {name} thread")))
}

/// Makes the calling thread (started by [`spawn_thread`]) the watcher: the
/// one thread that leaves the restart and stop signals unblocked.
pub(crate) fn become_watcher() {
    let _ = IN_WATCHER.try_with(|w| w.set(true));
    retune_here();
}

/// The restart and stop signals the watcher's mask must leave unblocked.
fn wanted() -> (c_int, c_int) {
    (WATCHED.load(Ordering::Relaxed), stop_signal())
}

/// Gives the watcher's mask the signals [`wanted`] names, unless it has them.
/// Only the watcher calls it: a thread's mask is its own to change.
fn retune_here() {
    if !in_watcher() {
        return;
    }
    let (signo, stop) = wanted();
    let mut watcher = watcher();
    if watcher.unblocked == (signo, stop) && signo != 0 {
        return;
    }
    // libc's sigset, not nix's SigSet: nix cannot name real-time signals.
    // SAFETY: all-zero is a valid sigset for sigfillset to fill.
    let mut mask: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: a valid sigset; sigdelset ignores a number that is no signal (0).
    unsafe {
        libc::sigfillset(&mut mask);
        libc::sigdelset(&mut mask, signo);
        libc::sigdelset(&mut mask, stop);
    }
    // SAFETY: a valid sigset; changes this thread's mask only.
    let changed = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, ptr::null_mut()) };
    if changed != 0 {
        warning!(
            "cannot unblock signal {signo} in the signal watcher: {}",
            io::Error::from_raw_os_error(changed)
        );
        return;
    }
    watcher.unblocked = (signo, stop);
    WATCHER_CHANGED.notify_all();
}

/// Asks the watcher to unblock the signals [`wanted`] names (and block the
/// others), and waits for it, unless it is busy with a restart: then it does
/// so when that is over, and a signal sent meanwhile stays pending until then,
/// never lost.
fn retune_watcher() {
    let target = wanted();
    if in_watcher() {
        return retune_here();
    }
    let wake = WAKE.load(Ordering::Relaxed);
    if wake < 0 {
        return; // no watcher yet: it reads WATCHED when it starts
    }
    let byte = RETUNE_BYTE;
    // SAFETY: a write of one byte from a valid buffer to the self-pipe, which
    // lives as long as the process. A full pipe wakes the watcher anyway.
    unsafe { libc::write(wake, (&byte as *const u8).cast(), 1) };
    let watcher = watcher();
    let (watcher, waited) = WATCHER_CHANGED
        .wait_timeout_while(watcher, Duration::from_secs(1), |w| {
            w.unblocked != target && !w.busy
        })
        .unwrap_or_else(|e| e.into_inner());
    drop(watcher);
    if waited.timed_out() {
        warning!("the signal watcher did not take signals {target:?} within 1 s; it will");
    }
}

/// Held by the watcher while it runs a restart: [`install`] does not wait for
/// it meanwhile.
pub(crate) struct Busy;

impl Busy {
    pub(crate) fn new() -> Busy {
        watcher().busy = true;
        WATCHER_CHANGED.notify_all();
        Busy
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        watcher().busy = false;
        retune_here();
    }
}

/// What arrived on the self-pipe since it was last read.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Arrivals {
    /// How many restart signals (a storm of them is one request).
    pub restarts: usize,
    /// Whether the stop signal came.
    pub stop: bool,
    /// Whether the control socket has a client waiting.
    pub control: bool,
}

/// Blocks until a restart or stop signal arrived at least once (and swallows
/// every arrival since) or `control` has a client waiting. Only the watcher
/// calls it.
pub(crate) fn wait(pipe: &OwnedFd, control: Option<BorrowedFd<'_>>) -> Arrivals {
    loop {
        let mut fds = vec![PollFd::new(pipe.as_fd(), PollFlags::POLLIN)];
        fds.extend(control.map(|fd| PollFd::new(fd, PollFlags::POLLIN)));
        // EINTR and spurious wake-ups only loop again.
        let _ = poll(&mut fds, PollTimeout::NONE);
        let control = fds.get(1).is_some_and(|fd| fd.any() == Some(true));
        let arrived = Arrivals {
            control,
            ..drain(pipe)
        };
        if arrived.restarts > 0 || arrived.stop || arrived.control {
            return arrived;
        }
    }
}

/// Reads away every pending byte of the pipe; a request to retune the
/// watcher is carried out. Only the watcher calls it.
pub(crate) fn drain(pipe: &OwnedFd) -> Arrivals {
    let mut buf = [0u8; 256];
    let mut arrivals = Arrivals::default();
    // The pipe is non-blocking: EAGAIN once it is empty.
    while let Ok(n @ 1..) = read(pipe.as_fd(), &mut buf) {
        for &byte in &buf[..n] {
            match byte {
                RESTART_BYTE => arrivals.restarts += 1,
                STOP_BYTE => arrivals.stop = true,
                _ => {}
            }
        }
    }
    retune_here();
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
