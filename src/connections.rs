//! The connections of the safe API: accepting until this process must drain
//! ([`incoming`]), work in flight counted until it is dropped ([`Accepted`],
//! [`Work`]), and idle connections handed to the successor ([`hand_over`]) and
//! adopted from the predecessor ([`adopt`]).

use std::io;
use std::net::{TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use crate::engine::{Engine, engine, engine_in_any_process};
use crate::handover::Offer;
use crate::serve;
#[cfg(doc)]
use crate::{ready, shutdown}; // the doc comments link to them

/// In a draining process, hands the idle `connection`, accepted on the
/// listener named `listener` (`None`: the one whose address it was accepted
/// on), to the successor, which serves it as if it had just accepted it; then
/// drop your own descriptor (that closes nothing: grestart holds the
/// connection until the successor does; it goes with others in one message,
/// within half a millisecond, at [`shutdown`], or at the latest at exit).
///
/// [`HandOver::Declined`] when no successor takes connections (C's `ESRCH`):
/// then close the connection as you would without grestart. An error is
/// misuse (what idle means and the errors: `gr_hand_over` in
/// `include/grestart.h`): a connection nobody can take.
pub fn hand_over(connection: impl AsFd, listener: Option<&str>) -> io::Result<HandOver> {
    Ok(match engine()?.hand_over(connection.as_fd(), listener)? {
        Offer::Taken => HandOver::Handed,
        Offer::Declined(_) => HandOver::Declined,
    })
}

/// What became of a connection offered to the successor by [`hand_over`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandOver {
    /// The successor holds it: drop your descriptor (that closes nothing).
    Handed,
    /// No successor takes connections (no restart, a failed one, a successor
    /// that does not adopt or is gone): close it as you would without grestart.
    Declined,
}

/// Whether a ready successor takes the connections handed to it now, so that
/// a draining server keeps an idle connection for [`hand_over`] rather than
/// answering `Connection: close` (`gr_successor_adopts` in C).
pub fn successor_adopts() -> io::Result<bool> {
    Ok(engine()?.successor_adopts())
}

/// An fd that is readable exactly while no [`Work`] is in flight in this
/// process, for an event loop waiting for its last connection as it drains
/// (`gr_idle_fd` in C; do not read or close it).
pub fn idle_fd() -> io::Result<BorrowedFd<'static>> {
    Ok(engine()?.idle_fd())
}

/// An fd that is readable while connections handed over by the previous
/// generation wait to be [`adopt`]ed, for an event loop (do not read or close
/// it). Asking for it tells the previous generation that this process adopts
/// connections: ask before [`ready`], so that it hands over from the start.
/// On a fresh start it never turns readable.
pub fn adopt_fd() -> io::Result<BorrowedFd<'static>> {
    engine()?.adopt_fd()
}

/// A connection handed over by the previous generation.
pub struct Adopted {
    /// The connected socket, blocking or not as the previous generation left it.
    pub connection: OwnedFd,
    /// The name of the listener it was accepted on.
    pub listener: String,
}

/// The next connection handed over by the previous generation, waiting up to
/// `timeout` (`None`: as long as it takes) for one; `Ok(None)` when none came
/// in time. Serve it exactly as a connection just accepted on its listener.
/// The first call says this process adopts connections, as [`adopt_fd`] does.
/// Unlike an [`Accepted`] connection it is no [`Work`] in flight (an event
/// loop keeps its own count): see [`adopt_counted`].
pub fn adopt(timeout: Option<Duration>) -> io::Result<Option<Adopted>> {
    let handed = engine()?.adopt(timeout, |_| true)?;
    Ok(handed.map(|h| Adopted {
        connection: h.connection,
        listener: h.listener,
    }))
}

/// [`adopt`], and the connection counts as [`Work`] in flight until the
/// [`Accepted`] is dropped, as [`incoming`]'s connections do: for a server
/// that serves each connection on a thread of its own and lets [`shutdown`]
/// wait for them (`gr_adopt_counted` in C).
pub fn adopt_counted(timeout: Option<Duration>) -> io::Result<Option<Accepted<Adopted>>> {
    let engine = engine()?;
    let handed = engine.adopt(timeout, |_| true)?;
    Ok(handed.map(|h| {
        engine.begin_work();
        Accepted {
            stream: Adopted {
                connection: h.connection,
                listener: h.listener,
            },
            work: Work { engine },
        }
    }))
}

/// A listener [`incoming`] accepts on.
pub trait Listener: AsFd {
    /// What a connection accepted on it is.
    type Stream: From<OwnedFd>;
}

impl Listener for TcpListener {
    type Stream = TcpStream;
}

impl Listener for UnixListener {
    type Stream = UnixStream;
}

/// The connections arriving on `listener`, until this process must drain.
///
/// The iterator ends as soon as a successor serves (or [`shutdown`] began),
/// leaving the connections still queued to the successor, even while it is
/// blocked waiting: a plain `listener.incoming()` loop would go on accepting.
/// Each connection counts as work in flight until it is dropped, and
/// [`shutdown`] waits for them. The streams are blocking; the listener is made
/// non-blocking, a flag every generation shares. Works in a forked worker too.
/// An error ends nothing: out of fds (`EMFILE`) the next item comes after a
/// pause (5 ms, doubled while it lasts, up to 1 s), so a loop that goes on
/// does not spin.
///
/// ```no_run
/// let listener = grestart::listen_tcp("127.0.0.1:8080")?;
/// grestart::ready()?;
/// for connection in grestart::incoming(&listener) {
///     let connection = connection?;
///     std::thread::spawn(move || drop(connection)); // serve it, then drop it
/// }
/// grestart::shutdown() // returns once every connection was dropped
/// # ; Ok::<(), std::io::Error>(())
/// ```
pub fn incoming<L: Listener>(listener: &L) -> Incoming<'_, L> {
    Incoming { listener }
}

/// The iterator of [`incoming`]. Once this process drains it stays ended: the
/// shutdown fd stays readable.
pub struct Incoming<'a, L> {
    listener: &'a L,
}

impl<L: Listener> Iterator for Incoming<'_, L> {
    type Item = io::Result<Accepted<L::Stream>>;

    fn next(&mut self) -> Option<Self::Item> {
        let engine = match engine_in_any_process() {
            Ok(engine) => engine,
            Err(e) => return Some(Err(e)),
        };
        match serve::accept(engine, self.listener.as_fd()) {
            Ok(Some(fd)) => Some(Ok(Accepted {
                stream: L::Stream::from(fd),
                work: Work { engine },
            })),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        }
    }
}

/// A connection from [`incoming`]: use it as the stream it derefs to; it
/// counts as work in flight until dropped.
pub struct Accepted<S> {
    stream: S,
    work: Work,
}

impl<S> Accepted<S> {
    /// The stream and its [`Work`], for a stream that must move on alone.
    pub fn into_parts(self) -> (S, Work) {
        (self.stream, self.work)
    }
}

impl<S> Deref for Accepted<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.stream
    }
}

impl<S> DerefMut for Accepted<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

/// One piece of work in flight: [`shutdown`] waits until every `Work` is
/// dropped (or the drain deadline passes) before it runs the hooks.
#[must_use = "the work counts as in flight only while the Work is alive"]
pub struct Work {
    engine: &'static Engine,
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = self.engine.end_work();
    }
}

/// Counts work in flight (a request a thread is serving, a job being
/// finished) until the returned [`Work`] is dropped.
pub fn work() -> io::Result<Work> {
    let engine = engine_in_any_process()?;
    engine.begin_work();
    Ok(Work { engine })
}
