//! The work in flight the application counts: `shutdown` waits for none.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::Engine;
use crate::error::fail;

pub(super) struct Work {
    /// An atomic, not the mutex: a forked worker counts its own, and a mutex
    /// another thread held at the fork would stay locked in its copy.
    in_flight: AtomicUsize,
    /// Guards the wait: only the process that started the engine waits.
    waiting: Mutex<()>,
    ended: Condvar,
}

impl Work {
    pub(super) fn new() -> Work {
        Work {
            in_flight: AtomicUsize::new(0),
            waiting: Mutex::new(()),
            ended: Condvar::new(),
        }
    }

    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// `EINVAL` when none is in flight. `owner`: whether this is the process
    /// whose threads may wait (a forked worker only counts).
    pub(super) fn end(&self, owner: bool) -> io::Result<()> {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| fail(libc::EINVAL, "no work is in flight"))?;
        if before == 1 && owner {
            // Under the lock, so that a waiter between its check and its wait
            // cannot miss the notification.
            drop(self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
            self.ended.notify_all();
        }
        Ok(())
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Blocks until no work is in flight.
    pub(super) fn wait_for_none(&self) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        drop(
            self.ended
                .wait_while(waiting, |_| self.in_flight() > 0)
                .unwrap_or_else(|e| e.into_inner()),
        );
    }
}

impl Engine {
    /// Counts one more piece of work in flight (any process, a forked worker
    /// counts its own).
    pub(crate) fn begin_work(&self) {
        self.work.begin();
    }

    /// Ends one piece of work; `EINVAL` when none is in flight.
    pub(crate) fn end_work(&self) -> io::Result<()> {
        self.work.end(std::process::id() == self.owner)
    }
}
