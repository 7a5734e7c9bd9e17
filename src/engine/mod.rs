//! One generation's lifecycle, as a composition of one type per concept:
//!
//! | file | concept |
//! |---|---|
//! | `mod.rs` | the engine, its phase, its settings and the process-wide singleton |
//! | `boot.rs` | the start: reading the hand-over, arming the signals |
//! | `restart.rs` | the restart's rules and its outcome |
//! | `successor.rs` | starting a successor and waiting for it (the spawn injected as [`Launch`]) |
//! | `drain.rs` | the drain, its deadline and the shutdown |
//! | `hooks.rs` | the shutdown hooks |
//! | `work.rs` | the work in flight |
//! | `succession.rs` | connections handed to the successor and adopted from the predecessor |
//! | `watcher.rs` | the thread that turns signals and control requests into restarts |
//!
//! The listeners live in `registry.rs`, the link to the predecessor in `link.rs`.
//!
//! ```text
//! Starting --ready()--> Serving --successor ready / shutdown()--> Draining
//! ```
//!
//! The engine is a process-wide singleton: signals, the environment and the
//! fds it hands over all belong to the process.
//!
//! # Lock order
//!
//! `restarting` (held for a whole restart) is taken before `state`, and
//! nothing else is taken while `state` is held but the registry's own calls.
//! `heir`, the hooks' lock and the work's lock are each taken alone, never
//! with another one: so no two threads can wait for each other. Nothing that
//! can block (a spawn, an exec, a notification, a hook) runs under `state`.

mod boot;
mod drain;
mod hooks;
mod restart;
mod succession;
mod successor;
mod watcher;
mod work;

#[cfg(test)]
mod tests;

use std::ffi::{CString, OsString};
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::ThreadId;
use std::time::Duration;

use nix::sys::eventfd::EventFd;
use once_cell::sync::OnceCell;

use crate::address::Address;
use crate::error::fail;
use crate::handover::{Adoption, Heir};
use crate::link::{Older, Predecessor};
use crate::log::{self, info, warning};
use crate::notify::{self, PROBATION};
use crate::origin::Origin;
use crate::registry::Registry;
use crate::stub::Watch;

pub(crate) use hooks::Hook;
use hooks::Hooks;
use successor::{Fork, Launch};
use work::Work;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Listeners are being set up; restarts are refused.
    Starting,
    /// `ready()` was called; a restart may hand over.
    Serving,
    /// A successor took over (or shutdown was requested): stop accepting, finish, exit.
    Draining,
}

struct Settings {
    ready_timeout: Duration,
    drain_deadline: Option<Duration>,
    /// The probation this generation asks its launcher for (`None`: the
    /// launcher's own, `--probation`).
    probation: Option<Duration>,
    pid_file: Option<PathBuf>,
    exe: Option<CString>,
    argv: Option<Vec<CString>>,
}

/// What the engine's lock guards.
struct State {
    phase: Phase,
    registry: Registry,
    /// A successor's link to the generation that started it, until it has exited.
    predecessor: Option<Predecessor>,
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
    /// The service manager keeps our listeners for the next start (`$FDSTORE`).
    fd_store: bool,
    /// Readable once this process must drain; an event loop polls it. A forked
    /// worker shares it, so it drains with its master.
    shutdown_event: EventFd,
    state: Mutex<State>,
    /// Signalled when a restart ended (`restarting_on` was cleared).
    restart_ended: Condvar,
    /// Held for the whole of a restart: one hand-over at a time.
    restarting: Mutex<()>,
    /// How a successor is started: a fork and exec, or a unit test's fake.
    launch: Box<dyn Launch>,
    hooks: Hooks,
    work: Work,
    /// The ready successor, once there is one: connections are handed to it.
    /// Its channel stays open until we exit, so that it can see when we are gone.
    heir: Mutex<Option<Heir>>,
    /// Signalled when the heir's batch of connections began: a thread of
    /// its own sends it when due (started with the first), and says here
    /// whether it waits for one (`None`: it could not start).
    batch_began: Condvar,
    batch_sender_waits: OnceCell<Option<AtomicBool>>,
    /// Connections handed to us, once the application asked for them.
    adoption: OnceCell<&'static Adoption>,
    /// When our exit would end the service (a container's PID 1): how we
    /// stay as its stub after a hand-over.
    watch: Option<Watch>,
    /// The signals the first generation was started with ignored: every
    /// successor starts so (SIGPIPE under systemd's `IgnoreSIGPIPE=yes`).
    ignoring: u64,
    /// The generations before our predecessor that still drained when we started.
    older: Older,
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
    fd_store: bool,
    watch: Option<Watch>,
    /// The signals the first generation was started with ignored.
    ignoring: u64,
    older: Older,
    launch: Box<dyn Launch>,
}

impl Engine {
    fn new(parts: Parts, shutdown_event: EventFd, work: Work) -> Engine {
        Engine {
            generation: parts.generation,
            origin: parts.origin,
            owner: std::process::id(),
            notify_socket: parts.notify_socket,
            fd_store: parts.fd_store,
            shutdown_event,
            state: Mutex::new(State {
                phase: Phase::Starting,
                registry: Registry::new(parts.inherited),
                predecessor: parts.predecessor,
                restarting_on: None,
                settings: Settings {
                    ready_timeout: crate::limits::DEFAULT_READY_TIMEOUT,
                    drain_deadline: None,
                    probation: None,
                    pid_file: None,
                    exe: None,
                    argv: None,
                },
            }),
            restart_ended: Condvar::new(),
            restarting: Mutex::new(()),
            launch: parts.launch,
            hooks: Hooks::new(),
            work,
            heir: Mutex::new(None),
            batch_began: Condvar::new(),
            batch_sender_waits: OnceCell::new(),
            adoption: OnceCell::new(),
            watch: parts.watch,
            ignoring: parts.ignoring,
            older: parts.older,
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
        self.hooks.add(hook)
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
        self.notify_serving(state.settings.probation);
        if self.fd_store {
            self.store_listeners(&state.registry);
        }
        let adopting = self.adoption.get().is_some();
        if let Some(Err(e)) = (state.predecessor.as_ref()).map(|p| p.tell_ready(adopting)) {
            warning!("{e}");
            state.predecessor = None;
        }
        info!("ready, generation {}", self.generation);
        Ok(())
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

    pub(crate) fn set_probation(&self, probation: Duration) {
        self.lock().settings.probation = Some(probation);
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
    /// `probation`: what to ask the launcher for (`X_GRESTART_PROBATION_MS=`;
    /// systemd ignores `X_` variables).
    fn notify_serving(&self, probation: Option<Duration>) {
        let mut message = format!("MAINPID={}\nREADY=1", std::process::id());
        if let Some(probation) = probation {
            message += &format!("\n{PROBATION}={}", probation.as_millis());
        }
        self.notify(&message);
    }

    /// Leaves a copy of each listener in the service manager's fd store
    /// (`FDSTORE=1`, named as registered): should every generation die, the
    /// manager starts the next with them (`LISTEN_FDNAMES`), and the
    /// connections that wait in their queues meanwhile are served. Each
    /// generation stores them again; the manager keeps one of each socket.
    fn store_listeners(&self, registry: &Registry) {
        let (names, fds) = registry.handed_over();
        for (name, fd) in names.iter().zip(fds) {
            let message = format!("FDSTORE=1\nFDNAME={name}");
            let sent = notify::sd_notify_with_fds(self.notify_socket.as_ref(), &message, &[fd]);
            if let Err(e) = sent {
                warning!("cannot store the listener {name:?} with the service manager: {e}");
            }
        }
    }

    fn notify(&self, message: &str) {
        if let Err(e) = notify::sd_notify(self.notify_socket.as_ref(), message) {
            warning!("cannot notify systemd ({message:?}): {e}");
        }
    }
}
