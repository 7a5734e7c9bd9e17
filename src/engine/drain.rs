//! The drain: the shutdown fd turns readable, the listeners are released, a
//! deadline (if set) ends the process; and the shutdown, which waits for the
//! work in flight and runs the hooks.

use std::os::fd::{AsFd, BorrowedFd};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::{Engine, Phase};
use crate::log::{error, info, warning};
use crate::notify;
use crate::signal;

impl Engine {
    /// Stops this generation: the shutdown fd turns readable and waiters wake.
    pub(super) fn begin_drain(&'static self) {
        // No successor: the service stops (systemd, or the launcher above us, hears it).
        let stopping = self.heir_lock().is_none();
        let mut state = self.lock();
        if state.phase == Phase::Draining {
            return;
        }
        state.phase = Phase::Draining;
        if stopping {
            self.notify("STOPPING=1");
        }
        state.registry.release();
        if let Err(e) = self.shutdown_event.write(1) {
            error!("cannot signal the drain on the shutdown fd: {e}");
        }
        let Some(deadline) = state.settings.drain_deadline else {
            info!("draining (no deadline)");
            return;
        };
        info!("draining (deadline {deadline:?})");
        let spawned = signal::spawn_thread("grestart-drain", move || {
            thread::sleep(deadline);
            self.finish_hand_overs();
            if !self.hooks.run() {
                // An application thread ran them in its own shutdown: what it
                // does after that (final output, its own cleanup) is its own,
                // and it exits when it is done.
                info!("drain deadline of {deadline:?} passed during the application's shutdown");
                return;
            }
            warning!("drain deadline of {deadline:?} passed with work still in flight; exiting");
            flush_standard_output();
            if let Some(watch) = &self.watch {
                watch.become_stub();
            }
            // SAFETY: leave without running atexit handlers (C++ static
            // destructors) under the feet of the threads still working.
            unsafe { libc::_exit(0) }
        });
        if let Err(e) = spawned {
            error!("cannot arm the drain deadline: {e}");
        }
    }

    pub(crate) fn shutdown_fd(&'static self) -> BorrowedFd<'static> {
        self.shutdown_event.as_fd()
    }

    /// Waits until this process must drain; `false` when `timeout` passed
    /// first. Polls the shutdown fd rather than waiting on the state, so that a
    /// forked worker (whose memory the master no longer writes) wakes too.
    pub(crate) fn wait_shutdown(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let timeout = match left {
                None => PollTimeout::NONE,
                Some(left) => PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX),
            };
            let mut fds = [PollFd::new(self.shutdown_event.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => return true,
                Ok(_) if left.is_some_and(|l| l.is_zero()) => return false,
                // EINTR, or a timeout capped at PollTimeout::MAX: look again.
                _ => {}
            }
        }
    }

    /// Drains (if not already), waits for the work in flight, and runs the
    /// hooks, once; a second caller waits for them to finish.
    pub(crate) fn shutdown(&'static self) {
        if self.hooks.running_here() {
            return;
        }
        self.begin_drain();
        // A successor still starting sees the drain and is stopped (see
        // `start_successor`), also one whose exec hangs; wait for that, unless
        // we are that restart.
        let here = thread::current().id();
        let state = self.lock_quietly();
        drop(
            self.restart_ended
                .wait_while(state, |s| s.restarting_on.is_some_and(|t| t != here))
                .unwrap_or_else(|e| e.into_inner()),
        );
        let in_flight = self.work.in_flight();
        if in_flight > 0 {
            info!("waiting for {in_flight} pieces of work in flight");
            self.work.wait_for_none();
        }
        self.finish_hand_overs();
        let _ = self.hooks.run();
        let succeeded = self.heir_lock().is_some();
        let state = self.lock();
        if !succeeded {
            if let Some(path) = &state.settings.pid_file {
                notify::remove_pid_file(path);
            }
        }
    }
}

/// Writes out what Rust's and C's standard output buffer, before `_exit`
/// (which does not). Another thread may hold Rust's stdout lock, stuck
/// writing to a full pipe: wait for it only a moment.
fn flush_standard_output() {
    let (flushed, done) = std::sync::mpsc::channel();
    let flushing = signal::spawn_thread("grestart-flush", move || {
        let _ = std::io::Write::flush(&mut std::io::stdout());
        let _ = flushed.send(());
    });
    if flushing.is_ok() {
        let _ = done.recv_timeout(Duration::from_millis(200));
    }
    // SAFETY: fflush(NULL) flushes every C stdio stream.
    unsafe { libc::fflush(std::ptr::null_mut()) };
}
