//! Restarts while older generations drain: the cap, counted by pid.

use std::os::unix::net::UnixStream;

use super::fake::*;
use crate::engine::restart::MAX_DRAINING;
use crate::engine::*;
use crate::error::errno_of;
use crate::link::Older;
use crate::protocol::Draining;

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
