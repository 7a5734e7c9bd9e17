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
mod connections;
mod control;
mod engine;
mod error;
mod exec_watch;
#[doc(hidden)]
pub mod ffi;
mod handover;
#[doc(hidden)]
pub mod launcher;
pub mod limits;
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
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use connections::{
    Accepted, Adopted, HandOver, Incoming, Listener, Work, adopt, adopt_counted, adopt_fd,
    hand_over, idle_fd, incoming, successor_adopts, work,
};
use engine::{engine, engine_in_any_process};
pub use error::errno_of;
pub use log::Level;

/// Hands `fd` to every future successor under `name`.
///
/// `fd` must be a socket, and a stream socket must be listening. grestart keeps
/// its own duplicate; the caller keeps `fd`. Names follow systemd's rules
/// (printable ASCII, no `:`, at most [`limits::GR_NAME_MAX`] bytes) and must be unique.
///
/// ```no_run
/// let listener = std::net::TcpListener::bind("127.0.0.1:8080")?;
/// grestart::register_listener(&listener, "http")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn register_listener(fd: impl AsFd, name: &str) -> io::Result<()> {
    engine()?.register(fd.as_fd(), name)
}

/// In a successor, the socket the previous generation registered as `name`
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
/// one back the disposition it had before grestart (if a restart runs, when
/// it is over: until then a signal sent by its old number still joins it).
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

/// Says this process serves. In a successor, the previous generation then drains.
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

/// 1 for a fresh start, one more with every hand-over.
pub fn generation() -> io::Result<u64> {
    Ok(engine_in_any_process()?.generation())
}

/// How long a successor may take to become ready before it is killed
/// (default [`limits::DEFAULT_READY_TIMEOUT`]).
pub fn set_ready_timeout(timeout: Duration) -> io::Result<()> {
    engine()?.set_ready_timeout(timeout)
}

/// How long a draining process may take before it runs its hooks and exits
/// anyway (`None` or zero, the default: as long as it takes).
pub fn set_drain_deadline(deadline: Option<Duration>) -> io::Result<()> {
    engine()?.set_drain_deadline(deadline);
    Ok(())
}

/// How long this generation asks `grestart run` to keep it on probation after
/// it took over (zero: none; unset: the launcher's `--probation`): if it dies
/// or fails the health check within that, the last good release is started in
/// its place. Applies from the next [`ready`]; see `gr_set_probation_ms`.
pub fn set_probation(probation: Duration) -> io::Result<()> {
    engine()?.set_probation(probation);
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
