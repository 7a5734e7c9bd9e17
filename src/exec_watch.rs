//! A successor stuck in its exec.
//!
//! The spawn waits for the child's exec to end (`CLONE_VFORK`, see
//! `spawn.rs`), and the exec of a program on a hung mount (an NFS server gone,
//! a FUSE daemon stuck) does not end: the restarting thread would wait for
//! ever, a shutdown would wait for that restart, and the ready timeout would
//! never start. An [`ExecWatch`] lets another thread kill such a child: its
//! watchdog once the restart's deadline has passed, or a shutdown that
//! abandons the restart. Those waits in the kernel end on `SIGKILL`, and once
//! the child is gone the spawn returns and reports why.

use std::io;
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::signal;

/// Why the child was killed before its exec ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Why {
    /// The restart's deadline (the ready timeout) passed.
    TimedOut,
    /// This process was told to stop.
    Abandoned,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Stage {
    Execing,
    Killed(Why),
    Over,
}

pub(crate) struct ExecWatch {
    /// Where the clone stores the child's pidfd (`CLONE_PIDFD`), -1 before.
    /// Used only while the stage is `Execing`, under its lock: the spawning
    /// thread owns the fd once it has ended the stage.
    pidfd: AtomicI32,
    stage: Mutex<Stage>,
    changed: Condvar,
    /// The restart's deadline, and the timeout it was computed from (for the
    /// message).
    deadline: Instant,
    timeout: Duration,
}

impl ExecWatch {
    /// A watch for a spawn that must have exec'd within `timeout` from now.
    pub(crate) fn new(timeout: Duration) -> Arc<ExecWatch> {
        Arc::new(ExecWatch {
            pidfd: AtomicI32::new(-1),
            stage: Mutex::new(Stage::Execing),
            changed: Condvar::new(),
            deadline: Instant::now() + timeout,
            timeout,
        })
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The memory the clone stores the child's pidfd in.
    pub(crate) fn pidfd_slot(&self) -> *mut i32 {
        self.pidfd.as_ptr()
    }

    /// Starts the watchdog: a thread that kills the child if its exec has not
    /// ended by the deadline, and leaves as soon as it has.
    pub(crate) fn start_watchdog(self: &Arc<Self>) -> io::Result<()> {
        let watch = Arc::clone(self);
        signal::spawn_thread("grestart-exec", move || {
            let mut stage = watch.lock();
            while *stage == Stage::Execing {
                let left = watch.deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    watch.kill_locked(&mut stage, Why::TimedOut);
                    return;
                }
                stage = (watch.changed.wait_timeout(stage, left))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        })
    }

    /// Kills the child if its exec has not ended yet; nothing otherwise.
    pub(crate) fn kill(&self, why: Why) {
        self.kill_locked(&mut self.lock(), why);
    }

    fn kill_locked(&self, stage: &mut Stage, why: Why) {
        if *stage != Stage::Execing {
            return;
        }
        // Before the clone has stored it there is no child yet: the spawn
        // sees the stage and kills the child itself.
        let pidfd = self.pidfd.load(Ordering::SeqCst);
        if pidfd >= 0 {
            // SAFETY: pidfd_send_signal with the pidfd the clone made; the
            // spawning thread does not own it (nor close it) before it has
            // ended the stage, which our lock holds back. A pidfd cannot
            // reach a recycled pid.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd,
                    libc::SIGKILL,
                    ptr::null::<()>(),
                    0,
                )
            };
        }
        *stage = Stage::Killed(why);
    }

    /// Called by the spawning thread once the spawn returned: the watchdog
    /// leaves, and the pidfd is the caller's. What happened meanwhile.
    pub(crate) fn end(&self) -> Stage {
        let stage = std::mem::replace(&mut *self.lock(), Stage::Over);
        self.changed.notify_all();
        stage
    }

    fn lock(&self) -> MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }
}
