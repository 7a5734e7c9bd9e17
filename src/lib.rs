//! # grestart: graceful restart for Linux servers, in any language
//!
//! On a signal (`SIGUSR2` by default) the running server fork-execs the binary
//! on disk, hands it its listening sockets, and once the new process says it is
//! ready, stops accepting, finishes what it accepted, runs its shutdown hooks
//! and exits. No connection is refused and no accepted request is lost.
//!
//! The same core serves C and C++ (`libgrestart.so` and `include/grestart.h`),
//! Python (`ctypes`) and Rust (this API). Sockets travel the way systemd's
//! socket activation passes them (`LISTEN_FDS`, `LISTEN_FDNAMES`), so a server
//! that uses grestart is also socket-activatable.
//!
//! ```no_run
//! use std::io::Write;
//!
//! fn main() -> std::io::Result<()> {
//!     // Inherited from the previous generation, or bound now on a fresh start.
//!     let listener = grestart::listen_tcp("127.0.0.1:8080")?;
//!     grestart::on_shutdown(|| eprintln!("bye"))?;
//!     grestart::ready()?;
//!     // Until a successor serves; a connection counts as work in flight until dropped.
//!     for connection in grestart::incoming(&listener) {
//!         let mut connection = connection?;
//!         std::thread::spawn(move || {
//!             connection.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
//!         });
//!     }
//!     grestart::shutdown() // waits for the connections in flight, then runs the hooks
//! }
//! ```
//!
//! Requires Linux 5.3 or later (pidfds). Every function may be called from any
//! thread. The C header, `include/grestart.h`, is the reference for what each
//! call does, its errors and its threads; the docs here say what differs in Rust.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod control;
mod engine;
mod error;
mod exec_watch;
#[doc(hidden)]
pub mod ffi;
mod handover;
#[doc(hidden)]
pub mod launcher;
mod link;
mod log;
mod notify;
mod origin;
mod protocol;
mod registry;
mod serve;
mod signal;
mod spawn;
mod stub;
mod supervise;
mod sys;
#[cfg(feature = "tokio")]
#[cfg_attr(docsrs, doc(cfg(feature = "tokio")))]
pub mod tokio;

use std::ffi::{CString, OsStr};
use std::io;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use engine::{Engine, engine, engine_in_any_process};
pub use error::errno_of;
pub use log::Level;

/// Hands `fd` to every future successor under `name`.
///
/// `fd` must be a socket, and a stream socket must be listening. grestart keeps
/// its own duplicate; the caller keeps `fd`. Names follow systemd's rules
/// (printable ASCII, no `:`, at most 255 bytes) and must be unique.
///
/// ```no_run
/// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
/// grestart::register_listener(&listener, "http")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn register_listener(fd: impl AsFd, name: &str) -> io::Result<()> {
    engine()?.register(fd.as_fd(), name)
}

/// In an heir, the socket the previous generation registered as `name`
/// (registered again for the next restart); `None` on a fresh start.
///
/// ```no_run
/// use std::net::TcpListener;
/// let listener = match grestart::inherit_listener("http")? {
///     Some(fd) => TcpListener::from(fd),
///     None => {
///         let fresh = TcpListener::bind("127.0.0.1:8080")?;
///         grestart::register_listener(&fresh, "http")?;
///         fresh
///     }
/// };
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn inherit_listener(name: &str) -> io::Result<Option<OwnedFd>> {
    engine()?.inherit(name)
}

/// Inherit-or-listen: the inherited socket bound to `address`, or a new one.
///
/// `address` is `tcp://HOST:PORT` (also `tcp4`, `tcp6`), `udp://HOST:PORT`
/// (`udp4`, `udp6`), `unix:/path` or `unix:@abstract`. An inherited socket is
/// chosen by the address it is bound to, so names given by systemd need not
/// match. `name` defaults to the address with `:` replaced by `_`.
pub fn listen(address: &str, name: Option<&str>) -> io::Result<OwnedFd> {
    engine()?.listen(address, name)
}

/// [`listen`] for a TCP address like `127.0.0.1:8080` or `[::1]:8080`.
pub fn listen_tcp(address: &str) -> io::Result<TcpListener> {
    listen(&format!("tcp://{address}"), None).map(TcpListener::from)
}

/// [`listen`] for a UDP address like `127.0.0.1:5353`.
pub fn listen_udp(address: &str) -> io::Result<UdpSocket> {
    listen(&format!("udp://{address}"), None).map(UdpSocket::from)
}

/// [`listen`] for a Unix-domain stream socket at `path`. The path is never
/// unlinked by grestart: the successor listens on it.
pub fn listen_unix(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let path = path
        .as_ref()
        .to_str()
        .ok_or_else(|| error::fail(libc::EINVAL, "the socket path is not UTF-8"))?;
    listen(&format!("unix:{path}"), None).map(UnixListener::from)
}

/// Runs `hook` once when this process shuts down, after the drain; hooks run
/// in reverse order of registration, on the thread that calls [`shutdown`]
/// (or grestart's drain-deadline thread). A panicking hook is logged and the
/// others still run.
pub fn on_shutdown(hook: impl FnOnce() + Send + 'static) -> io::Result<()> {
    engine()?.on_shutdown(Box::new(hook))
}

/// Makes `signo` the restart signal (default `SIGUSR2`) and gives the previous
/// one back the disposition it had before grestart.
///
/// `SIGKILL`, `SIGSTOP`, fault signals (`SIGSEGV`, `SIGBUS`, ...) and numbers
/// that are no signal are refused with `EINVAL`.
pub fn set_signal(signo: i32) -> io::Result<()> {
    signal::check(signo)?;
    engine()?;
    signal::install(signo)
}

/// Makes `signo` the stop signal (`None`: none, the default): when it arrives
/// this process drains as after a hand-over (the shutdown fd turns readable,
/// [`wait_shutdown`] returns), and the application finishes with [`shutdown`].
///
/// Typically `SIGTERM`, so that `docker stop`, `systemctl stop` and the
/// launcher's forwarding end the server gracefully, hooks and all. The same
/// signals as for [`set_signal`] are refused, and the restart signal.
pub fn set_stop_signal(signo: Option<i32>) -> io::Result<()> {
    engine()?;
    signal::install_stop(signo)
}

/// Says this process serves. In an heir, the previous generation then drains.
/// Inherited sockets nobody claimed are closed now.
pub fn ready() -> io::Result<()> {
    engine()?.ready()
}

/// Restarts now, as the signal would, and waits for the outcome: the new
/// generation's pid once it is ready (this process then drains), an error
/// when it failed, in which case this process serves on.
///
/// Refused with `EAGAIN` before [`ready`] or when too many generations are
/// draining, `EALREADY` while another restart runs, and `ESHUTDOWN` while
/// draining.
pub fn restart() -> io::Result<u32> {
    engine()?.restart().map(|pid| pid as u32)
}

/// An fd that turns readable when this process must drain, for an event loop.
/// It stays readable; do not read from it or close it. A forked worker shares
/// it with its master, and so drains when the master does.
pub fn shutdown_fd() -> io::Result<BorrowedFd<'static>> {
    Ok(engine_in_any_process()?.shutdown_fd())
}

/// Blocks until this process must drain, or `timeout` passes (`Ok(false)`).
pub fn wait_shutdown(timeout: Option<Duration>) -> io::Result<bool> {
    Ok(engine_in_any_process()?.wait_shutdown(timeout))
}

/// Starts draining if not already, waits until no [`Work`] is in flight (no
/// [`Accepted`] connection is left), and runs the shutdown hooks, once. A
/// second caller, on any thread, returns when the hooks have finished; a hook
/// that calls it returns at once.
pub fn shutdown() -> io::Result<()> {
    engine()?.shutdown();
    Ok(())
}

/// In a draining process, hands the idle `connection`, accepted on the
/// listener named `listener` (`None`: the one whose address it was accepted
/// on), to the successor, which serves it as if it had just accepted it; then
/// drop your own descriptor (that closes nothing: the successor holds the
/// connection).
///
/// Fails with `ESRCH` when no successor takes connections: then close the
/// connection as you would without grestart. What idle means and the other
/// errors: `gr_hand_over` in `include/grestart.h`.
pub fn hand_over(connection: impl AsFd, listener: Option<&str>) -> io::Result<()> {
    engine()?.hand_over(connection.as_fd(), listener)
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

/// 1 for a fresh start, one more with every hand-over.
pub fn generation() -> io::Result<u64> {
    Ok(engine_in_any_process()?.generation())
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
            Ok(fd) => Some(Ok(Accepted {
                stream: L::Stream::from(fd),
                work: Work { engine },
            })),
            Err(e) if serve::is_drain(&e) => None,
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

/// How long a successor may take to become ready before it is killed (default 60 s).
pub fn set_ready_timeout(timeout: Duration) -> io::Result<()> {
    engine()?.set_ready_timeout(timeout)
}

/// How long a draining process may take before it runs its hooks and exits
/// anyway (`None` or zero, the default: as long as it takes).
pub fn set_drain_deadline(deadline: Option<Duration>) -> io::Result<()> {
    engine()?.set_drain_deadline(deadline);
    Ok(())
}

/// Where each generation writes its pid when it becomes ready (`None`: nowhere).
pub fn set_pid_file(path: Option<&Path>) -> io::Result<()> {
    engine()?.set_pid_file(path.map(Path::to_path_buf));
    Ok(())
}

/// Starts successors from `exe` (with `argv`, or this process's own argv)
/// instead of the executable this process was started from.
pub fn set_executable(exe: impl AsRef<Path>, argv: Option<&[&OsStr]>) -> io::Result<()> {
    let c = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| error::fail(libc::EINVAL, "argument contains NUL"))
    };
    let exe = c(exe.as_ref().as_os_str())?;
    let argv = argv
        .map(|args| args.iter().map(|a| c(a)).collect::<io::Result<Vec<_>>>())
        .transpose()?;
    engine()?.set_executable(exe, argv);
    Ok(())
}

/// Logs up to `level` (`None`: nothing). The default comes from `GRESTART_LOG`, else `info`.
pub fn set_log_level(level: Option<Level>) {
    log::set_level(level);
}

/// Sends log lines to `logger` instead of stderr (`None`: back to stderr).
/// It is called from whichever thread logs, so it must be thread-safe.
/// Returns once no thread runs the previous logger any more (at once when
/// called from inside a logger).
pub fn set_logger(logger: Option<impl Fn(Level, &str) + Send + Sync + 'static>) {
    log::set_logger(logger.map(|l| Arc::new(l) as log::Logger));
}

/// This library's version, from `Cargo.toml`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
