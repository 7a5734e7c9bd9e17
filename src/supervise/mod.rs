//! The stable process of a service: `grestart run` (`launcher.rs`) and the
//! stub a container's first generation turns into (`stub.rs`).
//!
//! Whatever started the service (a container runtime, tini, systemd) watches
//! one process and ends the service when it exits. Generations come and go, so
//! that process must be one that stays: it reaps every orphan as an init does,
//! follows which generation serves through the notification protocol the
//! generations already speak (`MAINPID=`, `READY=1` on the `NOTIFY_SOCKET` it
//! gives them), forwards the operator's signals to that generation, and exits
//! with its status once no generation is left.
//!
//! For a program that does not link grestart ([`Restarter`]) it also does the
//! restart: it holds the listening sockets, starts a new instance with them,
//! waits for its `READY=1` and then asks the old one to stop.
//!
//! One thread, one `poll` over the notification socket and a `signalfd`: the
//! signals it handles are blocked, so they queue even for a PID 1 (which the
//! kernel spares every signal it has no handler for).
//!
//! The parts: following the generations is this file; starting an instance
//! of the program is `start.rs`; the restart of a program that does not link
//! grestart is `restart.rs`.

mod recovery;
mod restart;
mod start;

use std::ffi::OsString;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, geteuid};

use crate::control::{Control, Reply, Request};
use crate::error::with_context;
use crate::log::{debug, error, info, warning};
use crate::notify::{self, Message};

pub(crate) use recovery::{Probe, Recovery};
pub(crate) use restart::Restarter;

/// The signals an operator sends a service, forwarded to the serving generation.
pub(crate) const FORWARDED: [Signal; 6] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// The stable process's state.
pub(crate) struct Supervisor {
    notify: notify::Listener,
    signals: SignalFd,
    forwarded: Vec<Signal>,
    /// Our own service manager's `NOTIFY_SOCKET`, when we run under systemd.
    upstream: Option<OsString>,
    /// The generation that serves now: the operator's signals go to it.
    serving: Option<i32>,
    /// How the last serving generation ended, as a shell reports it.
    ended: i32,
    /// The serving generation that died while another process was its
    /// parent: its status is the service's when it is reparented and reaped.
    gone: Option<i32>,
    /// For a program that does not link grestart: the restart is ours.
    restarter: Option<Restarter>,
    /// `grestart restart` reaches us here (`control.rs`).
    control: Option<Control>,
    /// Clients waiting for the outcome of the restart under way.
    waiting: Vec<Request>,
    /// The sockets and the last good release, for `grestart run`
    /// (`recovery.rs`).
    recovery: Option<Recovery>,
    /// The operator asked the service to stop: a generation's end is not a crash.
    stopping: bool,
    /// The signals a program we start gets ignored, and how long its exec may take.
    restart_signal_ignored: u64,
    ready_timeout: Duration,
}

impl Supervisor {
    /// Takes over the signals it handles (blocked from now on in this thread,
    /// which must be the process's only one) and becomes the reaper of every
    /// orphan below it.
    pub(crate) fn new(
        notify: notify::Listener,
        forwarded: Vec<Signal>,
        restarter: Option<Restarter>,
    ) -> io::Result<Supervisor> {
        let mut handled = Supervisor::handled(&forwarded);
        if let Some(restarter) = &restarter {
            handled.add(restarter.restart_signal);
        }
        handled
            .thread_block()
            .map_err(|e| with_context(e.into(), "cannot block the supervised signals"))?;
        let signals =
            SignalFd::with_flags(&handled, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
                .map_err(|e| with_context(e.into(), "cannot create a signalfd"))?;
        if std::process::id() != 1 {
            // A generation's successor is its child; when the generation exits
            // the successor must become ours, not the init's.
            nix::sys::prctl::set_child_subreaper(true)
                .map_err(|e| with_context(e.into(), "cannot become a child subreaper"))?;
        }
        Ok(Supervisor {
            notify,
            signals,
            forwarded,
            upstream: std::env::var_os("NOTIFY_SOCKET"),
            serving: None,
            ended: 0,
            gone: None,
            restarter,
            control: Control::bind()
                .inspect_err(|e| warning!("`grestart restart` cannot reach the supervisor: {e}"))
                .ok(),
            waiting: Vec::new(),
            recovery: None,
            stopping: false,
            restart_signal_ignored: 0,
            ready_timeout: crate::limits::DEFAULT_READY_TIMEOUT,
        })
    }

    /// Brings the last good release back when the serving generation dies;
    /// `ignored`: the signals a program we start gets ignored.
    pub(crate) fn recover_with(
        &mut self,
        recovery: Recovery,
        ignored: u64,
        ready_timeout: Duration,
    ) {
        self.recovery = Some(recovery);
        self.restart_signal_ignored = ignored;
        self.ready_timeout = ready_timeout;
    }

    /// The signals a supervisor forwarding `forwarded` takes over.
    pub(crate) fn handled(forwarded: &[Signal]) -> SigSet {
        let mut handled: SigSet = forwarded.iter().copied().collect();
        handled.add(Signal::SIGCHLD);
        handled
    }

    /// Follows `pid` as the serving generation.
    pub(crate) fn serve(&mut self, pid: i32) {
        self.serving = Some(pid);
        self.watch_serving(pid, None);
    }

    /// Runs until no generation is left; returns the exit status to leave with.
    pub(crate) fn run(mut self) -> i32 {
        loop {
            // Notifications first: a generation that hands over names its
            // successor (`MAINPID=`) before it exits, and its exit must not be
            // taken for the end of the service.
            while let Some(message) = self.notify.receive() {
                self.on_message(message);
            }
            if self.reap() {
                return self.ended;
            }
            self.check_pending();
            self.check_probation();
            let deadline = match (self.next_deadline(), self.probation_deadline()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let timeout = deadline.map_or(PollTimeout::NONE, |left| {
                PollTimeout::try_from(left.max(Duration::from_millis(1)))
                    .unwrap_or(PollTimeout::MAX)
            });
            let mut fds = vec![
                PollFd::new(self.notify.socket().as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            let control = (self.control.as_ref()).map(|c| PollFd::new(c.fd(), PollFlags::POLLIN));
            let serving = (self.recovery.as_ref().and_then(|r| r.pidfd()))
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN));
            let (has_control, has_serving) = (control.is_some(), serving.is_some());
            fds.extend(control);
            fds.extend(serving);
            if let Err(e) = poll(&mut fds, timeout) {
                if e != Errno::EINTR {
                    error!("supervisor: poll failed: {e}");
                    return 1;
                }
            }
            let fired = |fd: Option<&PollFd>| fd.is_some_and(|fd| fd.any() == Some(true));
            let requested = has_control && fired(fds.get(2));
            let died = has_serving && fired(fds.last());
            drop(fds);
            if died {
                self.on_serving_exit_seen();
            }
            if requested {
                let requests = self.control.as_ref().map(Control::requests);
                for request in requests.unwrap_or_default() {
                    self.on_request(request);
                }
            }
            while let Ok(Some(info)) = self.signals.read_signal() {
                if let Ok(signal) = Signal::try_from(info.ssi_signo as i32) {
                    self.on_signal(signal);
                }
            }
        }
    }

    /// Reaps every child that exited; `true` once no child is left.
    fn reap(&mut self) -> bool {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid.as_raw(), 128 + signal as i32),
                Ok(WaitStatus::StillAlive) => return false,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => return true, // ECHILD: nothing left below us
            };
            self.on_exit(pid, status);
        }
    }

    fn on_exit(&mut self, pid: i32, status: i32) {
        let pending = self
            .restarter
            .as_mut()
            .and_then(|r| r.pending.take_if(|p| p.pid == pid));
        if pending.is_some() {
            error!(
                "restart failed: new instance {pid} exited with status {status} before it was \
                 ready; {} serves on",
                self.describe_serving()
            );
            self.relay(
                "READY=1\nSTATUS=restart failed: the new instance exited before it was ready",
            );
            self.answer_waiting(Reply::Failed(
                libc::ECHILD,
                format!("the new instance {pid} exited with status {status} before it was ready"),
            ));
        } else if self.serving == Some(pid) {
            info!("serving generation {pid} exited with status {status}");
            self.serving = None;
            self.ended = status;
            self.serving_died(pid, Some(status));
        } else if self.gone == Some(pid) {
            debug!("reaped {pid}, which served (status {status})");
            (self.gone, self.ended) = (None, status);
        } else {
            debug!("reaped {pid} (status {status})");
        }
    }

    fn on_message(&mut self, mut message: Message) {
        let uid = geteuid().as_raw();
        if message.uid != uid && message.uid != 0 {
            warning!(
                "ignoring a notification from pid {} of another user (uid {})",
                message.pid,
                message.uid
            );
            return;
        }
        if let Some(main) = message.get("MAINPID") {
            // A process may name only itself: nobody redirects our signals elsewhere.
            match main.trim().parse::<i32>() {
                Ok(pid) if pid == message.pid => {
                    if self.serving != Some(pid) {
                        info!("generation {pid} serves now");
                    }
                    self.serving = Some(pid);
                    let asked = (message.get(notify::PROBATION))
                        .and_then(|ms| ms.trim().parse().ok())
                        .map(Duration::from_millis);
                    self.watch_serving(pid, asked);
                }
                _ => warning!("ignoring MAINPID={main} sent by pid {}", message.pid),
            }
        }
        let ready = message.get("READY") == Some("1");
        if ready && self.serving == Some(message.pid) {
            self.ready_seen(message.pid);
        }
        let pending = self.restarter.as_ref().and_then(|r| r.pending.as_ref());
        if ready && pending.is_some_and(|p| p.pid == message.pid) {
            self.promote();
        }
        if message.get("FDSTORE") == Some("1") {
            let name = message.get("FDNAME").unwrap_or("stored").to_string();
            match self.recovery.as_mut() {
                Some(recovery) => recovery.keep(&name, std::mem::take(&mut message.fds)),
                None => debug!("not keeping the fds {} sent (FDSTORE=1)", message.pid),
            }
        }
        // Our own manager follows us, not the generations: their pids stay
        // ours, and so do the sockets they store.
        let relayed: Vec<&str> = (message.text.lines())
            .filter(|line| {
                !["MAINPID=", "FDSTORE=", "FDNAME=", "FDPOLL="]
                    .iter()
                    .any(|k| line.starts_with(k))
            })
            .collect();
        if !relayed.is_empty() {
            self.relay(&relayed.join("\n"));
        }
    }

    fn on_signal(&mut self, signal: Signal) {
        if signal == Signal::SIGCHLD {
            return; // reaped at the top of the loop
        }
        if let Some(restarter) = &self.restarter {
            if signal == restarter.restart_signal {
                self.restart();
                return;
            }
        }
        if !self.forwarded.contains(&signal) {
            return;
        }
        if [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT].contains(&signal) {
            self.stopping = true;
        }
        let pending = self.restarter.as_ref().and_then(|r| r.pending.as_ref());
        for pid in self.serving.iter().chain(pending.map(|p| &p.pid)) {
            debug!("forwarding {signal} to {pid}");
            let _ = kill(Pid::from_raw(*pid), signal);
        }
    }

    fn describe_serving(&self) -> String {
        self.serving
            .map_or_else(|| "nobody".to_string(), |pid| format!("pid {pid}"))
    }

    fn relay(&self, message: &str) {
        if let Err(e) = notify::sd_notify(self.upstream.as_ref(), message) {
            warning!("cannot notify our service manager ({message:?}): {e}");
        }
    }
}
