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
use crate::link::Older;
use crate::protocol::Draining;
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
fn engine_of(fake: &Arc<Fake>, predecessor: Option<Predecessor>, older: Older) -> &'static Engine {
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
    older: Older,
) -> &'static Engine {
    let parts = Parts {
        generation: 1,
        origin,
        inherited: Vec::new(),
        predecessor,
        notify_socket: None,
        watch: None,
        ignoring: 0,
        older,
        launch,
    };
    let event = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).unwrap();
    Box::leak(Box::new(Engine::new(parts, event, Work::new().unwrap())))
}

/// A serving engine whose successors do what `then` says.
fn serving(then: Then) -> (Arc<Fake>, &'static Engine) {
    let fake = Fake::new(then);
    let engine = engine_of(&fake, None, Older::Counted(0));
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
    assert_eq!(fake.env(0, "GRESTART_DRAINING_PIDS"), joined(&[me()]));
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
        Older::Counted(0),
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

/// This test process's pid: a generation that is alive.
fn me() -> i32 {
    std::process::id() as i32
}

/// The pid a test's predecessor stands for (not our parent: only its link
/// says whether it lives).
const PREDECESSOR: i32 = 1;

/// A predecessor that drains until the returned end is dropped.
fn predecessor() -> (Predecessor, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (Predecessor::new(ours.into(), PREDECESSOR), theirs)
}

/// Older generations as a predecessor lists them: `pids`, then its own.
fn listed(pids: impl IntoIterator<Item = i32>) -> Older {
    let pids = pids.into_iter().chain([PREDECESSOR]).collect();
    Older::open(Draining::Known(pids), Some(PREDECESSOR))
}

/// `GRESTART_DRAINING_PIDS` for `pids`.
fn joined(pids: &[i32]) -> String {
    pids.iter()
        .map(i32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn a_restart_while_older_generations_drain_goes_ahead_up_to_the_cap() {
    let fake = Fake::new(Then::Ready);
    let (link, _drains) = predecessor();
    let engine = engine_of(&fake, Some(link), listed([me()]));
    engine.ready().unwrap(); // tells the predecessor
    // The older generations drain beside us and the successor.
    assert_eq!(engine.restart().unwrap(), 1001);
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "3");
    let passed = joined(&[me(), PREDECESSOR, me()]);
    assert_eq!(fake.env(0, "GRESTART_DRAINING_PIDS"), passed);

    let fake = Fake::new(Then::Ready);
    let (link, drains) = predecessor();
    let older = listed(vec![me(); MAX_DRAINING as usize - 1]);
    let full = engine_of(&fake, Some(link), older);
    full.ready().unwrap();
    let refused = full.restart().expect_err("refused at the cap");
    assert_eq!(errno_of(&refused), libc::EBUSY);
    let why = refused.to_string();
    assert!(
        why.contains("8 older generations are still draining, and at most 8"),
        "{why}"
    );
    assert!(fake.started.lock().unwrap().is_empty());
    drop(drains); // the predecessor exited: we make the eighth
    assert_eq!(full.restart().unwrap(), 1001);
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "8");
}

#[test]
fn behind_an_older_grestart_the_count_holds_while_the_predecessor_lives() {
    let fake = Fake::new(Then::Ready);
    let (link, drains) = predecessor();
    let full = engine_of(&fake, Some(link), Older::Counted(MAX_DRAINING));
    full.ready().unwrap();
    assert_eq!(errno(full.restart()), libc::EBUSY);
    drop(drains); // the predecessor exited, and all it counted for
    assert_eq!(full.restart().unwrap(), 1001);
    // From here on the successors know them by pid.
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "1");
    assert_eq!(fake.env(0, "GRESTART_DRAINING_PIDS"), joined(&[me()]));
}

/// Processes of this test's own, killed and reaped when dropped.
struct Children(Vec<std::process::Child>);

impl Children {
    fn sleeping(n: usize) -> Children {
        let sleep = |_| {
            std::process::Command::new("sleep")
                .arg("60")
                .spawn()
                .unwrap()
        };
        Children((0..n).map(sleep).collect())
    }

    fn pids(&self) -> Vec<i32> {
        self.0.iter().map(|child| child.id() as i32).collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Quick deploys: each generation restarts while its predecessor still
/// drains, so a count passed down the chain only grew. The older ones that
/// exited, before we started or while we serve, no longer count.
#[test]
fn a_chain_whose_older_generations_exited_is_not_refused() {
    let first = Children::sleeping(1);
    let gone = first.pids();
    drop(first);
    let draining = Children::sleeping(6);
    let fake = Fake::new(Then::Ready);
    let (link, _drains) = predecessor();
    let engine = engine_of(&fake, Some(link), listed([gone, draining.pids()].concat()));
    engine.ready().unwrap();
    // Eight listed; six of them, the predecessor and us make the cap.
    assert_eq!(engine.restart().unwrap(), 1001);
    let passed = [draining.pids(), vec![PREDECESSOR, me()]].concat();
    assert_eq!(fake.env(0, "GRESTART_DRAINING_PIDS"), joined(&passed));

    let (oldest, others) = (Children::sleeping(1), Children::sleeping(6));
    let fake = Fake::new(Then::Ready);
    let (link, _drains) = predecessor();
    let engine = engine_of(
        &fake,
        Some(link),
        listed([oldest.pids(), others.pids()].concat()),
    );
    engine.ready().unwrap();
    assert_eq!(
        errno(engine.restart()),
        libc::EBUSY,
        "seven and the predecessor"
    );
    drop(others); // they finish draining while we serve
    assert_eq!(engine.restart().unwrap(), 1001);
    assert_eq!(fake.env(0, "GRESTART_DRAINING"), "3");
    let passed = [oldest.pids(), vec![PREDECESSOR, me()]].concat();
    assert_eq!(fake.env(0, "GRESTART_DRAINING_PIDS"), joined(&passed));
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
