//! grestart for tokio (feature `tokio`), and for axum (feature `axum`).
//!
//! An async server hands over in three steps, and each has its piece here:
//!
//! 1. Stop accepting the moment a successor serves, leaving the queued
//!    connections to it: [`Incoming`] ends then (and, as an `axum::serve`
//!    listener, simply stops yielding connections).
//! 2. Let every connection finish what it started, and answer the next
//!    request of each keep-alive connection with `Connection: close`
//!    (`close_when_draining` for axum). A connection the old generation
//!    closed while idle would race with a request the client is sending at
//!    that moment, and lose it.
//! 3. Close only what stays idle past a grace period, and exit as soon as no
//!    connection is left: [`drained`] resolves then; give it to the
//!    framework's graceful shutdown.
//!
//! `examples/axum_server.rs` puts the three together; [`Incoming`] shows a
//! plain tokio accept loop.

use std::future::{Future, poll_fn};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

use crate::error::{fail, with_context};
use crate::{Work, work};

/// Resolves when this process must drain: a successor serves, or
/// [`shutdown`](crate::shutdown) began. Any number of tasks may wait at once.
pub async fn shutdown_requested() -> io::Result<()> {
    in_runtime("grestart::tokio::shutdown_requested")?;
    // Each waiter registers its own duplicate: the reactor takes an fd once.
    let fd = crate::shutdown_fd()?.try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
    // descriptor until the AsyncFd is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    // The fd stays readable once the drain began: never clear the readiness.
    let _ready = fd.readable().await?;
    Ok(())
}

/// Resolves once this process drains and then either no work is in flight
/// in it (every [`Connection`] of an [`Incoming`] dropped, and every other
/// [`Work`]: `grestart::work`, `adopt_counted`), or `grace`
/// passed: the moment to close the connections that stayed idle (the
/// adapters' default grace is
/// [`DEFAULT_IDLE_GRACE`](crate::limits::DEFAULT_IDLE_GRACE)). Give it to the
/// framework's graceful shutdown (axum's `with_graceful_shutdown`). An error
/// of the shutdown fd (grestart unusable in this process) resolves it at
/// once; without the idle fd (a forked worker) it waits the whole grace.
pub async fn drained(grace: Duration) {
    if shutdown_requested().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(grace, async {
        if no_work_in_flight().await.is_err() {
            std::future::pending::<()>().await;
        }
    })
    .await;
}

/// Resolves once no work is in flight in this process: the core's idle fd,
/// readable exactly then, is the one count of it.
async fn no_work_in_flight() -> io::Result<()> {
    // A duplicate of our own: the reactor takes an fd once.
    let fd = crate::idle_fd()?.try_clone_to_owned()?;
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the same
    // descriptor until the AsyncFd is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    loop {
        let mut ready = fd.readable().await?;
        // The readiness tokio saw may be stale: work may have begun since.
        if readable_now(fd.get_ref().as_fd())? {
            return Ok(());
        }
        ready.clear_ready();
    }
}

fn readable_now(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    Ok(poll(&mut fds, PollTimeout::ZERO)? == 1)
}

fn in_runtime(what: &str) -> io::Result<()> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| {
            fail(
                libc::EINVAL,
                format!("{what} needs a running tokio runtime"),
            )
        })
}

/// [`crate::listen_tcp`] as a tokio listener. Call it inside the runtime.
pub fn listen_tcp(address: &str) -> io::Result<tokio::net::TcpListener> {
    in_runtime("grestart::tokio::listen_tcp")?;
    let listener = crate::listen_tcp(address)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// [`crate::listen_unix`] as a tokio listener. Call it inside the runtime.
pub fn listen_unix(path: impl AsRef<Path>) -> io::Result<tokio::net::UnixListener> {
    in_runtime("grestart::tokio::listen_unix")?;
    let listener = crate::listen_unix(path)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// A tokio listener [`Incoming`] accepts on.
pub trait Listener: Send + 'static {
    /// What a connection accepted on it is.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The peer's address.
    type Addr: Send;
    /// The listener's own address.
    fn local_addr(&self) -> io::Result<Self::Addr>;
    #[doc(hidden)]
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>>;
}

impl Listener for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;
    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.local_addr()
    }
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        self.poll_accept(cx)
    }
}

impl Listener for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;
    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.local_addr()
    }
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<(Self::Stream, Self::Addr)>> {
        self.poll_accept(cx)
    }
}

type Drain = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A connection [`Incoming`] accepted, and the peer's address.
pub type Accepted<L> = (Connection<<L as Listener>::Stream>, <L as Listener>::Addr);

/// The connections arriving on a tokio listener until this process must
/// drain; the async [`crate::incoming`]. Each [`Connection`] counts as work in
/// flight (and for [`drained`]) until dropped.
///
/// ```no_run
/// # async fn serve() -> std::io::Result<()> {
/// let listener = grestart::tokio::listen_tcp("127.0.0.1:8080")?;
/// let mut incoming = grestart::tokio::Incoming::new(listener);
/// grestart::ready()?;
/// while let Some(accepted) = incoming.accept().await {
///     let (connection, _peer) = accepted?;
///     tokio::spawn(async move { drop(connection) }); // serve it, then drop it
/// }
/// grestart::shutdown() // returns once every connection was dropped
/// # }
/// ```
pub struct Incoming<L> {
    listener: L,
    /// `None` once the drain began: the iterator stays ended.
    drain: Option<Drain>,
}

impl<L: Listener> Incoming<L> {
    pub fn new(listener: L) -> Incoming<L> {
        Incoming {
            listener,
            drain: Some(Box::pin(shutdown_requested())),
        }
    }

    /// The next connection; `None` once this process must drain (the queued
    /// connections are the successor's). Connections the client gave up
    /// before they were accepted are skipped.
    pub async fn accept(&mut self) -> Option<io::Result<Accepted<L>>> {
        poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Accepted<L>>>> {
        // The drain first: once a successor serves, not one more connection.
        let Some(drain) = self.drain.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(drain) = drain.as_mut().poll(cx) {
            self.drain = None;
            return Poll::Ready(drain.err().map(Err));
        }
        // Counted before the last look at the drain, which asks the shutdown
        // fd itself (the reactor may not have told the future yet): a
        // `drained` that finds no work in flight either came before this, and
        // the look sees the drain, or waits for the connection taken here.
        // Counted after the accept instead, a connection taken as `drained`
        // resolved would be cut by the framework's graceful shutdown.
        let work = match work() {
            Ok(work) => work,
            Err(e) => return Poll::Ready(Some(Err(e))),
        };
        if crate::wait_shutdown(Some(Duration::ZERO)).unwrap_or(false) {
            self.drain = None;
            return Poll::Ready(None);
        }
        loop {
            return match self.listener.poll_accept(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok((stream, addr))) => {
                    Poll::Ready(Some(Ok((Connection::new(stream, work), addr))))
                }
                Poll::Ready(Err(e)) if gone_before_accept(&e) => continue,
                Poll::Ready(Err(e)) => Poll::Ready(Some(Err(with_context(e, "accept")))),
            };
        }
    }

    /// The listener's own address.
    pub fn local_addr(&self) -> io::Result<L::Addr> {
        self.listener.local_addr()
    }
}

fn gone_before_accept(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EINTR | libc::EPROTO)
    )
}

/// A connection from [`Incoming`]: the stream, which counts as work in
/// flight until dropped. Reads and writes go to the stream.
pub struct Connection<S> {
    stream: S,
    _work: Work,
}

impl<S> Connection<S> {
    fn new(stream: S, work: Work) -> Connection<S> {
        Connection {
            stream,
            _work: work,
        }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Connection<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Connection<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// For `axum::serve`: yields connections until this process must drain, then
/// none (axum keeps serving the open ones until its graceful shutdown).
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<L: Listener> axum::serve::Listener for Incoming<L> {
    type Io = Connection<L::Stream>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match Incoming::accept(self).await {
                Some(Ok(accepted)) => return accepted,
                // Out of fds or memory: what axum's own listener does, wait and retry.
                Some(Err(e)) => {
                    crate::log::warning!("{e}; accepting again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Incoming::local_addr(self)
    }
}

/// Response middleware for axum (`axum::middleware::map_response`): while
/// this process drains, each response says `Connection: close`, so a
/// keep-alive client's next request goes to the successor.
///
/// ```no_run
/// # async fn serve() -> std::io::Result<()> {
/// let router = axum::Router::new()
///     .route("/", axum::routing::get(|| async { "hello\n" }))
///     .layer(axum::middleware::map_response(grestart::tokio::close_when_draining));
/// let listener = grestart::tokio::listen_tcp("127.0.0.1:8080")?;
/// grestart::ready()?;
/// axum::serve(grestart::tokio::Incoming::new(listener), router)
///     .with_graceful_shutdown(grestart::tokio::drained(grestart::limits::DEFAULT_IDLE_GRACE))
///     .await?;
/// grestart::shutdown()
/// # }
/// ```
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub async fn close_when_draining(
    mut response: axum::response::Response,
) -> axum::response::Response {
    if crate::wait_shutdown(Some(Duration::ZERO)).unwrap_or(false) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_a_runtime_the_listeners_fail_clearly_instead_of_panicking() {
        let err = listen_tcp("127.0.0.1:0").unwrap_err();
        assert_eq!(crate::errno_of(&err), libc::EINVAL);
        assert!(err.to_string().contains("tokio runtime"), "{err}");
        let err = listen_unix("/nonexistent/socket").unwrap_err();
        assert_eq!(crate::errno_of(&err), libc::EINVAL);
    }

    /// The drain's wait is the core's count: it sees every `Work`, not only
    /// the connections of an `Incoming`, and ends when the last one does.
    #[test]
    fn the_wait_for_no_work_follows_every_work_in_flight() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let work = crate::work().unwrap();
            let waiting = tokio::spawn(no_work_in_flight());
            // Correctness, not speed: still waiting, however slow the machine.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!waiting.is_finished(), "resolved with work in flight");
            drop(work);
            let resolved = tokio::time::timeout(Duration::from_secs(10), waiting).await;
            assert!(
                matches!(resolved, Ok(Ok(Ok(())))),
                "resolves once the last work ended: {resolved:?}"
            );
        });
    }
}
