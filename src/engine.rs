//! One generation's lifecycle: phases, readiness, the hand-over to a
//! successor, the drain, the work in flight and the shutdown hooks. The
//! listeners live in `registry.rs`, the link to the predecessor in `link.rs`.
//!
//! ```text
//! Starting --ready()--> Serving --successor ready / shutdown()--> Draining
//! ```
//!
//! The engine is a process-wide singleton: signals, the environment and the
//! fds it hands over all belong to the process.

use std::ffi::{CStr, CString, OsString};
use std::io;
use std::mem;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use once_cell::sync::OnceCell;

use crate::address::Address;
use crate::control::{Control, Reply};
use crate::error::{fail, with_context};
use crate::exec_watch::ExecWatch;
use crate::handover::{Adoption, Handed, Heir};
use crate::limits::GR_MAX_DRAINING as MAX_DRAINING;
use crate::link::Predecessor;
use crate::log::{self, debug, error, info, warning};
use crate::notify;
use crate::origin::{self, Origin};
use crate::protocol;
use crate::registry::Registry;
use crate::signal;
use crate::spawn::{self, NotReady};
use crate::stub::{self, Watch};
use crate::sys;

/// A shutdown hook, run once in reverse order of registration.
pub(crate) type Hook = Box<dyn FnOnce() + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Listeners are being set up; restarts are refused.
    Starting,
    /// `ready()` was called; a restart may hand over.
    Serving,
    /// A successor took over (or shutdown was requested): stop accepting, finish, exit.
    Draining,
}

/// The shutdown hooks: they run once, to completion, whoever asks first; a
/// later caller (another thread, the drain deadline) waits for them, but a
/// hook that calls `shutdown` (a cleanup helper does) returns at once: it
/// would wait for itself.
enum Hooks {
    Pending(Vec<Hook>),
    /// On this thread.
    Running(ThreadId),
    Done,
}

struct Settings {
    ready_timeout: Duration,
    drain_deadline: Option<Duration>,
    pid_file: Option<PathBuf>,
    exe: Option<CString>,
    argv: Option<Vec<CString>>,
}

struct State {
    phase: Phase,
    registry: Registry,
    /// An heir's link to the generation that started it, until it has exited.
    predecessor: Option<Predecessor>,
    hooks: Hooks,
    settings: Settings,
    /// The thread running a restart, if one runs: `shutdown` waits for it,
    /// so that no successor starts serving after we were told to stop.
    restarting_on: Option<ThreadId>,
}

pub(crate) struct Engine {
    generation: u64,
    origin: Result<Origin, String>,
    /// The process that started the engine. A child it forks (a prefork
    /// worker) shares its memory image but is not the generation.
    owner: u32,
    notify_socket: Option<OsString>,
    /// Readable once this process must drain; an event loop polls it. A forked
    /// worker shares it, so it drains with its master.
    shutdown_event: EventFd,
    state: Mutex<State>,
    /// Work the application said is in flight; `shutdown` waits for none.
    in_flight: AtomicUsize,
    /// Signalled when the hooks finished or the last work in flight ended.
    changed: Condvar,
    /// Held for the whole of a restart: one hand-over at a time.
    restarting: Mutex<()>,
    /// The ready successor, once there is one: connections are handed to it.
    /// Its channel stays open until we exit, so that it can see when we are gone.
    heir: Mutex<Option<Heir>>,
    /// Connections handed to us, once the application asked for them.
    adoption: OnceCell<&'static Adoption>,
    /// When our exit would end the service (a container's PID 1): how we
    /// stay as its stub after a hand-over.
    watch: Option<Watch>,
    /// The signals the first generation was started with ignored: every
    /// successor starts so (SIGPIPE under systemd's `IgnoreSIGPIPE=yes`).
    ignoring: u64,
    /// How many older generations were (at most) draining when we started.
    older_draining: u32,
}

static ENGINE: OnceCell<Engine> = OnceCell::new();

/// The engine, started on first use, for the process that started it.
///
/// A child forked from that process (a prefork worker) gets `EPERM`: its
/// copy of the engine is not the generation, and acting on it would hand over
/// or drain behind the real one's back. See [`engine_in_any_process`].
pub(crate) fn engine() -> io::Result<&'static Engine> {
    let engine = engine_in_any_process()?;
    let pid = std::process::id();
    if pid != engine.owner {
        return Err(fail(
            libc::EPERM,
            format!(
                "pid {pid} is a child forked by pid {}, which runs grestart; a forked child may make \
                 only the calls listed at the top of grestart.h",
                engine.owner
            ),
        ));
    }
    Ok(engine)
}

/// The watched generation's stub-to-be, if this process is one (`stub.rs`).
pub(crate) fn watch() -> Option<&'static Watch> {
    ENGINE.get()?.watch.as_ref()
}

/// The engine for what a forked worker may use too: the shutdown fd (shared
/// with the master, so the worker drains when its master does), the generation
/// and the count of work in flight (its own).
pub(crate) fn engine_in_any_process() -> io::Result<&'static Engine> {
    if let Some(engine) = ENGINE.get() {
        return Ok(engine);
    }
    // What the start logs goes out once the engine exists: a logger that
    // calls into grestart must not find its initialisation under way.
    let _defer = log::Defer::new();
    ENGINE.get_or_try_init(Engine::start)
}

/// The state under the engine's lock. Log lines written meanwhile are
/// delivered after the lock is released, so a logger may call into grestart.
struct Locked<'a> {
    // Dropped in this order: the lock first, then the queued lines go out.
    guard: MutexGuard<'a, State>,
    _defer: log::Defer,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

/// What an engine is made of, apart from the process: the unit tests build
/// engines from these without a signal handler, a thread or a fork.
struct Parts {
    generation: u64,
    origin: Result<Origin, String>,
    inherited: Vec<(String, OwnedFd)>,
    predecessor: Option<Predecessor>,
    notify_socket: Option<OsString>,
    watch: Option<Watch>,
    /// The signals the first generation was started with ignored.
    ignoring: u64,
    older_draining: u32,
}

impl Engine {
    /// The process's engine: reads the hand-over, installs the signal
    /// handler and its watcher thread, and adopts what was handed over.
    fn start() -> io::Result<Engine> {
        // Read first, consume last: everything that can fail comes before the
        // environment is cleared and the passed fds are adopted, so that a
        // failed start (no thread to be had) can be retried without losing them.
        let heritage = protocol::parse(
            |k| std::env::var(k).ok(),
            std::process::id(),
            sys::fd_is_socket,
        );
        let shutdown_event =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| with_context(e.into(), "cannot create the shutdown eventfd"))?;
        let (signal_pipe, wake) = signal::self_pipe()?;
        let control = Control::bind()
            .inspect_err(|e| warning!("`grestart restart` cannot reach this process: {e}"))
            .ok();
        signal::spawn_thread("grestart-signal", move || {
            watch_signals(signal_pipe, control)
        })?;
        let restart_signal = heritage
            .restart_signal
            .filter(|&signo| signal::check(signo).is_ok());
        signal::arm(
            wake,
            restart_signal.unwrap_or(libc::SIGUSR2),
            restart_signal.is_some(),
        )?;

        for problem in &heritage.problems {
            warning!("{problem}");
        }
        for variable in protocol::VARIABLES {
            // Programs this process launches must not think they were socket-activated.
            // SAFETY: std's environment lock guards Rust callers; like every
            // library that consumes LISTEN_FDS we assume the application is not
            // reading the environment from C in another thread at this moment.
            unsafe { std::env::remove_var(variable) };
        }
        let adopt = |fd: RawFd| {
            // SAFETY: the protocol checked the fd is open; it was passed to us,
            // nothing else in this process owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            sys::set_cloexec(&fd);
            fd
        };
        let inherited: Vec<(String, OwnedFd)> = heritage
            .fds
            .into_iter()
            .map(|(name, fd)| (name, adopt(fd)))
            .collect();
        // An older grestart parent does not say its pid: then it is our
        // parent, unless it has exited already.
        let parent_pid = heritage
            .predecessor
            .unwrap_or_else(|| nix::unistd::getppid().as_raw());
        let predecessor = (heritage.ready_fd.map(adopt)).map(|fd| Predecessor::new(fd, parent_pid));
        let notify_socket = std::env::var_os("NOTIFY_SOCKET");
        let watch = stub::watched(notify_socket.as_ref())
            .then(Watch::start)
            .and_then(|started| {
                started
                    .inspect_err(|e| warning!("a restart will end the service: {e}"))
                    .ok()
            });
        let engine = Engine::new(
            Parts {
                generation: heritage.generation,
                origin: origin::get().map_err(|e| e.to_string()),
                inherited,
                predecessor,
                notify_socket,
                watch,
                ignoring: heritage.ignored.unwrap_or_else(signal::started_ignoring),
                older_draining: heritage.draining,
            },
            shutdown_event,
        );
        match &engine.origin {
            Err(e) => warning!("restarts will fail: cannot tell how this process was started: {e}"),
            Ok(origin) => debug!("successors start as {origin}"),
        }
        let state = engine.lock();
        let names = state.registry.inherited_names();
        match (&state.predecessor, names.is_empty()) {
            // Reparented: the predecessor is gone, and we are all that serves.
            (Some(predecessor), _) if nix::unistd::getppid().as_raw() != predecessor.pid => info!(
                "generation {} started by pid {}, which has exited already; serving on, inherited {names:?}",
                engine.generation, predecessor.pid
            ),
            (Some(predecessor), _) => info!(
                "generation {} started by pid {}, inherited {names:?}",
                engine.generation, predecessor.pid
            ),
            (None, false) => info!("socket-activated, inherited {names:?}"),
            (None, true) => debug!("fresh start"),
        }
        drop(state);
        Ok(engine)
    }

    fn new(parts: Parts, shutdown_event: EventFd) -> Engine {
        Engine {
            generation: parts.generation,
            origin: parts.origin,
            owner: std::process::id(),
            notify_socket: parts.notify_socket,
            shutdown_event,
            state: Mutex::new(State {
                phase: Phase::Starting,
                registry: Registry::new(parts.inherited),
                predecessor: parts.predecessor,
                hooks: Hooks::Pending(Vec::new()),
                restarting_on: None,
                settings: Settings {
                    ready_timeout: crate::limits::DEFAULT_READY_TIMEOUT,
                    drain_deadline: None,
                    pid_file: None,
                    exe: None,
                    argv: None,
                },
            }),
            in_flight: AtomicUsize::new(0),
            changed: Condvar::new(),
            restarting: Mutex::new(()),
            heir: Mutex::new(None),
            adoption: OnceCell::new(),
            watch: parts.watch,
            ignoring: parts.ignoring,
            older_draining: parts.older_draining,
        }
    }

    fn lock(&self) -> Locked<'_> {
        let defer = log::Defer::new();
        Locked {
            guard: self.lock_quietly(),
            _defer: defer,
        }
    }

    /// The lock without log deferral, for condition variables; log nothing
    /// while holding it.
    fn lock_quietly(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state consistent (every
        // update is a single assignment), so poisoning is not fatal here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until `done` holds for the state.
    fn wait_until(&self, done: impl Fn(&State) -> bool) {
        let state = self.lock_quietly();
        drop(
            self.changed
                .wait_while(state, |s| !done(s))
                .unwrap_or_else(|e| e.into_inner()),
        );
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    pub(crate) fn register(&self, fd: BorrowedFd<'_>, name: &str) -> io::Result<()> {
        let mut state = self.lock();
        if state.phase == Phase::Draining {
            return Err(fail(
                libc::ESHUTDOWN,
                "this process is draining; register listeners before gr_ready",
            ));
        }
        state.registry.register(fd, name)
    }

    /// The inherited socket named `name`, now registered again for the next restart.
    pub(crate) fn inherit(&self, name: &str) -> io::Result<Option<OwnedFd>> {
        self.lock().registry.inherit(name)
    }

    /// Inherit-or-listen: see [`Registry::listen`].
    pub(crate) fn listen(&self, text: &str, name: Option<&str>) -> io::Result<OwnedFd> {
        // A host name is resolved before the lock is taken: DNS may take long.
        let address = Address::parse(text)?;
        self.lock().registry.listen(&address, text, name)
    }

    pub(crate) fn on_shutdown(&self, hook: Hook) -> io::Result<()> {
        match &mut self.lock().hooks {
            Hooks::Pending(hooks) => {
                hooks.push(hook);
                Ok(())
            }
            _ => Err(fail(libc::ESHUTDOWN, "the shutdown hooks already ran")),
        }
    }

    /// This process serves: tell the parent (which then drains), systemd and the PID file.
    pub(crate) fn ready(&self) -> io::Result<()> {
        let mut state = self.lock();
        match state.phase {
            Phase::Serving => return Ok(()),
            Phase::Draining => {
                return Err(fail(libc::ESHUTDOWN, "this process is already draining"));
            }
            Phase::Starting => state.phase = Phase::Serving,
        }
        let unclaimed = state.registry.close_unclaimed();
        if !unclaimed.is_empty() {
            info!("closed inherited fds nobody claimed: {unclaimed:?}");
        }
        if let Some(path) = &state.settings.pid_file {
            if let Err(e) = notify::write_pid_file(path) {
                warning!("cannot write the PID file {}: {e}", path.display());
            }
        }
        // systemd must learn the new main pid before the parent exits, or it
        // would take the parent's exit for the service's.
        self.notify_serving();
        let adopting = self.adoption.get().is_some();
        if let Some(Err(e)) = (state.predecessor.as_ref()).map(|p| p.tell_ready(adopting)) {
            warning!("{e}");
            state.predecessor = None;
        }
        info!("ready, generation {}", self.generation);
        Ok(())
    }

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
    fn restart_coalescing(
        &'static self,
        coalesce: impl FnOnce() -> usize,
        ready: impl FnOnce(i32),
    ) -> io::Result<i32> {
        let _one_at_a_time = match self.restarting.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                let err = fail(libc::EALREADY, "a restart is already in progress");
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
            Err(e) => (Err(e), true),
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
            self.changed.notify_all();
        }
        result
    }

    /// `draining`: how many older generations (we included) may drain while
    /// the successor serves. The ready timeout bounds it all, the successor's
    /// exec included; a stop (the shutdown fd, the stop signal) ends it.
    fn start_successor(&'static self, draining: u32, ready: impl FnOnce(i32)) -> io::Result<i32> {
        let started = Instant::now();
        // Copied under the lock, which every setter, `gr_shutdown` and the
        // hand-over take: nothing that can block (an exec from a hung mount,
        // a notification) runs under it.
        let (exe, argv, cwd, names, fds, timeout) = {
            let state = self.lock();
            let (exe, argv, cwd) = self.successor_command(&state.settings)?;
            let (names, fds) = state.registry.handed_over();
            let fds = (fds.iter())
                .map(|fd| fd.try_clone_to_owned())
                .collect::<io::Result<Vec<_>>>()
                .map_err(|e| with_context(e, "cannot duplicate a listener for the successor"))?;
            let names = names.into_iter().map(String::from).collect::<Vec<_>>();
            (exe, argv, cwd, names, fds, state.settings.ready_timeout)
        };
        let abandon: Vec<BorrowedFd<'static>> = [self.shutdown_event.as_fd()]
            .into_iter()
            .chain(signal::stopped_fd())
            .collect();
        let exec = ExecWatch::new(timeout, abandon.clone())?;
        let listeners = (names.iter().zip(&fds))
            .map(|(name, fd)| {
                let bound = nix::sys::socket::getsockname(fd.as_raw_fd()).ok();
                (name.clone(), bound)
            })
            .collect::<Vec<_>>();
        let restart_signal = signal::current();
        let mut env = protocol::successor_env(
            std::env::vars_os(),
            &names.iter().map(String::as_str).collect::<Vec<_>>(),
            self.generation,
            restart_signal,
            std::process::id(),
            self.ignoring,
            draining,
        );
        env.extend(self.watch.as_ref().map(Watch::notify_entry));
        self.notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            notify::monotonic_usec()
        ));
        let successor = spawn::spawn(
            &exe,
            &argv,
            cwd,
            &env,
            &fds.iter().map(AsFd::as_fd).collect::<Vec<_>>(),
            self.ignoring | signal::bit(restart_signal),
            spawn::Channel::Readiness,
            Some(&exec),
        )
        .inspect_err(|_| self.notify_serving())?;
        drop(fds);
        info!(
            "successor {} started as generation {}, waiting up to {timeout:?} for it to be ready",
            successor.pid,
            self.generation + 1
        );
        match successor.wait_ready(&exe, exec.deadline(), &abandon) {
            Ok(said) => {
                let heir = Heir::new(successor.channel, successor.pid, listeners, &said);
                info!(
                    "successor {} ready after {} ms{}",
                    successor.pid,
                    started.elapsed().as_millis(),
                    if heir.adopts() {
                        ", adopts connections"
                    } else {
                        ""
                    }
                );
                *self.heir_lock() = Some(heir);
                if let Some(watch) = &self.watch {
                    watch.follow(successor.pid);
                }
                ready(successor.pid);
                self.begin_drain();
                if let Some(adoption) = self.adoption.get() {
                    // Our predecessor may still be draining: what it hands us
                    // from now on goes on to our successor.
                    adoption.relay(Box::new(|connection, name| {
                        self.hand_over(connection, Some(name)).is_ok()
                    }));
                }
                Ok(successor.pid)
            }
            Err(not_ready) => {
                let err = match not_ready {
                    NotReady::Failed(err) => err,
                    NotReady::TimedOut => {
                        let status = successor.kill();
                        fail(
                            libc::ETIMEDOUT,
                            format!(
                                "successor {} was not ready within {timeout:?}; killed it, it {status}",
                                successor.pid
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
                                successor.pid
                            ),
                        )
                    }
                };
                self.notify_serving();
                // A successor that called gr_ready wrote its pid there, and is
                // gone now: `kill -USR2 $(cat pidfile)` must reach us.
                let pid_file = self.lock().settings.pid_file.clone();
                if let Some(path) = pid_file {
                    if let Err(e) = notify::write_pid_file(&path) {
                        warning!("cannot write the PID file {} again: {e}", path.display());
                    }
                }
                Err(err)
            }
        }
    }

    /// Refuses a restart that would make two hand-overs overlap.
    /// Refuses a restart that would make two hand-overs overlap, or more than
    /// [`MAX_DRAINING`] generations drain at once; otherwise says how many
    /// older generations (this one included) may drain once the successor
    /// serves.
    fn check_may_restart(&self, state: &mut State) -> io::Result<u32> {
        match state.phase {
            Phase::Starting => {
                return Err(fail(
                    libc::EAGAIN,
                    "this process is not ready yet (call gr_ready first)",
                ));
            }
            Phase::Draining => {
                return Err(fail(
                    libc::ESHUTDOWN,
                    "this process is draining; its successor serves",
                ));
            }
            Phase::Serving => {}
        }
        // Older generations still draining (a long-lived connection, a slow
        // client, two deploys a second apart) do not hold up a restart: they
        // drain beside us. What we know of them is an upper bound: the count
        // we were started with, while our predecessor lives.
        let older = match &state.predecessor {
            Some(predecessor) if !predecessor.has_exited() => self.older_draining,
            _ => 0,
        };
        if older + 1 > MAX_DRAINING {
            return Err(fail(
                libc::EAGAIN,
                format!(
                    "{older} older generations may still be draining, and at most {MAX_DRAINING} \
                     drain at once; try again when one has exited"
                ),
            ));
        }
        Ok(older + 1)
    }

    fn successor_command(&self, settings: &Settings) -> io::Result<(CString, Vec<CString>, &CStr)> {
        let origin = self.origin.as_ref().map_err(|e| {
            fail(
                libc::ENOEXEC,
                format!("cannot tell how to start a successor: {e}"),
            )
        })?;
        let exe = settings.exe.clone().unwrap_or_else(|| origin.exe.clone());
        let argv = settings.argv.clone().unwrap_or_else(|| origin.argv.clone());
        Ok((exe, argv, &origin.cwd))
    }

    /// Stops this generation: the shutdown fd turns readable and waiters wake.
    fn begin_drain(&'static self) {
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
            if !self.run_hooks() {
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

    /// Counts one more piece of work in flight (any process, a forked worker
    /// counts its own).
    pub(crate) fn begin_work(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends one piece of work; `EINVAL` when none is in flight.
    pub(crate) fn end_work(&self) -> io::Result<()> {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .map_err(|_| fail(libc::EINVAL, "no work is in flight"))?;
        if before == 1 && std::process::id() == self.owner {
            // Under the lock, so that a waiter between its check and its wait
            // cannot miss the notification.
            drop(self.lock_quietly());
            self.changed.notify_all();
        }
        Ok(())
    }

    /// Drains (if not already), waits for the work in flight, and runs the
    /// hooks, once; a second caller waits for them to finish.
    pub(crate) fn shutdown(&'static self) {
        if self.running_hooks_here() {
            return;
        }
        self.begin_drain();
        // A successor still starting sees the drain and is stopped (see
        // `start_successor`), also one whose exec hangs; wait for that, unless
        // we are that restart.
        let here = thread::current().id();
        self.wait_until(|s| s.restarting_on.is_none_or(|t| t == here));
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        if in_flight > 0 {
            info!("waiting for {in_flight} pieces of work in flight");
            self.wait_until(|_| self.in_flight.load(Ordering::SeqCst) == 0);
        }
        self.finish_hand_overs();
        let _ = self.run_hooks();
        let succeeded = self.heir_lock().is_some();
        let state = self.lock();
        if !succeeded {
            if let Some(path) = &state.settings.pid_file {
                notify::remove_pid_file(path);
            }
        }
    }

    fn heir_lock(&self) -> MutexGuard<'_, Option<Heir>> {
        self.heir.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hands the idle `connection`, accepted on the listener `name` (`None`:
    /// the one its address belongs to), to the ready successor; `ESRCH` when
    /// there is none that takes connections.
    pub(crate) fn hand_over(
        &self,
        connection: BorrowedFd<'_>,
        name: Option<&str>,
    ) -> io::Result<()> {
        // What the hand-over logs goes out after the lock is released.
        let _defer = log::Defer::new();
        let mut heir = self.heir_lock();
        let heir = heir.as_mut().ok_or_else(|| {
            fail(
                libc::ESRCH,
                "no successor to hand the connection to (not restarting, or the restart failed): close it",
            )
        })?;
        heir.hand_over(connection, name)
    }

    /// Waits (within the bound) for the successor to take what was handed to it.
    fn finish_hand_overs(&self) {
        let _defer = log::Defer::new();
        if let Some(heir) = self.heir_lock().as_mut() {
            heir.finish();
        }
    }

    /// The fd readable while handed-over connections wait; asking for it says
    /// we adopt them (to the predecessor now, or with "ready").
    pub(crate) fn adopt_fd(&'static self) -> io::Result<BorrowedFd<'static>> {
        self.adoption().map(|a| a.fd())
    }

    fn adoption(&'static self) -> io::Result<&'static Adoption> {
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
        self.adoption()?.adopt(timeout, fits)
    }

    /// Whether this thread is running the hooks: a hook calls back.
    fn running_hooks_here(&self) -> bool {
        matches!(self.lock().hooks, Hooks::Running(id) if id == thread::current().id())
    }

    /// Runs the hooks, or waits for the thread that runs them (unless that
    /// is this one: a hook called back). Whether this call ran them.
    fn run_hooks(&self) -> bool {
        let hooks = {
            let mut state = self.lock();
            let here = thread::current().id();
            match mem::replace(&mut state.hooks, Hooks::Running(here)) {
                Hooks::Pending(hooks) => hooks,
                other => {
                    let nested = matches!(other, Hooks::Running(id) if id == here);
                    state.hooks = other;
                    drop(state);
                    if !nested {
                        self.wait_until(|s| matches!(s.hooks, Hooks::Done));
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
        self.lock_quietly().hooks = Hooks::Done;
        self.changed.notify_all();
        true
    }

    pub(crate) fn set_ready_timeout(&self, timeout: Duration) -> io::Result<()> {
        if timeout.is_zero() {
            return Err(fail(libc::EINVAL, "the ready timeout must be positive"));
        }
        self.lock().settings.ready_timeout = timeout;
        Ok(())
    }

    /// `None` or zero: no deadline (zero means the same in every language).
    pub(crate) fn set_drain_deadline(&self, deadline: Option<Duration>) {
        self.lock().settings.drain_deadline = deadline.filter(|d| !d.is_zero());
    }

    pub(crate) fn set_pid_file(&self, path: Option<PathBuf>) {
        self.lock().settings.pid_file = path;
    }

    pub(crate) fn set_executable(&self, exe: CString, argv: Option<Vec<CString>>) {
        let mut state = self.lock();
        state.settings.exe = Some(exe);
        state.settings.argv = argv;
    }

    /// Tells systemd this process is the one serving: after `ready`, and after
    /// a failed restart, whose successor may have named itself main pid first.
    fn notify_serving(&self) {
        self.notify(&format!("MAINPID={}\nREADY=1", std::process::id()));
    }

    fn notify(&self, message: &str) {
        if let Err(e) = notify::sd_notify(self.notify_socket.as_ref(), message) {
            warning!("cannot notify systemd ({message:?}): {e}");
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

/// Reads restart and stop signals and control requests forever; a restart
/// runs here, outside signal context. A stop signal wins over restarts that
/// came with it. Requests that arrive during a restart get its outcome.
fn watch_signals(pipe: OwnedFd, control: Option<Control>) {
    signal::become_watcher();
    let requests = || control.as_ref().map(Control::requests).unwrap_or_default();
    loop {
        let arrived = signal::wait(&pipe, control.as_ref().map(Control::fd));
        let mut waiting = if arrived.control {
            requests()
        } else {
            Vec::new()
        };
        let Some(engine) = ENGINE.get() else {
            let reply = Reply::Failed(libc::EAGAIN, "grestart is starting".into());
            waiting.into_iter().for_each(|r| r.answer(&reply));
            continue;
        };
        let serving = (engine.watch.as_ref().and_then(Watch::serving))
            .or_else(|| engine.heir_lock().as_ref().map(Heir::pid));
        if let Some(serving) = serving {
            // A successor serves: requests are for it, and so are the
            // operator's signals while we are the process an init watches.
            waiting
                .into_iter()
                .for_each(|r| r.answer(&Reply::Ask(serving)));
            if engine.watch.is_some() && (arrived.stop || arrived.restarts > 0) {
                let signo = if arrived.stop {
                    signal::stop_signal()
                } else {
                    signal::current()
                };
                info!("forwarding signal {signo} to the serving generation, pid {serving}");
                // SAFETY: kill has no memory-safety requirements.
                unsafe { libc::kill(serving, signo) };
            }
            continue;
        }
        let mut stop = arrived.stop;
        if (arrived.restarts > 0 || !waiting.is_empty()) && !stop {
            let _busy = signal::Busy::new();
            let outcome = engine.restart_coalescing(
                || {
                    let during = signal::drain(&pipe);
                    stop = during.stop;
                    during.restarts
                },
                |pid| {
                    waiting.extend(requests());
                    let reply = Reply::Restarted(pid);
                    waiting.drain(..).for_each(|r| r.answer(&reply));
                },
            );
            waiting.extend(requests());
            let reply = Reply::of(&outcome);
            waiting.drain(..).for_each(|r| r.answer(&reply));
        }
        let reply = Reply::Failed(libc::ESHUTDOWN, "this process is stopping".into());
        waiting.into_iter().for_each(|r| r.answer(&reply));
        if stop {
            info!("stop signal: draining");
            engine.begin_drain();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::errno_of;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    /// An engine of its own (leaked: the lifecycle takes `&'static self`),
    /// with no way to start a successor: a restart that passes the phase
    /// rules fails with ENOEXEC instead of forking.
    fn engine_with(predecessor: Option<Predecessor>) -> &'static Engine {
        engine_after(predecessor, 0)
    }

    /// An heir started while `older_draining` generations may have drained.
    fn engine_after(predecessor: Option<Predecessor>, older_draining: u32) -> &'static Engine {
        let parts = Parts {
            generation: 1,
            origin: Err("a unit test".into()),
            inherited: Vec::new(),
            predecessor,
            notify_socket: None,
            watch: None,
            ignoring: 0,
            older_draining,
        };
        let event = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
        Box::leak(Box::new(Engine::new(parts, event)))
    }

    fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
        errno_of(&result.expect_err("refused"))
    }

    #[test]
    fn a_restart_waits_for_ready_and_is_refused_while_draining() {
        let engine = engine_with(None);
        assert_eq!(errno(engine.restart()), libc::EAGAIN);
        engine.ready().unwrap();
        engine.ready().unwrap(); // again: fine
        assert_eq!(errno(engine.restart()), libc::ENOEXEC); // past the rules
        assert!(!engine.wait_shutdown(Some(Duration::ZERO)));
        engine.shutdown();
        assert!(engine.wait_shutdown(Some(Duration::ZERO)));
        assert_eq!(errno(engine.restart()), libc::ESHUTDOWN);
        assert_eq!(errno(engine.ready()), libc::ESHUTDOWN);
    }

    #[test]
    fn one_restart_at_a_time() {
        let engine = engine_with(None);
        engine.ready().unwrap();
        let running = engine.restarting.lock().unwrap();
        assert_eq!(errno(engine.restart()), libc::EALREADY);
        drop(running);
        assert_eq!(errno(engine.restart()), libc::ENOEXEC);
    }

    #[test]
    fn a_restart_while_older_generations_drain_goes_ahead_up_to_the_cap() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let engine = engine_after(Some(Predecessor::new(ours.into(), 1)), 1);
        engine.ready().unwrap(); // tells the predecessor
        // The predecessor drains: past the rules (the unit engine cannot spawn).
        assert_eq!(errno(engine.restart()), libc::ENOEXEC);
        assert_eq!(engine.check_may_restart(&mut engine.lock()).unwrap(), 2);

        let (ours, theirs) = UnixStream::pair().unwrap();
        let full = engine_after(Some(Predecessor::new(ours.into(), 1)), MAX_DRAINING);
        full.ready().unwrap();
        let refused = full.restart().expect_err("refused at the cap");
        assert_eq!(errno_of(&refused), libc::EAGAIN);
        assert!(
            refused.to_string().contains("at most 8 drain at once"),
            "{refused}"
        );
        drop(theirs); // the predecessor exited, and all it counted for
        assert_eq!(errno(full.restart()), libc::ENOEXEC);
        assert_eq!(full.check_may_restart(&mut full.lock()).unwrap(), 1);
    }

    #[test]
    fn hooks_run_once_in_reverse_order() {
        let engine = engine_with(None);
        let order = Arc::new(Mutex::new(Vec::new()));
        for i in 1..=3 {
            let order = Arc::clone(&order);
            engine
                .on_shutdown(Box::new(move || order.lock().unwrap().push(i)))
                .unwrap();
        }
        engine.ready().unwrap();
        engine.shutdown();
        engine.shutdown();
        assert_eq!(*order.lock().unwrap(), [3, 2, 1]);
        let late = engine.on_shutdown(Box::new(|| ()));
        assert_eq!(errno(late), libc::ESHUTDOWN);
    }

    #[test]
    fn shutdown_waits_for_the_work_in_flight() {
        let engine = engine_with(None);
        assert_eq!(errno(engine.end_work()), libc::EINVAL);
        let finished = Arc::new(Mutex::new(false));
        let seen = Arc::clone(&finished);
        engine
            .on_shutdown(Box::new(move || assert!(*seen.lock().unwrap())))
            .unwrap();
        engine.ready().unwrap();
        engine.begin_work();
        let worker = thread::spawn(move || {
            // The drain has begun: the work finishes, then shutdown may go on.
            assert!(engine.wait_shutdown(Some(Duration::from_secs(10))));
            *finished.lock().unwrap() = true;
            engine.end_work().unwrap();
        });
        engine.shutdown();
        worker.join().unwrap();
    }

    #[test]
    fn a_zero_drain_deadline_is_none() {
        let engine = engine_with(None);
        engine.set_drain_deadline(Some(Duration::ZERO));
        assert_eq!(engine.lock().settings.drain_deadline, None);
        engine.set_drain_deadline(Some(Duration::from_millis(5)));
        assert_eq!(
            engine.lock().settings.drain_deadline,
            Some(Duration::from_millis(5))
        );
    }
}
