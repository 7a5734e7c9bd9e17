//! The dispositions this process was started with, noted before `main`:
//! every successor starts with them again.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::handler::set_handler;

/// The signals ignored when this process started (bit `signo - 1`).
static STARTED_IGNORING: AtomicU64 = AtomicU64::new(0);
static STARTED_IGNORING_KNOWN: AtomicBool = AtomicBool::new(false);
/// How many restart signals [`guard`] caught before the engine's handler.
static EARLY: AtomicU32 = AtomicU32::new(0);

/// The restart signal's handler from [`at_start`] until the engine's: it
/// counts, and the process lives on. A handler, not "ignored", which every
/// program this process starts meanwhile would inherit (a shell script could
/// not even trap it).
extern "C" fn guard(_signo: c_int) {
    EARLY.fetch_add(1, Ordering::Relaxed);
}

/// The address [`at_start`] installed [`guard`] with (0: it did not).
static GUARD: AtomicUsize = AtomicUsize::new(0);

/// Whether `action` is [`guard`]: a disposition that was ours, whose default
/// is to be given back.
pub(super) fn is_guard(action: &libc::sigaction) -> bool {
    let guard = GUARD.load(Ordering::Relaxed);
    guard != 0 && action.sa_sigaction == guard
}

/// How many restart signals arrived before the engine handled them (and
/// restarted nothing: a process that does not serve yet has nothing to hand
/// over); counted once.
pub(super) fn arrived_early() -> u32 {
    EARLY.swap(0, Ordering::Relaxed)
}

/// `signo` as a bit of a disposition mask.
pub(crate) fn bit(signo: c_int) -> u64 {
    match signo {
        1..=64 => 1 << (signo - 1),
        _ => 0,
    }
}

/// Before `main` (the library's constructor): notes which signals this
/// process was started with ignored, and gives `restart` the [`guard`]
/// handler if it has its default action, so that a restart signal that
/// arrives before the engine is set up (`./server & kill -USR2 $!`) never
/// kills the process; or if it is ignored only for the exec
/// (`parents_ignore`: a successor, started so by its parent's grestart),
/// which the programs it starts must not inherit.
pub(crate) fn at_start(restart: c_int, parents_ignore: bool) {
    let ignored = ignored_now();
    STARTED_IGNORING.store(ignored, Ordering::Relaxed);
    STARTED_IGNORING_KNOWN.store(true, Ordering::Relaxed);
    if ignored & bit(restart) == 0 || parents_ignore {
        if let Ok((installed, _)) = set_handler(restart, guard) {
            GUARD.store(installed, Ordering::Relaxed);
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
