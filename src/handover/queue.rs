//! The connections handed over and not adopted yet, and an fd that is
//! readable while there are some.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;

use nix::sys::eventfd::EventFd;

use super::wire::Record;
use crate::error::fail;
use crate::log::warning;

/// A connection handed over by the previous generation.
pub(crate) struct Handed {
    pub(crate) connection: OwnedFd,
    pub(crate) listener: String,
    /// Its id, for the receipt; `None` from a predecessor that sends none.
    pub(super) id: Option<u64>,
}

impl From<Record> for Handed {
    fn from(record: Record) -> Handed {
        Handed {
            connection: record.connection,
            listener: record.listener,
            id: Some(record.id),
        }
    }
}

/// The connections received and not yet adopted, oldest first.
pub(super) struct Queue {
    /// Readable while the queue holds a connection: written when the queue
    /// stops being empty, read back when it becomes empty, both under its lock.
    waiting: EventFd,
    queue: Mutex<VecDeque<Handed>>,
}

impl Queue {
    pub(super) fn new(waiting: EventFd) -> Queue {
        Queue {
            waiting,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.waiting.as_fd()
    }

    /// Queues connections the predecessor handed over.
    pub(super) fn push_all(&self, handed: impl IntoIterator<Item = Handed>) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = queue.is_empty();
        queue.extend(handed);
        if was_empty && !queue.is_empty() {
            if let Err(e) = self.waiting.write(1) {
                warning!("cannot signal a handed-over connection: {e}");
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Puts back, first in line, a connection the relay could not hand on.
    pub(super) fn push_front(&self, handed: Handed) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push_front(handed);
        if queue.len() == 1 {
            let _ = self.waiting.write(1);
        }
    }

    /// The first connection waiting that was accepted on the listener `name`
    /// (`None`: on any).
    pub(super) fn take_on(&self, name: Option<&str>) -> Option<Handed> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let at = (queue.iter()).position(|h| name.is_none_or(|name| h.listener == name))?;
        let handed = queue.remove(at);
        if queue.is_empty() {
            let _ = self.waiting.read(); // not readable until the next one
        }
        handed
    }

    /// The first connection waiting, if any; `ERANGE` (and it stays) when
    /// its listener's name does not `fit`.
    pub(super) fn pop(&self, fits: impl Fn(&str) -> bool) -> io::Result<Option<Handed>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = queue.front() else {
            return Ok(None);
        };
        if !fits(&front.listener) {
            return Err(fail(
                libc::ERANGE,
                format!(
                    "the listener name {:?} does not fit the buffer",
                    front.listener
                ),
            ));
        }
        let handed = queue.pop_front();
        if queue.is_empty() {
            let _ = self.waiting.read(); // not readable until the next one
        }
        Ok(handed)
    }
}
