//! Hooks, the work in flight and its idle fd, settings.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::fake::*;
use crate::engine::*;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

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
