//! The work in flight: connections from `gr_accept` and `gr_adopt_counted`,
//! and what the application counts itself. `shutdown` waits for none, and the
//! idle fd tells an event loop the same.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::Engine;
use crate::error::{fail, with_context};

pub(super) struct Work {
    /// An atomic, not the mutex: a forked worker counts its own, and a mutex
    /// another thread held at the fork would stay locked in its copy.
    in_flight: AtomicUsize,
    /// Readable while no work is in flight. Only the process that started the
    /// engine writes it: a forked worker shares the eventfd with its master.
    idle: EventFd,
    /// Whether `idle` is readable now; under it the fd follows the count.
    idle_readable: Mutex<bool>,
    ended: Condvar,
}

impl Work {
    pub(super) fn new() -> io::Result<Work> {
        let idle = EventFd::from_value_and_flags(1, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| with_context(e.into(), "cannot create the idle eventfd"))?;
        Ok(Work {
            in_flight: AtomicUsize::new(0),
            idle,
            idle_readable: Mutex::new(true),
            ended: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, bool> {
        self.idle_readable.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `owner`: whether this is the process whose threads wait (a forked
    /// worker only counts); asked only when the count leaves or reaches zero.
    pub(super) fn begin(&self, owner: impl Fn() -> bool) {
        if self.in_flight.fetch_add(1, Ordering::SeqCst) == 0 && owner() {
            self.follow();
        }
    }

    /// `EINVAL` when none is in flight.
    pub(super) fn end(&self, owner: impl Fn() -> bool) -> io::Result<()> {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| fail(libc::EINVAL, "no work is in flight"))?;
        if before == 1 && owner() {
            self.follow();
        }
        Ok(())
    }

    /// Makes the idle fd and the waiters follow the count, after it went from
    /// or to zero. Every such change is followed by its own call, under the
    /// lock: the last call sees the last change, whichever thread made it.
    fn follow(&self) {
        let mut readable = self.lock();
        let idle = self.in_flight() == 0;
        if idle && !*readable {
            let _ = self.idle.write(1);
            self.ended.notify_all();
        } else if !idle && *readable {
            let _ = self.idle.read();
        }
        *readable = idle;
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Blocks until no work is in flight.
    pub(super) fn wait_for_none(&self) {
        let readable = self.lock();
        drop(
            self.ended
                .wait_while(readable, |_| self.in_flight() > 0)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

impl Engine {
    /// Counts one more piece of work in flight (any process, a forked worker
    /// counts its own).
    pub(crate) fn begin_work(&self) {
        self.work.begin(|| self.is_owner());
    }

    /// Ends one piece of work; `EINVAL` when none is in flight.
    pub(crate) fn end_work(&self) -> io::Result<()> {
        self.work.end(|| self.is_owner())
    }

    /// Readable while no work is in flight in this process: an event loop
    /// awaits it to know its last connection has ended.
    pub(crate) fn idle_fd(&'static self) -> BorrowedFd<'static> {
        self.work.idle.as_fd()
    }

    pub(super) fn is_owner(&self) -> bool {
        std::process::id() == self.owner
    }
}
