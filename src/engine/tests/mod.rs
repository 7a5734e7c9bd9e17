//! The lifecycle driven in-process: engines of their own with a fake
//! successor ([`fake::Fake`]), so that every outcome of a restart (ready,
//! failed, timed out, stopped, coalesced, several generations draining) is
//! tested without a process.

mod draining;
mod fake;
mod lifecycle;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::engine::*;
use crate::error::errno_of;
use fake::*;

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
