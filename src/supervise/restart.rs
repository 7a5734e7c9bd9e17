//! The restart of a program that does not link grestart: the stable process
//! holds its listening sockets, starts a new instance with them, waits for its
//! `READY=1` (or the ready delay) and then asks the old one to stop.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Supervisor;
use crate::control::{Asked, Reply, Request};
use crate::log::{error, info};
use crate::notify;

/// Restarts a program that takes its sockets the systemd way (`LISTEN_FDS`)
/// but knows nothing of grestart.
pub(crate) struct Restarter {
    pub exe: CString,
    pub argv: Vec<CString>,
    pub listeners: Vec<(String, OwnedFd)>,
    pub restart_signal: Signal,
    /// Asks an instance to stop gracefully once its successor is ready.
    pub stop_signal: Signal,
    /// For programs that never send `READY=1`: ready once alive this long.
    pub ready_delay: Option<Duration>,
    pub ready_timeout: Duration,
    pub(super) pending: Option<Pending>,
}

/// A new instance that has not said it is ready yet.
pub(super) struct Pending {
    pub(super) pid: i32,
    started: Instant,
}

impl Restarter {
    pub(crate) fn new(
        exe: CString,
        argv: Vec<CString>,
        listeners: Vec<(String, OwnedFd)>,
        restart_signal: Signal,
        stop_signal: Signal,
        ready_delay: Option<Duration>,
        ready_timeout: Duration,
    ) -> Restarter {
        Restarter {
            exe,
            argv,
            listeners,
            restart_signal,
            stop_signal,
            ready_delay,
            ready_timeout,
            pending: None,
        }
    }
}

impl Supervisor {
    /// A `grestart restart`: ours to do for a program that does not link
    /// grestart, the serving generation's otherwise.
    pub(super) fn on_request(&mut self, request: Request) {
        if let Asked::Probation(pid) = request.asked {
            return self.on_probation_request(request, pid);
        }
        if self.restarter.is_none() {
            match self.serving {
                Some(pid) if self.recovery.is_some() => request.answer(&Reply::Supervised(pid)),
                Some(pid) => request.answer(&Reply::Ask(pid)),
                None => request.answer(&Reply::Failed(libc::ESRCH, "no generation serves".into())),
            }
            return;
        }
        self.waiting.push(request);
        self.restart();
    }

    /// Tells the clients waiting for the restart its outcome.
    pub(super) fn answer_waiting(&mut self, reply: Reply) {
        for request in self.waiting.drain(..) {
            request.answer(&reply);
        }
    }

    /// The restart of a program that does not link grestart.
    pub(super) fn restart(&mut self) {
        let Some(restarter) = &self.restarter else {
            return;
        };
        if let Some(pending) = &restarter.pending {
            info!(
                "restart requested during the restart to {}; coalesced into it",
                pending.pid
            );
            return;
        }
        info!("restart requested");
        self.relay(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let started = Instant::now();
        match self.start(
            &restarter.exe,
            &restarter.argv,
            0,
            Some(restarter.ready_timeout),
            None,
        ) {
            Ok(pid) => {
                info!(
                    "new instance {pid} started, waiting up to {:?} for it to be ready",
                    restarter.ready_timeout
                );
                let restarter = self.restarter.as_mut().expect("checked above");
                restarter.pending = Some(Pending { pid, started });
            }
            Err(e) => {
                error!("restart failed, {} serves on: {e}", self.describe_serving());
                self.relay(&format!("READY=1\nSTATUS=restart failed: {e}"));
                self.answer_waiting(Reply::of(&Err(e)));
            }
        }
    }

    /// The pending instance is ready: it serves, the old one stops.
    pub(super) fn promote(&mut self) {
        let Some(restarter) = self.restarter.as_mut() else {
            return;
        };
        let Some(pending) = restarter.pending.take() else {
            return;
        };
        let stop = restarter.stop_signal;
        let old = self.serving.replace(pending.pid);
        self.watch_serving(pending.pid, None);
        info!(
            "new instance {} ready after {} ms",
            pending.pid,
            pending.started.elapsed().as_millis()
        );
        if let Some(old) = old {
            info!("asking {old} to stop with {stop}");
            let _ = kill(Pid::from_raw(old), stop);
        }
        self.relay(&format!("READY=1\nSTATUS=serving: pid {}", pending.pid));
        let waiting = std::mem::take(&mut self.waiting);
        self.wait_for_probation(waiting);
    }

    /// Applies the ready delay and the ready timeout to the pending instance.
    pub(super) fn check_pending(&mut self) {
        let Some(restarter) = self.restarter.as_mut() else {
            return;
        };
        let Some(pending) = &restarter.pending else {
            return;
        };
        let elapsed = pending.started.elapsed();
        if restarter.ready_delay.is_some_and(|delay| elapsed >= delay) {
            self.promote();
        } else if elapsed >= restarter.ready_timeout {
            let pid = pending.pid;
            let timeout = restarter.ready_timeout;
            restarter.pending = None;
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            error!(
                "restart failed: new instance {pid} was not ready within {timeout:?}; killed it, \
                 {} serves on",
                self.describe_serving()
            );
            self.relay("READY=1\nSTATUS=restart failed: the new instance was not ready in time");
            self.answer_waiting(Reply::Failed(
                libc::ETIMEDOUT,
                format!("the new instance {pid} was not ready within {timeout:?}; killed it"),
            ));
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Duration> {
        let restarter = self.restarter.as_ref()?;
        let pending = restarter.pending.as_ref()?;
        let until = restarter
            .ready_delay
            .map_or(restarter.ready_timeout, |d| d.min(restarter.ready_timeout));
        Some(until.saturating_sub(pending.started.elapsed()))
    }
}
