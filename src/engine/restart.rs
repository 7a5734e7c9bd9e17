//! A restart's rules (one at a time, not before ready, not while draining,
//! a bounded number of generations draining) and its outcome, logged and
//! told to systemd.

use std::io;
use std::sync::TryLockError;
use std::thread;

use super::{Engine, Phase, State};
use crate::error::fail;
use crate::log::{error, info, warning};
use crate::protocol::Draining;

pub(crate) use crate::limits::GR_MAX_DRAINING as MAX_DRAINING;

/// Why a restart was refused: nothing was tried, this process serves on
/// exactly as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `ready()` was not called yet.
    NotReady,
    /// This process drains: its successor serves, and restarts.
    Draining,
    /// Another restart is running: its outcome is the answer.
    AlreadyRestarting,
    /// `older` generations still drain (or may, when only counted), and at
    /// most [`MAX_DRAINING`] do.
    TooManyDraining { older: u32 },
}

impl Refusal {
    /// The errno each refusal is reported with, in every language: the one
    /// place that says it (the header's `gr_restart` documents the same).
    pub(crate) fn errno(self) -> i32 {
        match self {
            Refusal::NotReady => libc::EAGAIN,
            Refusal::Draining => libc::ESHUTDOWN,
            Refusal::AlreadyRestarting => libc::EALREADY,
            Refusal::TooManyDraining { .. } => libc::EBUSY,
        }
    }
}

impl From<Refusal> for io::Error {
    fn from(refusal: Refusal) -> io::Error {
        let why = match refusal {
            Refusal::NotReady => "this process is not ready yet (call gr_ready first)".into(),
            Refusal::Draining => "this process is draining; its successor serves".into(),
            Refusal::AlreadyRestarting => "a restart is already in progress".into(),
            Refusal::TooManyDraining { older } => format!(
                "{older} older generations are still draining, and at most {MAX_DRAINING} \
                 drain at once; try again when one has exited"
            ),
        };
        fail(refusal.errno(), why)
    }
}

impl Engine {
    /// Starts a successor and, once it is ready, begins to drain. Errors leave
    /// this process serving exactly as before.
    pub(crate) fn restart(&'static self) -> io::Result<i32> {
        self.restart_coalescing(|| 0, |_| ())
    }

    /// [`Engine::restart`] for the signal watcher: `coalesce` swallows the
    /// restart signals that arrived during the restart, and runs before the
    /// outcome is logged, so that a signal sent once the operator has read
    /// "restart failed" starts a new restart instead of being swallowed.
    ///
    /// `ready` hears the new pid once the successor is ready, before this
    /// process begins to drain: whoever waits for the outcome must hear it
    /// before the application, done draining, exits.
    pub(super) fn restart_coalescing(
        &'static self,
        coalesce: impl FnOnce() -> usize,
        ready: impl FnOnce(i32),
    ) -> io::Result<i32> {
        let _one_at_a_time = match self.restarting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let err = io::Error::from(Refusal::AlreadyRestarting);
                info!("restart requested: {err}");
                return Err(err);
            }
        };
        info!("restart requested");
        // Refused by the rules (not ready, draining, too many generations
        // draining) is not a failure: nothing was tried.
        let checked = {
            let mut state = self.lock();
            let checked = self.check_may_restart(&mut state);
            if checked.is_ok() {
                // Under the same lock as the check: a shutdown either refuses
                // this restart or waits for it.
                state.restarting_on = Some(thread::current().id());
            }
            checked
        };
        let (result, refused) = match checked {
            Err(refusal) => (Err(refusal.into()), true),
            Ok(draining) => (self.start_successor(draining, ready), false),
        };
        let coalesced = coalesce();
        if coalesced > 0 {
            info!("{coalesced} restart signals arrived during the restart; coalesced into it");
        }
        let pid = std::process::id();
        // `systemctl status` shows the last restart's outcome.
        match &result {
            Err(e) if refused => {
                warning!("restart refused: {e}");
                self.notify(&format!("STATUS=restart refused: {e}; pid {pid} serves on"));
            }
            Err(e) => {
                error!("restart failed, still serving: {e}");
                self.notify(&format!("STATUS=restart failed: {e}; pid {pid} serves on"));
            }
            Ok(successor) => self.notify(&format!(
                "STATUS=restarted: generation {} serves as pid {successor}",
                self.generation + 1
            )),
        }
        if !refused {
            // Only now, with the outcome logged: a shutdown waiting for this
            // restart may end the process at once.
            self.lock_quietly().restarting_on = None;
            self.restart_ended.notify_all();
        }
        result
    }

    /// Refuses a restart that would make two hand-overs overlap, or more than
    /// [`MAX_DRAINING`] generations drain at once; otherwise says which older
    /// generations (this one included) may drain once the successor serves.
    pub(super) fn check_may_restart(&self, state: &mut State) -> Result<Draining, Refusal> {
        match state.phase {
            Phase::Starting => return Err(Refusal::NotReady),
            Phase::Draining => return Err(Refusal::Draining),
            Phase::Serving => {}
        }
        // Older generations still draining (a long-lived connection, a slow
        // client, two deploys a second apart) do not hold up a restart: they
        // drain beside us, up to the cap.
        let older = self.older.draining(state.predecessor.as_ref());
        if older.count() + 1 > MAX_DRAINING {
            return Err(Refusal::TooManyDraining {
                older: older.count(),
            });
        }
        Ok(match older {
            Draining::Known(mut pids) => {
                pids.push(std::process::id() as i32);
                Draining::Known(pids)
            }
            Draining::Counted(count) => Draining::Counted(count + 1),
        })
    }
}
