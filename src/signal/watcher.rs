//! The watcher thread, the one grestart thread that takes the restart and stop
//! signals, and the threads that take none ([`spawn_thread`]).

use std::cell::Cell;
use std::ffi::c_int;
use std::io;
use std::mem;
use std::os::fd::BorrowedFd;
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow};
use nix::unistd::read;

use super::handler::{RESTART_SIGNO, WAKE, give_back, stop_signal};
use super::{RESTART_BYTE, RETUNE_BYTE, STOP_BYTE};
use crate::error::with_context;
use crate::log::warning;

/// What the watcher's own mask is now, for [`install`](super::install) to wait on.
struct Watcher {
    /// The restart and stop signals its mask leaves unblocked (0: none).
    unblocked: (c_int, c_int),
    /// It runs a restart, and reads the pipe only when that is over.
    busy: bool,
    /// How many times it has read [`wanted`] under this lock (and set its
    /// mask from it). Before the first its mask is the one [`spawn_thread`]
    /// started it with, every signal blocked: there is nothing to wait for.
    retunes: u64,
    /// Signals that are no longer ours, each with the disposition to give it
    /// back once this mask blocks it: they changed while the watcher ran a
    /// restart, and until it retunes it takes them (our handler still
    /// catches them there, rather than their default action ending the
    /// process).
    returning: Vec<(c_int, libc::sigaction)>,
}

static WATCHER: Mutex<Watcher> = Mutex::new(Watcher {
    unblocked: (0, 0),
    busy: false,
    retunes: 0,
    returning: Vec::new(),
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
    (RESTART_SIGNO.load(Ordering::Relaxed), stop_signal())
}

/// Gives the watcher's mask the signals [`wanted`] names, unless it has them.
/// Only the watcher calls it: a thread's mask is its own to change.
fn retune_here() {
    if !in_watcher() {
        return;
    }
    let mut watcher = watcher();
    // Read under the lock that `retune_watcher` counts the retunes under: a
    // signal installed before this reads it is taken, one installed after is
    // waited for.
    let (signo, stop) = wanted();
    watcher.retunes += 1;
    WATCHER_CHANGED.notify_all();
    if watcher.unblocked != (signo, stop) || signo == 0 {
        if let Err(e) = unblock_only(signo, stop) {
            warning!("cannot unblock signal {signo} in the signal watcher: {e}");
            return;
        }
        watcher.unblocked = (signo, stop);
    }
    // Blocked here now, the signals let go are the application's again.
    watcher.returning.drain(..).for_each(give_back);
}

/// Blocks every signal in the calling thread but `signo` and `stop`.
fn unblock_only(signo: c_int, stop: c_int) -> io::Result<()> {
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
    match unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &mask, ptr::null_mut()) } {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Asks the watcher to unblock the signals [`wanted`] names (and block the
/// others), and waits for it, unless it is busy with a restart: then it does
/// so when that is over, and a signal sent meanwhile stays pending until then,
/// never lost. A watcher that has not run yet is not waited for: it still
/// blocks every signal, and reads [`wanted`] when it starts. What is waited
/// for is the watcher's next retune, which reads [`wanted`] after this
/// caller's change (and after any other's: the restart and the stop signal may
/// change at once, from two threads).
///
/// `letting_go`, the signal this change makes no longer ours, gets back its
/// disposition once the watcher blocks it: an application that blocks it
/// everywhere (to `sigwait` for it) must not see it take its default action
/// on our thread.
pub(super) fn retune_watcher(letting_go: Option<(c_int, libc::sigaction)>) {
    let mut watcher = watcher();
    watcher.returning.extend(letting_go);
    if in_watcher() {
        drop(watcher);
        return retune_here();
    }
    let wake = WAKE.load(Ordering::Relaxed);
    if wake < 0 || watcher.retunes == 0 {
        // Not armed yet, or no watcher has run: none yet (the engine starts
        // its watcher last), one not scheduled yet (started by `spawn_thread`
        // with every signal blocked, it takes the restart and stop signals
        // stored before this lock when it first takes it), or none since a
        // start that failed. No thread of ours takes the signal let go.
        watcher.returning.drain(..).for_each(give_back);
        return;
    }
    let seen = watcher.retunes;
    let byte = RETUNE_BYTE;
    // SAFETY: a write of one byte from a valid buffer to the self-pipe, which
    // lives as long as the process. A full pipe wakes the watcher anyway.
    unsafe { libc::write(wake, (&byte as *const u8).cast(), 1) };
    let (watcher, waited) = WATCHER_CHANGED
        .wait_timeout_while(watcher, Duration::from_secs(1), |w| {
            w.retunes == seen && !w.busy
        })
        .unwrap_or_else(|e| e.into_inner());
    drop(watcher);
    if waited.timed_out() {
        let wanted = wanted();
        warning!("the signal watcher did not take signals {wanted:?} within 1 s; it will");
    }
}

/// Takes back `signo`, let go while the watcher ran a restart and not given
/// back yet: returns the disposition it had before us (our handler is still
/// installed on it).
pub(super) fn reclaim(signo: c_int) -> Option<libc::sigaction> {
    let mut watcher = watcher();
    let at = watcher.returning.iter().position(|&(s, _)| s == signo)?;
    Some(watcher.returning.swap_remove(at).1)
}

/// Held by the watcher while it runs a restart: [`install`](super::install)
/// does not wait for it meanwhile.
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
pub(crate) fn wait(pipe: BorrowedFd<'_>, control: Option<BorrowedFd<'_>>) -> Arrivals {
    loop {
        let mut fds = vec![PollFd::new(pipe, PollFlags::POLLIN)];
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
pub(crate) fn drain(pipe: BorrowedFd<'_>) -> Arrivals {
    let mut buf = [0u8; 256];
    let mut arrivals = Arrivals::default();
    // The pipe is non-blocking: EAGAIN once it is empty.
    while let Ok(n @ 1..) = read(pipe, &mut buf) {
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
