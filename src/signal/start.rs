//! The dispositions this process was started with, noted before `main`:
//! every successor starts with them again.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

/// The signals ignored when this process started (bit `signo - 1`).
static STARTED_IGNORING: AtomicU64 = AtomicU64::new(0);
static STARTED_IGNORING_KNOWN: AtomicBool = AtomicBool::new(false);
/// The restart signal [`at_start`] ignored because it had its default action.
pub(super) static GUARDED: AtomicI32 = AtomicI32::new(0);

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
