//! The shutdown hooks: they run once, to completion, whoever asks first; a
//! later caller (another thread, the drain deadline) waits for them, but a
//! hook that calls `shutdown` (a cleanup helper does) returns at once: it
//! would wait for itself.

use std::io;
use std::mem;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use crate::error::fail;
use crate::log::{error, info};

/// A shutdown hook, run once in reverse order of registration.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

enum Stage {
    Pending(Vec<Hook>),
    /// On this thread.
    Running(ThreadId),
    Done,
}

pub(super) struct Hooks {
    stage: Mutex<Stage>,
    done: Condvar,
}

impl Hooks {
    pub(super) fn new() -> Hooks {
        Hooks {
            stage: Mutex::new(Stage::Pending(Vec::new())),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stage> {
        // Every update is a single assignment: a poisoned lock is consistent.
        self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `ESHUTDOWN` once they have begun to run.
    pub(super) fn add(&self, hook: Hook) -> io::Result<()> {
        match &mut *self.lock() {
            Stage::Pending(hooks) => {
                hooks.push(hook);
                Ok(())
            }
            _ => Err(fail(libc::ESHUTDOWN, "the shutdown hooks already ran")),
        }
    }

    /// Whether this thread is running the hooks: a hook calls back.
    pub(super) fn running_here(&self) -> bool {
        matches!(*self.lock(), Stage::Running(id) if id == thread::current().id())
    }

    /// Runs the hooks, or waits for the thread that runs them (unless that
    /// is this one: a hook called back). Whether this call ran them.
    pub(super) fn run(&self) -> bool {
        let hooks = {
            let mut stage = self.lock();
            let here = thread::current().id();
            match mem::replace(&mut *stage, Stage::Running(here)) {
                Stage::Pending(hooks) => hooks,
                other => {
                    let nested = matches!(other, Stage::Running(id) if id == here);
                    *stage = other;
                    if !nested {
                        drop(
                            self.done
                                .wait_while(stage, |s| !matches!(s, Stage::Done))
                                .unwrap_or_else(|e| e.into_inner()),
                        );
                    }
                    return false;
                }
            }
        };
        info!("running {} shutdown hooks", hooks.len());
        for hook in hooks.into_iter().rev() {
            if catch_unwind(AssertUnwindSafe(hook)).is_err() {
                error!("a shutdown hook panicked; running the others");
            }
        }
        *self.lock() = Stage::Done;
        self.done.notify_all();
        true
    }
}
