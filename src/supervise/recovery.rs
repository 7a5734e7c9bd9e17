//! Probation, rollback and crash recovery: the stable process keeps the
//! service's sockets and the last good release, so that no generation's death
//! closes the port or leaves it to a release that cannot serve.
//!
//! * **The sockets.** A program that links grestart leaves a copy of each
//!   listener with us when it is ready (`FDSTORE=1`, `FDNAME=`, the way
//!   systemd's file-descriptor store takes them; the launcher sets `$FDSTORE`
//!   for it); for a program that does not, the launcher holds them already.
//! * **The last good release** is an fd of the executable the serving
//!   generation runs (`/proc/PID/exe`, opened while it serves), so a deploy
//!   may flip the symlink and delete that release: it is started from the fd.
//! * **Probation.** A generation that takes over from a good one is on
//!   probation for a window. If it dies in it (any end we did not ask for,
//!   but exit status 0) or
//!   fails the health probe, the last good release is started with the same
//!   sockets: connections wait in the kernel's queues meanwhile, none is
//!   refused. A rolled-back release is not tried again until the next restart
//!   signal. Past the window it is the last good release.
//! * **A crash outside a restart** (the serving generation killed at 3 a.m.)
//!   starts the last good release the same way, once per window: a release
//!   that dies again that soon is left dead, and the service ends as before.
//!
//! The alternative, an old generation that waits out the window paused, holds
//! all of its memory for the window and serves nothing: see
//! docs/architecture.md, "Probation and rollback".

use std::ffi::{CString, OsString};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Supervisor;
use crate::control::{Reply, Request};
use crate::error::{fail, with_context};
use crate::log::{error, info, warning};

/// How often the health probe runs during a probation.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A probe not answered by then fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Probes failed in a row that make a generation unhealthy.
const PROBE_FAILURES: u32 = 2;
/// How soon a generation that could not be read (between two execs) is read again.
const RETRY_KEEP: Duration = Duration::from_millis(20);
/// However short the probation: a release restored less than this ago that
/// dies again is not restored again.
const MIN_RESTORE_INTERVAL: Duration = Duration::from_secs(1);

/// What the launcher needs to bring the service back.
pub(crate) struct Recovery {
    pub probation: Duration,
    pub health: Option<Probe>,
    /// The sockets generations left with us, by name.
    store: Vec<(String, OwnedFd)>,
    /// The last release that passed its probation.
    last_good: Option<Kept>,
    /// The serving generation, followed by its pidfd.
    watched: Option<Watched>,
    /// A serving generation whose executable cannot be kept (not dumpable:
    /// file capabilities, setuid): not retried.
    unkept: Option<i32>,
    /// When we last started the last good release by ourselves.
    restored_at: Option<Instant>,
    /// The last generation rolled back, and why: a client may ask after it.
    rolled_back: Option<(i32, String)>,
    /// Clients waiting for the end of the probation.
    waiting: Vec<Request>,
}

#[derive(Clone)]
/// A generation as it was started: its executable kept open (it can be
/// started after its file is gone), its arguments and its environment.
struct Kept {
    pid: i32,
    exe: Rc<OwnedFd>,
    argv: Vec<CString>,
    env: Vec<(OsString, OsString)>,
}

struct Watched {
    kept: Kept,
    /// Readable once it has exited; taken when it fired.
    pidfd: Option<OwnedFd>,
    /// On probation until then.
    until: Option<Instant>,
    next_probe: Instant,
    probes_failed: u32,
}

/// `--health-check http://HOST:PORT/PATH`: a 2xx answer is healthy. A probe
/// runs in the launcher's loop and holds it for at most `PROBE_TIMEOUT`.
#[derive(Debug, PartialEq)]
pub(crate) struct Probe {
    addr: SocketAddr,
    host: String,
    pub(crate) path: String,
}

impl Probe {
    pub(crate) fn parse(url: &str) -> io::Result<Probe> {
        let bad = || {
            fail(
                libc::EINVAL,
                format!("--health-check wants http://HOST:PORT/PATH, not {url:?}"),
            )
        };
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = (host.to_socket_addrs().map_err(|_| bad())?.next()).ok_or_else(bad)?;
        Ok(Probe {
            addr,
            host: host.to_string(),
            path: if path.is_empty() { "/" } else { path }.to_string(),
        })
    }

    /// One GET on a new connection; `Err` says why it is not healthy.
    fn check(&self) -> Result<(), String> {
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let left = || {
            let left = deadline.saturating_duration_since(Instant::now());
            Some(left.max(Duration::from_millis(1)))
        };
        let stream = TcpStream::connect_timeout(&self.addr, PROBE_TIMEOUT)
            .map_err(|e| format!("connect to {}: {e}", self.addr))?;
        let _ = stream.set_write_timeout(left());
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        (&stream)
            .write_all(request.as_bytes())
            .map_err(|e| format!("send: {e}"))?;
        // The status line, at most 1 KiB of it, by the deadline.
        let mut status = Vec::new();
        let mut byte = [0u8; 1];
        while status.len() < 1024 && !status.ends_with(b"\n") {
            let _ = stream.set_read_timeout(left());
            match (&stream).read(&mut byte) {
                Ok(1) => status.push(byte[0]),
                Ok(_) => break,
                Err(e) => return Err(format!("read: {e}")),
            }
            if Instant::now() >= deadline {
                return Err(format!("no answer within {PROBE_TIMEOUT:?}"));
            }
        }
        let status = String::from_utf8_lossy(&status);
        match status.split(' ').nth(1) {
            Some(code) if code.starts_with('2') => Ok(()),
            _ => Err(format!("answered {:?}", status.trim_end())),
        }
    }
}

impl Recovery {
    pub(crate) fn new(probation: Duration, health: Option<Probe>) -> Recovery {
        Recovery {
            probation,
            health,
            store: Vec::new(),
            last_good: None,
            watched: None,
            unkept: None,
            restored_at: None,
            rolled_back: None,
            waiting: Vec::new(),
        }
    }

    /// The sockets a generation left with us (`FDSTORE=1`): one of each
    /// socket, the newest under a name.
    pub(super) fn keep(&mut self, name: &str, fds: Vec<OwnedFd>) {
        for fd in fds {
            if self
                .store
                .iter()
                .any(|(_, kept)| same_socket(kept.as_fd(), fd.as_fd()))
            {
                continue;
            }
            self.store.retain(|(kept, _)| kept != name);
            info!("holding the listener {name:?} for the next generation");
            self.store.push((name.to_string(), fd));
        }
    }

    pub(super) fn stored(&self) -> &[(String, OwnedFd)] {
        &self.store
    }

    /// The pidfd of the serving generation, while it has not fired.
    pub(super) fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.watched.as_ref()?.pidfd.as_ref().map(AsFd::as_fd)
    }
}

impl Supervisor {
    /// `pid` serves now: follow it, on probation when it took over from a
    /// good release (for the window it `asked` for, or ours).
    pub(super) fn watch_serving(&mut self, pid: i32, asked: Option<Duration>) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        if recovery.watched.as_ref().is_some_and(|w| w.kept.pid == pid) {
            return;
        }
        recovery.watched = None;
        let kept = match keep_executable(pid) {
            Ok(kept) => kept,
            // Between two execs (a wrapper that execs the server) /proc shows
            // no command line yet: `check_probation` looks again shortly.
            Err(e) if crate::error::errno_of(&e) == libc::EAGAIN => return,
            Err(e) => {
                recovery.unkept = Some(pid); // not looked at again
                return warning!("cannot keep the executable of {pid}; no rollback to it: {e}");
            }
        };
        let pidfd = crate::sys::pidfd_open(pid)
            .inspect_err(|e| warning!("cannot follow {pid} ({e}); its death is seen when reaped"))
            .ok();
        // The first generation, or the good one again (a failed restart).
        let known_good = (recovery.last_good.as_ref()).is_none_or(|good| good.pid == pid);
        let window = asked.unwrap_or(recovery.probation);
        let until = (!known_good && !window.is_zero()).then(|| Instant::now() + window);
        if until.is_some() {
            info!("generation {pid} is on probation for {window:?}");
        }
        recovery.watched = Some(Watched {
            kept,
            pidfd,
            until,
            next_probe: Instant::now() + PROBE_EVERY,
            probes_failed: 0,
        });
        if until.is_none() {
            self.passed_probation();
        }
    }

    /// `pid` said it is ready: read again how it was started. A program the
    /// launcher starts may be a wrapper (`env`, a shell script) that execs the
    /// server only after we first looked.
    pub(super) fn ready_seen(&mut self, pid: i32) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let Some(watched) = recovery.watched.as_mut().filter(|w| w.kept.pid == pid) else {
            return;
        };
        match keep_executable(pid) {
            Ok(kept) => watched.kept = kept,
            Err(e) => warning!("cannot keep the executable of {pid}: {e}"),
        }
        if watched.until.is_none() {
            recovery.last_good = Some(watched.kept.clone());
        }
    }

    /// The serving generation passed (or needs no) probation: it is the last
    /// good release, and the clients waiting for the outcome hear it.
    fn passed_probation(&mut self) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let Some(watched) = recovery.watched.as_mut() else {
            return;
        };
        let pid = watched.kept.pid;
        let was_on_probation = watched.until.take().is_some();
        recovery.last_good = Some(watched.kept.clone());
        self.answer_probation(&Reply::Restarted(pid));
        if was_on_probation {
            info!("generation {pid} passed its probation; it is the last good release");
            self.relay(&format!("STATUS=serving: pid {pid}"));
        }
    }

    /// A `grestart restart` that heard of a new generation asks how its
    /// probation ends.
    pub(super) fn on_probation_request(&mut self, request: Request, pid: i32) {
        // Its `MAINPID=` may still wait in our queue.
        while let Some(message) = self.notify.receive() {
            self.on_message(message);
        }
        let Some(recovery) = self.recovery.as_mut() else {
            return request.answer(&Reply::Restarted(pid));
        };
        match &recovery.watched {
            Some(w) if w.kept.pid == pid && w.until.is_some() => recovery.waiting.push(request),
            _ => match &recovery.rolled_back {
                Some((gone, why)) if *gone == pid => {
                    request.answer(&Reply::Failed(libc::ECANCELED, why.clone()))
                }
                _ if self.serving == Some(pid) => request.answer(&Reply::Restarted(pid)),
                _ => request.answer(&Reply::Failed(
                    libc::ESRCH,
                    format!("generation {pid} does not serve"),
                )),
            },
        }
    }

    /// A restart the launcher did itself: its clients wait for the probation.
    pub(super) fn wait_for_probation(&mut self, requests: Vec<Request>) {
        match self.recovery.as_mut() {
            Some(recovery) if recovery.watched.as_ref().is_some_and(|w| w.until.is_some()) => {
                recovery.waiting.extend(requests)
            }
            _ => {
                let pid = self.serving.unwrap_or(0);
                for request in requests {
                    request.answer(&Reply::Restarted(pid));
                }
            }
        }
    }

    /// Ends the probation that is over, and probes the generation on it.
    pub(super) fn check_probation(&mut self) {
        if let (Some(recovery), Some(pid)) = (&self.recovery, self.serving) {
            if recovery.watched.is_none() && recovery.unkept != Some(pid) {
                self.watch_serving(pid, None);
            }
        }
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let Some(watched) = recovery.watched.as_mut() else {
            return;
        };
        let Some(until) = watched.until else {
            return;
        };
        let now = Instant::now();
        let mut unhealthy = None;
        if let Some(probe) = (recovery.health.as_ref()).filter(|_| now >= watched.next_probe) {
            let outcome = probe.check();
            watched.next_probe = Instant::now() + PROBE_EVERY;
            match outcome {
                Ok(()) => watched.probes_failed = 0,
                Err(why) => {
                    watched.probes_failed += 1;
                    warning!("health check of {} failed: {why}", watched.kept.pid);
                    if watched.probes_failed >= PROBE_FAILURES {
                        unhealthy = Some((watched.kept.pid, why));
                    }
                }
            }
        }
        if let Some((pid, why)) = unhealthy {
            let how = format!("failed its health check ({why})");
            if self.restorable(pid, &how) {
                error!("generation {pid} is unhealthy ({why}); killing it");
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                if let Some(recovery) = self.recovery.as_mut() {
                    recovery.watched = None;
                }
                self.restore(pid, &how, true);
            } else {
                // Killing it would leave nothing serving: it stays, off probation.
                error!("generation {pid} is unhealthy ({why}), but nothing can replace it");
                self.passed_probation();
            }
            return;
        }
        if now >= until {
            self.passed_probation();
        }
    }

    /// When the probation or its next probe is due.
    pub(super) fn probation_deadline(&self) -> Option<Duration> {
        let recovery = self.recovery.as_ref()?;
        let Some(watched) = recovery.watched.as_ref() else {
            // Look again at a serving generation we could not read yet.
            return (self.serving)
                .filter(|&pid| recovery.unkept != Some(pid))
                .map(|_| RETRY_KEEP);
        };
        let until = watched.until?;
        let next = match recovery.health {
            Some(_) => until.min(watched.next_probe),
            None => until,
        };
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// The serving generation's pidfd fired. Our own child is left for
    /// `reap` (which knows its status); another's (it died while its parent
    /// still drained) is gone now.
    pub(super) fn on_serving_exit_seen(&mut self) {
        // A `MAINPID=` sent before the death (a failed restart's parent naming
        // itself again) changes who serves.
        while let Some(message) = self.notify.receive() {
            self.on_message(message);
        }
        let Some(watched) = self.recovery.as_mut().and_then(|r| r.watched.as_mut()) else {
            return;
        };
        let Some(pidfd) = watched
            .pidfd
            .take_if(|fd| crate::sys::has_exited(fd.as_fd()))
        else {
            return;
        };
        let pid = watched.kept.pid;
        // SAFETY: all-zero is a valid siginfo_t.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our pidfd with a writable siginfo; WNOWAIT leaves
        // a child of ours to be reaped by `reap`.
        let ours = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        } == 0;
        if !ours {
            self.serving_died(pid, None);
        }
    }

    /// `pid`, the serving generation, died (`status` as a shell says it, when
    /// we know it): bring the last good release back if we can. Once per
    /// death: the generation stops being watched here.
    pub(super) fn serving_died(&mut self, pid: i32, status: Option<i32>) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let watched = (recovery.watched).take_if(|w| w.kept.pid == pid);
        let on_probation = watched.is_some_and(|w| w.until.is_some());
        let how = status.map_or_else(
            || "died (reaped by its parent)".to_string(),
            |s| match s {
                128.. => format!("was killed by signal {}", s - 128),
                _ => format!("exited with status {s}"),
            },
        );
        if !self.stopping && status != Some(0) && self.restorable(pid, &how) {
            self.restore(pid, &how, on_probation);
        }
        if self.serving == Some(pid) {
            // Not restored, and not our child (`reap` sets these for one):
            // its status, if it comes to us to be reaped, or a failure.
            self.serving = None;
            (self.gone, self.ended) = (Some(pid), if self.stopping { 0 } else { 1 });
        }
        // Whoever still waits for its probation hears that it ended.
        self.answer_probation(&Reply::Failed(
            libc::ESRCH,
            format!("generation {pid} {how} during its probation"),
        ));
    }

    /// Answers the clients waiting for the probation's outcome.
    fn answer_probation(&mut self, reply: &Reply) {
        if let Some(recovery) = self.recovery.as_mut() {
            for request in recovery.waiting.drain(..) {
                request.answer(reply);
            }
        }
    }

    /// Whether the last good release can be started in place of `pid`, which
    /// `how`; says why not.
    fn restorable(&self, pid: i32, how: &str) -> bool {
        let Some(recovery) = self.recovery.as_ref() else {
            return false;
        };
        if recovery.last_good.is_none() {
            error!("generation {pid} {how}; no release to bring back");
            return false;
        }
        if self.restarter.is_none() && recovery.store.is_empty() {
            error!("generation {pid} {how}; it left us no socket, so none is restored");
            return false;
        }
        if let Some(at) = recovery
            .restored_at
            .filter(|at| at.elapsed() < recovery.probation.max(MIN_RESTORE_INTERVAL))
        {
            error!(
                "generation {pid} {how}, {} ms after the last good release was restored; \
                 not restoring it again",
                at.elapsed().as_millis()
            );
            return false;
        }
        true
    }

    /// Starts the last good release in place of `pid`, which `how` (checked
    /// [`Supervisor::restorable`]).
    fn restore(&mut self, pid: i32, how: &str, on_probation: bool) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        let Some(good) = &recovery.last_good else {
            return;
        };
        let why = if on_probation {
            format!("rolled back: generation {pid} {how} during its probation")
        } else {
            format!("generation {pid} {how}")
        };
        error!(
            "{why}; starting the last good release (generation {} ran it) with the same sockets",
            good.pid
        );
        // Our fd, by its path in /proc: the child closes its own copies of
        // our fds before it execs.
        let exe = CString::new(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            good.exe.as_raw_fd()
        ))
        .expect("no NUL in numbers");
        let (argv, env) = (good.argv.clone(), good.env.clone());
        recovery.restored_at = Some(Instant::now());
        if on_probation {
            recovery.rolled_back = Some((pid, why.clone()));
            self.answer_probation(&Reply::Failed(libc::ECANCELED, why.clone()));
        }
        let ignored = self.restart_signal_ignored;
        match self.start(&exe, &argv, ignored, Some(self.ready_timeout), Some(&env)) {
            Ok(restored) => {
                info!("restored the last good release as pid {restored}");
                self.relay(&format!(
                    "STATUS={why}; restored the last good release as pid {restored}"
                ));
                self.serving = Some(restored);
                let recovery = self.recovery.as_mut().expect("checked above");
                if let Some(good) = &mut recovery.last_good {
                    good.pid = restored;
                }
                self.watch_serving(restored, None);
            }
            Err(e) => {
                error!("cannot start the last good release: {e}");
                self.relay(&format!(
                    "STATUS={why}; the last good release did not start: {e}"
                ));
            }
        }
    }
}

/// `pid` as it runs: an fd of its executable, and its argv and environment as
/// `/proc` shows them (a program that rewrites its argv, setproctitle, is
/// restored with what it wrote).
fn keep_executable(pid: i32) -> io::Result<Kept> {
    let read = |what: &str| {
        let path = format!("/proc/{pid}/{what}");
        std::fs::read(&path).map_err(|e| with_context(e, path))
    };
    let exe = std::fs::File::open(format!("/proc/{pid}/exe"))
        .map_err(|e| with_context(e, format!("/proc/{pid}/exe")))?;
    // NUL-terminated strings, an empty one (an empty argument) included.
    let strings = |bytes: Vec<u8>| -> Vec<Vec<u8>> {
        match bytes.strip_suffix(&[0]) {
            Some(strings) => strings.split(|&b| b == 0).map(<[u8]>::to_vec).collect(),
            None => Vec::new(),
        }
    };
    let argv = (strings(read("cmdline")?).into_iter())
        .map(|arg| CString::new(arg).expect("split at NUL"))
        .collect::<Vec<_>>();
    if argv.is_empty() {
        return Err(fail(
            libc::EAGAIN,
            format!("pid {pid} shows no command line"),
        ));
    }
    let env = (strings(read("environ")?).into_iter())
        .filter_map(|entry| {
            let at = entry.iter().position(|&b| b == b'=')?;
            let (key, value) = entry.split_at(at);
            Some((
                OsString::from_vec(key.to_vec()),
                OsString::from_vec(value[1..].to_vec()),
            ))
        })
        .collect();
    Ok(Kept {
        pid,
        exe: Rc::new(exe.into()),
        argv,
        env,
    })
}

/// Whether two fds are the same socket (the same inode of sockfs).
fn same_socket(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    match (nix::sys::stat::fstat(a), nix::sys::stat::fstat(b)) {
        (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
        _ => false,
    }
}
