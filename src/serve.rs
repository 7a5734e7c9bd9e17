//! What a blocking, thread-per-connection server needs to hand over without
//! losing a request: an accept that stops when a successor serves, and a count
//! of the work in flight that the shutdown waits for.
//!
//! A thread blocked in `accept` is not woken when another thread closes the
//! listener, so a plain accept loop keeps taking connections after the
//! hand-over, and a `main` that returns while connection threads still serve
//! cuts their requests off. [`accept`] polls the listener together with the
//! shutdown fd; every connection it returns counts as work in flight until
//! the application ends it, and `shutdown` waits for that count to reach zero
//! (bounded by the drain deadline) before it runs the hooks.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{SockFlag, accept4};

use crate::engine::Engine;
use crate::error::{fail, with_context};

/// Waits for a connection on `listener` and accepts it (blocking and
/// close-on-exec), counting it as work in flight; `None` once this process
/// must drain, leaving the queued connections to the successor.
///
/// The listener is made non-blocking (the flag is shared by every generation):
/// the successor may take the connection between our poll and our accept.
pub(crate) fn accept(
    engine: &'static Engine,
    listener: BorrowedFd<'_>,
) -> io::Result<Option<OwnedFd>> {
    let flags =
        fcntl(listener, FcntlArg::F_GETFL).map_err(|e| with_context(e.into(), "the listener"))?;
    let flags = OFlag::from_bits_retain(flags);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(listener, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))
            .map_err(|e| with_context(e.into(), "cannot make the listener non-blocking"))?;
    }
    // Adopted connections come with the accepted ones once this process
    // adopts. When those waiting belong to other listeners, their fd stays
    // readable: it is left out of the poll a moment, not spun on.
    let adoption = engine.adoption_fd();
    let mut others_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let adopting = adoption.filter(|_| others_until.is_none_or(|t| now >= t));
        let mut fds: Vec<PollFd<'_>> = [engine.shutdown_fd(), listener.as_fd()]
            .into_iter()
            .chain(adopting)
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        let timeout = match (adopting, others_until) {
            (None, Some(until)) => PollTimeout::try_from(until.saturating_duration_since(now))
                .unwrap_or(PollTimeout::MAX),
            _ => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(with_context(e.into(), "waiting for a connection")),
        }
        if fds[0].any() == Some(true) {
            return Ok(None); // the successor accepts the connections now
        }
        if fds.get(2).and_then(PollFd::any) == Some(true) {
            match counted(engine, || engine.adopt_on(listener).ok_or(())) {
                None => return Ok(None),
                Some(Ok(adopted)) => return Ok(Some(adopted)),
                Some(Err(())) => others_until = Some(now + OTHERS_WAIT),
            }
        }
        if fds[1].any() != Some(true) {
            continue;
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLNVAL))
        {
            return Err(fail(libc::EINVAL, "the listener is not a listening socket"));
        }
        let accepted = match counted(engine, || accept4(listener, SockFlag::SOCK_CLOEXEC)) {
            None => return Ok(None),
            Some(accepted) => accepted,
        };
        match accepted {
            Ok(connection) => {
                let _ = BACKOFF.try_with(|b| b.set(Duration::ZERO));
                return Ok(Some(connection));
            }
            // Taken by the successor or another worker, or given up by the client.
            Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED) => continue,
            // Out of fds or memory: the connection stays queued and the
            // listener readable, so a loop that goes on (as documented) would
            // spin at full speed. Wait first, as Go's and axum's servers do.
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                back_off(engine);
                return Err(with_context(e.into(), "accept"));
            }
            Err(e) => return Err(with_context(e.into(), "accept")),
        }
    }
}

/// Takes a connection with `take`, counted as work in flight from before the
/// last look at the shutdown fd; `None`, counting nothing, when this process
/// drains. A shutdown that finds no work in flight either came before the
/// count, and the look sees the drain, or waits for the connection taken
/// here; counted after the take instead, a connection taken as the shutdown
/// found none would be cut off by the process's exit. Nothing stays counted
/// when `take` fails.
fn counted<T, E>(
    engine: &'static Engine,
    take: impl FnOnce() -> Result<T, E>,
) -> Option<Result<T, E>> {
    engine.begin_work();
    let taken = match engine.wait_shutdown(Some(Duration::ZERO)) {
        true => None,
        false => Some(take()),
    };
    if !matches!(taken, Some(Ok(_))) {
        let _ = engine.end_work();
    }
    taken
}

/// How long an accept leaves connections handed over on other listeners to
/// their own accepts before it looks again.
const OTHERS_WAIT: Duration = Duration::from_millis(10);

/// The first wait after an accept ran out of resources, doubled at each
/// failure in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(5);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's last wait; zero after an accept that worked.
    static BACKOFF: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Waits before the next accept, or until this process must drain.
fn back_off(engine: &'static Engine) {
    let wait = BACKOFF
        .try_with(|b| {
            let wait = (b.get() * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
            b.set(wait);
            wait
        })
        .unwrap_or(MAX_BACKOFF);
    let mut fds = [PollFd::new(engine.shutdown_fd(), PollFlags::POLLIN)];
    let _ = poll(
        &mut fds,
        PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX),
    );
}
