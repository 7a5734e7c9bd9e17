//! Starting a successor and waiting for it to be ready. The spawn itself is
//! injected ([`Launch`]): a fork and exec in a process, a fake successor in
//! the unit tests, which drive the whole restart without one.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrStorage;

use super::Engine;
use crate::error::{fail, with_context};
use crate::exec_watch::ExecWatch;
use crate::handover::Heir;
use crate::log::{info, warning};
use crate::notify;
use crate::protocol;
use crate::signal;
use crate::spawn::{self, NotReady, Successor};
use crate::stub::Watch;

/// How a successor is started: the seam the unit tests fake.
pub(crate) trait Launch: Send + Sync {
    /// Starts `command` with `listeners` at fds 3.., and returns once its
    /// exec has ended; `watch` kills it if that takes past its deadline.
    fn start(
        &self,
        command: &Command<'_>,
        listeners: &[BorrowedFd<'_>],
        watch: &Arc<ExecWatch>,
    ) -> io::Result<Box<dyn Started>>;
}

/// A successor that was started and has not said "ready" yet.
pub(crate) trait Started: Send {
    fn pid(&self) -> i32;
    /// See [`Successor::wait_ready`].
    fn wait_ready(
        &self,
        exe: &CStr,
        deadline: Instant,
        abandon: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, NotReady>;
    /// Kills and reaps it; how it ended.
    fn kill(&self) -> String;
    /// Our end of the channel it said "ready" on: the heir's link.
    fn into_channel(self: Box<Self>) -> OwnedFd;
}

/// What a successor runs.
pub(crate) struct Command<'a> {
    pub exe: &'a CStr,
    pub argv: &'a [CString],
    pub cwd: &'a CStr,
    pub env: &'a [CString],
    /// The signals it starts with ignored.
    pub ignored: u64,
}

/// The real thing: a `CLONE_VM` spawn (`spawn.rs`).
pub(crate) struct Fork;

impl Launch for Fork {
    fn start(
        &self,
        command: &Command<'_>,
        listeners: &[BorrowedFd<'_>],
        watch: &Arc<ExecWatch>,
    ) -> io::Result<Box<dyn Started>> {
        let successor = spawn::spawn(
            command.exe,
            command.argv,
            command.cwd,
            command.env,
            listeners,
            command.ignored,
            spawn::Channel::Readiness,
            Some(watch),
        )?;
        Ok(Box::new(successor))
    }
}

impl Started for Successor {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn wait_ready(
        &self,
        exe: &CStr,
        deadline: Instant,
        abandon: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, NotReady> {
        Successor::wait_ready(self, exe, deadline, abandon)
    }

    fn kill(&self) -> String {
        Successor::kill(self)
    }

    fn into_channel(self: Box<Self>) -> OwnedFd {
        self.channel
    }
}

/// What a restart copies under the engine's lock, so that it spawns outside it.
struct Plan {
    exe: CString,
    argv: Vec<CString>,
    cwd: &'static CStr,
    names: Vec<String>,
    /// Duplicates of the listeners, closed once the successor has them.
    fds: Vec<OwnedFd>,
    timeout: Duration,
}

impl Engine {
    /// Starts a successor and, once it is ready, begins to drain; the pid that
    /// serves now. `draining`: the older generations (we included) that may
    /// drain while it serves. The ready timeout bounds it all, the successor's
    /// exec included; a stop (the shutdown fd, the stop signal) ends it.
    pub(super) fn start_successor(
        &'static self,
        draining: protocol::Draining,
        ready: impl FnOnce(i32),
    ) -> io::Result<i32> {
        let started = Instant::now();
        let plan = self.plan()?;
        let abandon: Vec<BorrowedFd<'static>> = [self.shutdown_event.as_fd()]
            .into_iter()
            .chain(signal::stopped_fd())
            .collect();
        let exec = ExecWatch::new(plan.timeout, abandon.clone())?;
        let listeners = (plan.names.iter().zip(&plan.fds))
            .map(|(name, fd)| {
                let bound = nix::sys::socket::getsockname(fd.as_raw_fd()).ok();
                (name.clone(), bound)
            })
            .collect::<Vec<_>>();
        let restart_signal = signal::current();
        let mut env = protocol::successor_env(
            std::env::vars_os(),
            &plan.names.iter().map(String::as_str).collect::<Vec<_>>(),
            self.generation,
            restart_signal,
            std::process::id(),
            self.ignoring,
            &draining,
        );
        env.extend(self.watch.as_ref().map(Watch::notify_entry));
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let command = Command {
            exe: &plan.exe,
            argv: &plan.argv,
            cwd: plan.cwd,
            env: &env,
            ignored: self.ignoring | signal::bit(restart_signal),
        };
        let fds = plan.fds.iter().map(AsFd::as_fd).collect::<Vec<_>>();
        let successor = (self.launch.start(&command, &fds, &exec))
            .inspect_err(|_| self.notify_serving(None))?;
        drop(plan.fds);
        info!(
            "successor {} started as generation {}, waiting up to {:?} for it to be ready",
            successor.pid(),
            self.generation + 1,
            plan.timeout
        );
        match successor.wait_ready(&plan.exe, exec.deadline(), &abandon) {
            Ok(said) => Ok(self.took_over(successor, listeners, &said, started, ready)),
            Err(not_ready) => Err(self.gave_up(&*successor, not_ready, plan.timeout)),
        }
    }

    /// The command, the listeners and the timeout, under the lock (which every
    /// setter, `gr_shutdown` and the hand-over take): nothing that can block
    /// (an exec from a hung mount, a notification) runs under it.
    fn plan(&'static self) -> io::Result<Plan> {
        let state = self.lock();
        let origin = self.origin.as_ref().map_err(|e| {
            fail(
                libc::ENOEXEC,
                format!("cannot tell how to start a successor: {e}"),
            )
        })?;
        let settings = &state.settings;
        let (names, fds) = state.registry.handed_over();
        let fds = (fds.iter())
            .map(|fd| fd.try_clone_to_owned())
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| with_context(e, "cannot duplicate a listener for the successor"))?;
        Ok(Plan {
            exe: settings.exe.clone().unwrap_or_else(|| origin.exe.clone()),
            argv: settings.argv.clone().unwrap_or_else(|| origin.argv.clone()),
            cwd: &origin.cwd,
            names: names.into_iter().map(String::from).collect(),
            fds,
            timeout: settings.ready_timeout,
        })
    }

    /// The successor is ready: it becomes our heir, and we drain.
    fn took_over(
        &'static self,
        successor: Box<dyn Started>,
        listeners: Vec<(String, Option<SockaddrStorage>)>,
        said: &[u8],
        started: Instant,
        ready: impl FnOnce(i32),
    ) -> i32 {
        let pid = successor.pid();
        let heir = Heir::new(successor.into_channel(), pid, listeners, said);
        info!(
            "successor {pid} ready after {} ms{}",
            started.elapsed().as_millis(),
            if heir.adopts() {
                ", adopts connections"
            } else {
                ""
            }
        );
        *self.heir_lock() = Some(heir);
        if let Some(watch) = &self.watch {
            watch.follow(pid);
        }
        ready(pid);
        self.begin_drain();
        self.relay_adopted();
        pid
    }

    /// The successor will not be ready: it is killed, and we serve on as before.
    fn gave_up(
        &self,
        successor: &dyn Started,
        not_ready: NotReady,
        timeout: Duration,
    ) -> io::Error {
        let err = match not_ready {
            NotReady::Failed(err) => err,
            NotReady::TimedOut => {
                let status = successor.kill();
                fail(
                    libc::ETIMEDOUT,
                    format!(
                        "successor {} was not ready within {timeout:?}; killed it, it {status}",
                        successor.pid()
                    ),
                )
            }
            NotReady::Abandoned => {
                let status = successor.kill();
                fail(
                    libc::ESHUTDOWN,
                    format!(
                        "this process was told to stop while successor {} was starting; \
                         killed it, it {status}",
                        successor.pid()
                    ),
                )
            }
        };
        self.notify_serving(None);
        // A successor that called gr_ready wrote its pid there, and is
        // gone now: `kill -USR2 $(cat pidfile)` must reach us.
        let pid_file = self.lock().settings.pid_file.clone();
        if let Some(path) = pid_file {
            if let Err(e) = notify::write_pid_file(&path) {
                warning!("cannot write the PID file {} again: {e}", path.display());
            }
        }
        err
    }
}
