//! The lifecycle driven in-process: engines of their own with a fake
//! successor ([`Fake`]), so that every outcome of a restart (ready, failed,
//! timed out, stopped, coalesced, several generations draining) is tested
//! without a process.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::restart::MAX_DRAINING;
use super::successor::{Command, Started};
use super::*;
use crate::error::{errno_of, fail};
use crate::exec_watch::ExecWatch;
use crate::spawn::NotReady;

/// What a fake successor does once started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
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
struct Fake {
    then: Then,
    /// The environment of every start, in order.
    started: Mutex<Vec<Vec<String>>>,
    /// Told the pid of each start, once it waits to be ready.
    waiting: Mutex<Sender<i32>>,
    waiting_rx: Mutex<Receiver<i32>>,
    go: Mutex<Sender<()>>,
    go_rx: Arc<Mutex<Receiver<()>>>,
    killed: Arc<Mutex<Vec<i32>>>,
}

impl Fake {
    fn new(then: Then) -> Arc<Fake> {
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
    fn a_successor_waits(&self) -> i32 {
        let waiting = self.waiting_rx.lock().unwrap();
        waiting
            .recv_timeout(Duration::from_secs(10))
            .expect("a start")
    }

    fn let_go(&self) {
        self.go.lock().unwrap().send(()).unwrap();
    }

    /// The value of `key` in the environment of start `n`.
    fn env(&self, n: usize, key: &str) -> String {
        let started = self.started.lock().unwrap();
        let prefix = format!("{key}=");
        (started[n].iter())
            .find_map(|entry| entry.strip_prefix(&prefix).map(String::from))
            .unwrap_or_else(|| panic!("{key} in {:?}", started[n]))
    }

    fn killed(&self) -> Vec<i32> {
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

struct FakeSuccessor {
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
fn engine_of(fake: &Arc<Fake>, predecessor: Option<Predecessor>, older: u32) -> &'static Engine {
    let origin = Origin {
        exe: CString::new("/srv/app/current/server").unwrap(),
        argv: vec![CString::new("server").unwrap()],
        cwd: CString::new("/").unwrap(),
    };
    engine_from(Ok(origin), Box::new(Arc::clone(fake)), predecessor, older)
}

fn engine_from(
    origin: Result<Origin, String>,
    launch: Box<dyn Launch>,
    predecessor: Option<Predecessor>,
    older_draining: u32,
) -> &'static Engine {
    let parts = Parts {
        generation: 1,
        origin,
        inherited: Vec::new(),
        predecessor,
        notify_socket: None,
        watch: None,
        ignoring: 0,
        older_draining,
        launch,
    };
    let event = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
    Box::leak(Box::new(Engine::new(parts, event, Work::new().unwrap())))
}

/// A serving engine whose successors do what `then` says.
fn serving(then: Then) -> (Arc<Fake>, &'static Engine) {
    let fake = Fake::new(then);
    let engine = engine_of(&fake, None, 0);
    engine.ready().unwrap();
    (fake, engine)
}

fn errno<T: std::fmt::Debug>(result: io::Result<T>) -> i32 {
    errno_of(&result.expect_err("refused"))
}

fn draining(engine: &Engine) -> bool {
    engine.wait_shutdown(Some(Duration::ZERO))
}

#[test]
fn a_ready_successor_takes_over_and_this_process_drains() {
    let (fake, engine) = serving(Then::Ready);
    assert!(!draining(engine));
    assert_eq!(engine.restart().unwrap(), 1001);
    assert!(draining(engine));
    assert_eq!(fake.env(0, "GRESTART_GENERATION"), "2");
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "1");
    assert_eq!(fake.env(0, "LISTEN_FDS"), "0");
    assert!(engine.heir_lock().is_some());
    // The successor serves: a second restart is its to make.
    assert_eq!(errno(engine.restart()), libc::ESHUTDOWN);
    assert!(fake.killed().is_empty());
}

#[test]
fn a_successor_that_exits_leaves_this_process_serving() {
    let (fake, engine) = serving(Then::Exits);
    let failed = engine.restart().expect_err("it exited");
    assert_eq!(errno_of(&failed), libc::ECHILD);
    assert!(!draining(engine));
    assert!(engine.heir_lock().is_none());
    // Not refused: the next restart is tried again.
    assert_eq!(errno(engine.restart()), libc::ECHILD);
    assert_eq!(fake.started.lock().unwrap().len(), 2);
}

#[test]
fn a_successor_not_ready_within_the_timeout_is_killed() {
    let (fake, engine) = serving(Then::Hangs);
    engine.set_ready_timeout(Duration::from_millis(20)).unwrap();
    let failed = engine.restart().expect_err("timed out");
    assert_eq!(errno_of(&failed), libc::ETIMEDOUT);
    assert!(failed.to_string().contains("killed it"), "{failed}");
    assert_eq!(fake.killed(), [1001]);
    assert!(!draining(engine));
}

#[test]
fn a_shutdown_during_a_restart_kills_the_successor_and_waits_for_the_restart() {
    let (fake, engine) = serving(Then::Hangs);
    let restart = thread::spawn(move || engine.restart());
    let pid = fake.a_successor_waits();
    engine.shutdown();
    // `shutdown` returned: the restart has ended, its successor killed.
    assert_eq!(fake.killed(), [pid]);
    assert_eq!(errno(restart.join().unwrap()), libc::ESHUTDOWN);
    assert!(engine.heir_lock().is_none());
}

#[test]
fn restarts_asked_for_during_a_restart_are_coalesced_into_it() {
    let (fake, engine) = serving(Then::WaitsForTheTest);
    let (told, hear) = mpsc::channel();
    let restart = thread::spawn(move || {
        engine.restart_coalescing(|| 3, |pid| told.send((pid, draining(engine))).unwrap())
    });
    let pid = fake.a_successor_waits();
    // Asked for again meanwhile: refused, the running restart is the answer.
    assert_eq!(errno(engine.restart()), libc::EALREADY);
    fake.let_go();
    assert_eq!(restart.join().unwrap().unwrap(), pid);
    // Who waits for the outcome hears it before this process drains.
    assert_eq!(hear.recv().unwrap(), (pid, false));
    assert!(draining(engine));
    assert_eq!(fake.started.lock().unwrap().len(), 1);
}

#[test]
fn a_restart_waits_for_ready_and_is_refused_while_draining() {
    let engine = engine_from(
        Err("a unit test".into()),
        Box::new(Fake::new(Then::Ready)),
        None,
        0,
    );
    assert_eq!(errno(engine.restart()), libc::EAGAIN);
    engine.ready().unwrap();
    engine.ready().unwrap(); // again: fine
    // Past the rules, but nothing tells how to start a successor.
    assert_eq!(errno(engine.restart()), libc::ENOEXEC);
    assert!(!draining(engine));
    engine.shutdown();
    assert!(draining(engine));
    assert_eq!(errno(engine.restart()), libc::ESHUTDOWN);
    assert_eq!(errno(engine.ready()), libc::ESHUTDOWN);
}

#[test]
fn a_restart_while_older_generations_drain_goes_ahead_up_to_the_cap() {
    let fake = Fake::new(Then::Ready);
    let (ours, _theirs) = UnixStream::pair().unwrap();
    let engine = engine_of(&fake, Some(Predecessor::new(ours.into(), 1)), 1);
    engine.ready().unwrap(); // tells the predecessor
    // The predecessor drains beside us and the successor.
    assert_eq!(engine.restart().unwrap(), 1001);
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "2");

    let fake = Fake::new(Then::Ready);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let full = engine_of(&fake, Some(Predecessor::new(ours.into(), 1)), MAX_DRAINING);
    full.ready().unwrap();
    let refused = full.restart().expect_err("refused at the cap");
    assert_eq!(errno_of(&refused), libc::EBUSY);
    assert!(
        refused.to_string().contains("at most 8 drain at once"),
        "{refused}"
    );
    assert!(fake.started.lock().unwrap().is_empty());
    drop(theirs); // the predecessor exited, and all it counted for
    assert_eq!(full.restart().unwrap(), 1001);
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "1");
}

#[test]
fn hooks_run_once_in_reverse_order() {
    let (_, engine) = serving(Then::Ready);
    let order = Arc::new(Mutex::new(Vec::new()));
    for i in 1..=3 {
        let order = Arc::clone(&order);
        engine
            .on_shutdown(Box::new(move || order.lock().unwrap().push(i)))
            .unwrap();
    }
    engine.shutdown();
    engine.shutdown();
    assert_eq!(*order.lock().unwrap(), [3, 2, 1]);
    let late = engine.on_shutdown(Box::new(|| ()));
    assert_eq!(errno(late), libc::ESHUTDOWN);
}

#[test]
fn a_hook_that_calls_shutdown_does_not_wait_for_itself() {
    let (_, engine) = serving(Then::Ready);
    let ran = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&ran);
    engine
        .on_shutdown(Box::new(move || {
            engine.shutdown();
            *seen.lock().unwrap() = true;
        }))
        .unwrap();
    engine.shutdown();
    assert!(*ran.lock().unwrap());
}

#[test]
fn shutdown_waits_for_the_work_in_flight() {
    let (_, engine) = serving(Then::Ready);
    assert_eq!(errno(engine.end_work()), libc::EINVAL);
    let finished = Arc::new(Mutex::new(false));
    let seen = Arc::clone(&finished);
    engine
        .on_shutdown(Box::new(move || assert!(*seen.lock().unwrap())))
        .unwrap();
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
    let (_, engine) = serving(Then::Ready);
    engine.set_drain_deadline(Some(Duration::ZERO));
    assert_eq!(engine.lock().settings.drain_deadline, None);
    engine.set_drain_deadline(Some(Duration::from_millis(5)));
    assert_eq!(
        engine.lock().settings.drain_deadline,
        Some(Duration::from_millis(5))
    );
}

fn idle(engine: &'static Engine) -> bool {
    let mut fds = [PollFd::new(engine.idle_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() == 1
}

#[test]
fn the_idle_fd_is_readable_exactly_while_no_work_is_in_flight() {
    let (_, engine) = serving(Then::Ready);
    assert!(idle(engine));
    engine.begin_work();
    engine.begin_work();
    assert!(!idle(engine));
    engine.end_work().unwrap();
    assert!(!idle(engine));
    engine.end_work().unwrap();
    assert!(idle(engine));
    // Threads racing through zero: the fd ends as the count does.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                for _ in 0..10_000 {
                    engine.begin_work();
                    engine.end_work().unwrap();
                }
            })
        })
        .collect();
    workers.into_iter().for_each(|w| w.join().unwrap());
    assert!(idle(engine));
    engine.begin_work();
    assert!(!idle(engine));
}
