//! The links that carry connections between generations: to the ready
//! successor (the heir), which idle connections are handed to, and from the
//! predecessor, whose connections this process adopts.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{Engine, Phase};
use crate::handover::{Adoption, Handed, Heir, Offer};
use crate::log::{self, warning};
use crate::signal;
use crate::sys;

impl Engine {
    pub(super) fn heir_lock(&self) -> MutexGuard<'_, Option<Heir>> {
        self.heir.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offers the idle `connection`, accepted on the listener `name` (`None`:
    /// the one its address belongs to), to the ready successor.
    pub(crate) fn hand_over(
        &'static self,
        connection: BorrowedFd<'_>,
        name: Option<&str>,
    ) -> io::Result<Offer> {
        // What the hand-over logs goes out after the lock is released.
        let _defer = log::Defer::new();
        match self.heir_lock().as_mut() {
            Some(heir) => {
                let waiting = heir.batch_due().is_some();
                let offer = heir.hand_over(connection, name);
                if !waiting && heir.batch_due().is_some() {
                    self.send_batch_when_due(heir);
                }
                offer
            }
            None => Ok(Offer::Declined(
                "no successor to hand the connection to (not restarting, or the restart failed): \
                 close it"
                    .into(),
            )),
        }
    }

    /// Sees that the heir's batch, which just began, goes out when due. A
    /// thread of its own sends it: started with the first batch, woken only
    /// while it waits for one (asleep, it looks again when it wakes). If the
    /// thread cannot start, the batch goes now.
    fn send_batch_when_due(&'static self, heir: &mut Heir) {
        let started = self.batch_sender_waits.get_or_init(|| {
            let started = signal::spawn_thread("grestart-batch", move || {
                loop {
                    let _defer = log::Defer::new(); // what the batch logs goes out unlocked
                    let mut heir = self.heir_lock();
                    match heir.as_ref().and_then(Heir::batch_due) {
                        None => {
                            let waits = self.batch_sender_waits.get().and_then(Option::as_ref);
                            let waits = waits.expect("set before the heir's lock was released");
                            waits.store(true, Ordering::Relaxed); // under the heir's lock
                            drop(self.batch_began.wait(heir));
                            waits.store(false, Ordering::Relaxed);
                        }
                        Some(due) if due > Instant::now() => {
                            drop(heir);
                            thread::sleep(due.saturating_duration_since(Instant::now()));
                        }
                        Some(_) => {
                            let _ = heir.as_mut().map(Heir::flush);
                        }
                    }
                }
            });
            if let Err(e) = started {
                warning!("{e}: each connection handed over goes at once");
                return None;
            }
            // SAFETY: registers a function that takes no argument.
            unsafe { libc::atexit(send_batch_at_exit) };
            Some(AtomicBool::new(false))
        });
        match started {
            Some(waits) if waits.load(Ordering::Relaxed) => self.batch_began.notify_one(),
            Some(_) => {}
            None => {
                let _ = heir.flush();
            }
        }
    }

    /// Whether a ready successor takes the connections handed to it now.
    pub(crate) fn successor_adopts(&self) -> bool {
        (self.heir_lock().as_ref()).is_some_and(Heir::takes_connections)
    }

    /// Waits (within the bound) for the successor to take what was handed to it.
    pub(super) fn finish_hand_overs(&self) {
        let _defer = log::Defer::new();
        if let Some(heir) = self.heir_lock().as_mut() {
            heir.finish();
        }
    }

    /// The fd readable while handed-over connections wait; asking for it says
    /// we adopt them (to the predecessor now, or with "ready").
    pub(crate) fn adopt_fd(&'static self) -> io::Result<BorrowedFd<'static>> {
        self.start_adoption().map(|a| a.fd())
    }

    /// The adoption, started (its thread and all) on the first call.
    fn start_adoption(&'static self) -> io::Result<&'static Adoption> {
        if let Some(adoption) = self.adoption.get() {
            return Ok(adoption);
        }
        let state = self.lock();
        let adoption = self.adoption.get_or_try_init(|| {
            let link = (state.predecessor.as_ref()).map(|p| (p.channel(), p.pid));
            Adoption::start(link)
        })?;
        if state.phase != Phase::Starting {
            // Already ready: say it now. A predecessor gone has nothing to hand over.
            if let Some(predecessor) = &state.predecessor {
                let _ = predecessor.tell_adopting();
            }
        }
        Ok(adoption)
    }

    /// The next connection handed over by the predecessor, waiting up to
    /// `timeout`; `ERANGE` (and it stays queued) when its name does not `fit`.
    pub(crate) fn adopt(
        &'static self,
        timeout: Option<Duration>,
        fits: impl Fn(&str) -> bool,
    ) -> io::Result<Option<Handed>> {
        self.start_adoption()?.adopt(timeout, fits)
    }

    /// The adoption's fd, if this process adopts (it asked for the fd); never
    /// in a forked worker, whose copy of the queue is not the generation's.
    pub(crate) fn adoption_fd(&'static self) -> Option<BorrowedFd<'static>> {
        let adoption = self.adoption.get().filter(|_| self.is_owner())?;
        Some(adoption.fd())
    }

    /// For an accept on `listener`: a connection handed over on it (on any
    /// listener, when `listener` is not one we registered), if one waits.
    /// Blocking, as an accepted one.
    pub(crate) fn adopt_on(&'static self, listener: BorrowedFd<'_>) -> Option<OwnedFd> {
        let adoption = self.adoption.get()?;
        let name = self.lock().registry.name_of(listener).map(String::from);
        let handed = adoption.take_on(name.as_deref())?;
        let _ = sys::set_blocking(handed.connection.as_fd());
        Some(handed.connection)
    }

    /// Once the successor is ready: what our predecessor, still draining,
    /// hands us from now on goes on to it.
    pub(super) fn relay_adopted(&'static self) {
        if let Some(adoption) = self.adoption.get() {
            adoption.relay(Box::new(|connection, name| {
                matches!(self.hand_over(connection, Some(name)), Ok(Offer::Taken))
            }));
        }
    }
}

/// At exit, what is batched still goes to the heir: an application may
/// return from `main` without `gr_shutdown` right after its last hand-over.
/// Not from a forked child (its copy of the batch is not its to send), nor
/// while the batch thread holds the heir (it is sending).
extern "C" fn send_batch_at_exit() {
    let Some(engine) = super::ENGINE.get().filter(|engine| engine.is_owner()) else {
        return;
    };
    if let Ok(mut heir) = engine.heir.try_lock() {
        let _ = heir.as_mut().map(Heir::flush);
    }
}
