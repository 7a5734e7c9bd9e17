//! A launcher of fake successors and the engines the tests build with it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::super::successor::{Command, Started};
use super::super::*;
use crate::error::{errno_of, fail};
use crate::exec_watch::ExecWatch;
use crate::link::Older;
use crate::spawn::NotReady;

/// What a fake successor does once started.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Says "ready" at once.
    Ready,
    /// Exits before it is ready.
    Exits,
    /// Never says anything: the restart's deadline or a stop ends the wait.
    Hangs,
    /// Says "ready" when the test lets it ([`Fake::let_go`]).
    WaitsForTheTest,
}

/// A launcher of fake successors, which records what each was started with.
pub(super) struct Fake {
    pub(super) then: Then,
    /// The environment of every start, in order.
    pub(super) started: Mutex<Vec<Vec<String>>>,
    /// Told the pid of each start, once it waits to be ready.
    pub(super) waiting: Mutex<Sender<i32>>,
    pub(super) waiting_rx: Mutex<Receiver<i32>>,
    pub(super) go: Mutex<Sender<()>>,
    pub(super) go_rx: Arc<Mutex<Receiver<()>>>,
    pub(super) killed: Arc<Mutex<Vec<i32>>>,
}

impl Fake {
    pub(super) fn new(then: Then) -> Arc<Fake> {
        let (waiting, waiting_rx) = mpsc::channel();
        let (go, go_rx) = mpsc::channel();
        Arc::new(Fake {
            then,
            started: Mutex::new(Vec::new()),
            waiting: Mutex::new(waiting),
            waiting_rx: Mutex::new(waiting_rx),
            go: Mutex::new(go),
            go_rx: Arc::new(Mutex::new(go_rx)),
            killed: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Blocks until a successor waits to be ready; its pid.
    pub(super) fn a_successor_waits(&self) -> i32 {
        let waiting = self.waiting_rx.lock().unwrap();
        waiting
            .recv_timeout(Duration::from_secs(10))
            .expect("a start")
    }

    pub(super) fn let_go(&self) {
        self.go.lock().unwrap().send(()).unwrap();
    }

    /// The value of `key` in the environment of start `n`.
    pub(super) fn env(&self, n: usize, key: &str) -> String {
        let started = self.started.lock().unwrap();
        let prefix = format!("{key}=");
        (started[n].iter())
            .find_map(|entry| entry.strip_prefix(&prefix).map(String::from))
            .unwrap_or_else(|| panic!("{key} in {:?}", started[n]))
    }

    pub(super) fn killed(&self) -> Vec<i32> {
        self.killed.lock().unwrap().clone()
    }
}

impl Launch for Arc<Fake> {
    fn start(
        &self,
        command: &Command<'_>,
        _listeners: &[BorrowedFd<'_>],
        _watch: &Arc<ExecWatch>,
    ) -> io::Result<Box<dyn Started>> {
        let mut started = self.started.lock().unwrap();
        started.push(
            (command.env.iter())
                .map(|e| e.to_string_lossy().into_owned())
                .collect(),
        );
        let (ours, theirs) = UnixStream::pair()?;
        Ok(Box::new(FakeSuccessor {
            pid: 1000 + started.len() as i32,
            ours: ours.into(),
            _theirs: theirs,
            fake: Arc::clone(self),
        }))
    }
}

pub(super) struct FakeSuccessor {
    pid: i32,
    ours: OwnedFd,
    _theirs: UnixStream,
    fake: Arc<Fake>,
}

impl Started for FakeSuccessor {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn wait_ready(
        &self,
        _exe: &CStr,
        deadline: Instant,
        abandon: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, NotReady> {
        self.fake.waiting.lock().unwrap().send(self.pid).unwrap();
        match self.fake.then {
            Then::Ready => Ok(Vec::new()),
            Then::Exits => Err(NotReady::Failed(fail(
                libc::ECHILD,
                format!("successor {} exited with status 1", self.pid),
            ))),
            Then::WaitsForTheTest => {
                let go = self.fake.go_rx.lock().unwrap();
                go.recv_timeout(Duration::from_secs(10)).unwrap();
                Ok(Vec::new())
            }
            Then::Hangs => {
                let left = deadline.saturating_duration_since(Instant::now());
                let mut fds: Vec<PollFd<'_>> = (abandon.iter())
                    .map(|fd| PollFd::new(*fd, PollFlags::POLLIN))
                    .collect();
                match poll(&mut fds, PollTimeout::try_from(left).unwrap()) {
                    Ok(0) => Err(NotReady::TimedOut),
                    _ => Err(NotReady::Abandoned),
                }
            }
        }
    }

    fn kill(&self) -> String {
        self.fake.killed.lock().unwrap().push(self.pid);
        "was killed by signal 9".into()
    }

    fn into_channel(self: Box<Self>) -> OwnedFd {
        self.ours
    }
}

/// An engine of its own (leaked: the lifecycle takes `&'static self`),
/// whose successors are `fake`'s.
pub(super) fn engine_of(
    fake: &Arc<Fake>,
    predecessor: Option<Predecessor>,
    older: Older,
) -> &'static Engine {
    let origin = Origin {
        exe: CString::new("/srv/app/current/server").unwrap(),
        argv: vec![CString::new("server").unwrap()],
        cwd: CString::new("/").unwrap(),
    };
    engine_from(Ok(origin), Box::new(Arc::clone(fake)), predecessor, older)
}

pub(super) fn engine_from(
    origin: Result<Origin, String>,
    launch: Box<dyn Launch>,
    predecessor: Option<Predecessor>,
    older: Older,
) -> &'static Engine {
    let parts = Parts {
        generation: 1,
        origin,
        inherited: Vec::new(),
        predecessor,
        notify_socket: None,
        fd_store: false,
        watch: None,
        ignoring: 0,
        older,
        launch,
    };
    let event = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
    Box::leak(Box::new(Engine::new(parts, event, Work::new().unwrap())))
}

/// A serving engine whose successors do what `then` says.
pub(super) fn serving(then: Then) -> (Arc<Fake>, &'static Engine) {
    let fake = Fake::new(then);
    let engine = engine_of(&fake, None, Older::Counted(0));
    engine.ready().unwrap();
    (fake, engine)
}

pub(super) fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    errno_of(&result.expect_err("refused"))
}

pub(super) fn draining(engine: &Engine) -> bool {
    engine.wait_shutdown(Some(Duration::ZERO))
}

/// This test process's pid: a generation that is alive.
pub(super) fn me() -> i32 {
    std::process::id() as i32
}

/// `GRESTART_DRAINING_PIDS` for `pids`.
pub(super) fn joined(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
