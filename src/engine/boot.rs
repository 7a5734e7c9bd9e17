//! The engine's start: the hand-over read from the environment, the signal
//! handler and its watcher thread armed, what was passed adopted.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::{Engine, Fork, Parts, Work, watcher};
use crate::control::Control;
use crate::error::with_context;
use crate::link::{Older, Predecessor};
use crate::log::{debug, info, warning};
use crate::origin;
use crate::protocol;
use crate::signal;
use crate::stub::{self, Watch};
use crate::sys;

impl Engine {
    /// The process's engine: reads the hand-over, installs the signal
    /// handler and its watcher thread, and adopts what was handed over.
    pub(super) fn start() -> io::Result<Engine> {
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
        let work = Work::new()?;
        let restart_signal = heritage
            .restart_signal
            .filter(|&signo| signal::check(signo).is_ok());
        let signal_pipe = signal::arm(
            restart_signal.unwrap_or(libc::SIGUSR2),
            restart_signal.is_some(),
        )?;
        let control = Control::bind()
            .inspect_err(|e| warning!("`grestart restart` cannot reach this process: {e}"))
            .ok();
        // Last of what can fail: a start that fails leaves no thread behind
        // (what `arm` made stays, for the next start).
        signal::spawn_thread("grestart-signal", move || {
            watcher::watch_signals(signal_pipe, control)
        })?;

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
        let older = Older::open(heritage.draining, predecessor.as_ref().map(|p| p.pid));
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
                // systemd (254 and later) sets it from FileDescriptorStoreMax=,
                // `grestart run` for its program.
                fd_store: std::env::var_os("FDSTORE").is_some_and(|n| n != "0"),
                watch,
                ignoring: heritage.ignored.unwrap_or_else(signal::started_ignoring),
                older,
                launch: Box::new(Fork),
            },
            shutdown_event,
            work,
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
}
