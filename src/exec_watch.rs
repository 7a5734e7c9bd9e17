//! A successor stuck in its exec.
//!
//! The spawn waits for the child's exec to end (`CLONE_VFORK`, see
//! `spawn/`), and the exec of a program on a hung mount (an NFS server gone,
//! a FUSE daemon stuck) does not end: the restarting thread would wait for
//! ever, a shutdown would wait for that restart, and the ready timeout would
//! never start. An [`ExecWatch`] kills such a child from a thread of its own,
//! the watchdog: once the restart's deadline has passed, or at once when one
//! of its `abandon` fds turns readable (this process was told to stop). Those
//! waits in the kernel end on `SIGKILL`, and once the child is gone the spawn
//! returns and reports why.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::error::with_context;
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
    /// Readable once the stage is over: the watchdog leaves.
    ended: EventFd,
    abandon: Vec<BorrowedFd<'static>>,
    /// The restart's deadline, and the timeout it was computed from (for the
    /// message).
    deadline: Instant,
    timeout: Duration,
}

impl ExecWatch {
    /// A watch for a spawn that must have exec'd within `timeout` from now,
    /// and is given up as soon as one of `abandon` turns readable.
    pub(crate) fn new(
        timeout: Duration,
        abandon: Vec<BorrowedFd<'static>>,
    ) -> io::Result<Arc<ExecWatch>> {
        let ended = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| with_context(e.into(), "cannot create the exec watch's eventfd"))?;
        Ok(Arc::new(ExecWatch {
            pidfd: AtomicI32::new(-1),
            stage: Mutex::new(Stage::Execing),
            ended,
            abandon,
            deadline: Instant::now() + timeout,
            timeout,
        }))
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
    /// ended by the deadline or the spawn is abandoned, and leaves as soon as
    /// the exec has ended.
    pub(crate) fn start_watchdog(self: &Arc<Self>) -> io::Result<()> {
        let watch = Arc::clone(self);
        signal::spawn_thread("grestart-exec", move || watch.watchdog())
    }

    fn watchdog(&self) {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return self.kill(Why::TimedOut);
            }
            let wait = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            let mut fds: Vec<PollFd<'_>> = [self.ended.as_fd()]
                .into_iter()
                .chain(self.abandon.iter().copied())
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // We cannot wait for the exec: kill at the deadline only.
                    crate::log::warning!("the exec watchdog cannot poll: {e}");
                    drop(fds);
                    std::thread::sleep(left);
                    continue;
                }
            }
            if fds[0].any() == Some(true) {
                return;
            }
            if fds[1..].iter().any(|fd| fd.any() == Some(true)) {
                return self.kill(Why::Abandoned);
            }
        }
    }

    /// Kills the child if its exec has not ended yet; nothing otherwise.
    fn kill(&self, why: Why) {
        let mut stage = self.lock();
        if *stage != Stage::Execing {
            return;
        }
        // Before the clone has stored it there is no child yet: the spawn
        // sees the stage and kills the child itself.
        let pidfd = self.pidfd.load(Ordering::SeqCst);
        if pidfd >= 0 {
            // SAFETY: the pidfd the clone made: the spawning thread does not
            // own it (nor close it) before it has ended the stage, which our
            // lock holds back.
            let pidfd = unsafe { BorrowedFd::borrow_raw(pidfd) };
            let _ = crate::sys::pidfd_signal(pidfd, libc::SIGKILL);
        }
        *stage = Stage::Killed(why);
    }

    /// Called by the spawning thread once the spawn returned: the watchdog
    /// leaves, and the pidfd is the caller's. What happened meanwhile.
    pub(crate) fn end(&self) -> Stage {
        let stage = std::mem::replace(&mut *self.lock(), Stage::Over);
        if let Err(e) = self.ended.write(1) {
            // The watchdog then leaves at the deadline, its kill a no-op.
            crate::log::warning!("cannot tell the exec watchdog the exec ended: {e}");
        }
        stage
    }

    fn lock(&self) -> MutexGuard<'_, Stage> {
        self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }
}
