//! Idle connections handed to the successor, so that a restart closes none
//! (see docs/architecture.md, "Connections across a restart").
//!
//! The two generations share a private Unix stream socket pair (made in
//! `spawn.rs`, the heir's end known to `link.rs`). What travels on it:
//!
//! * heir to old: `R` ready (the first byte, as every grestart has said it),
//!   `A` "I adopt connections" (with `R`, or later), `K` "I adopted one";
//! * old to heir: one message per connection: the length of the listener's
//!   name in a byte, the name, and the socket as `SCM_RIGHTS`. The kernel
//!   never merges data across a message that carries fds, so each `recvmsg`
//!   returns one whole message.
//!
//! The old generation keeps its own duplicate of each connection until the
//! heir says `K`. An heir that asked for connections but never takes them
//! cannot strand a client: after [`BOUND`] the old generation shuts those
//! connections down (an orderly close) and stops handing over. An heir that
//! never said `A` (an older grestart, or one that does not poll) gets none:
//! [`Heir::hand_over`] fails at once and the application closes as before.
//! Bytes a client sends meanwhile wait in the kernel's socket buffer.

use std::collections::VecDeque;
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, SockType, SockaddrStorage,
    getpeername, getsockname, getsockopt, recv, recvmsg, send, sendmsg, shutdown, sockopt,
};

use crate::error::{fail, with_context};
use crate::log::{debug, warning};
use crate::signal;
use crate::sys::socket_type;

/// Sent with (or after) "ready": the heir adopts connections.
pub(crate) const ADOPT_BYTE: u8 = b'A';
/// One connection adopted.
const ACK_BYTE: u8 = b'K';
/// How long the old generation waits for its heir to take a connection it
/// handed over (or to make room for one).
pub(crate) const BOUND: Duration = Duration::from_secs(2);
/// Listener names are at most this long (systemd's rule, `registry.rs`).
const NAME_MAX: usize = 255;
/// How many connections are sent between two reads of the receipts.
const RECEIPTS_EVERY: u64 = 64;

fn poll_timeout(left: Duration) -> PollTimeout {
    PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
}

/// The old generation's side: its ready heir, and the connections handed to
/// it that it has not taken yet.
pub(crate) struct Heir {
    channel: OwnedFd,
    pid: libc::pid_t,
    /// The listeners the heir inherited: the names a connection may carry,
    /// and the addresses they are bound to.
    listeners: Vec<(String, Option<SockaddrStorage>)>,
    adopts: bool,
    /// The heir closed the channel: it exited.
    gone: bool,
    /// Our duplicates of the connections sent and not yet taken, oldest first.
    pending: VecDeque<OwnedFd>,
    /// Connections sent, to read the receipts every so often.
    sent: u64,
    /// When the last one was sent: the heir has until then + BOUND to take it.
    last_sent: Instant,
}

impl Heir {
    pub(crate) fn new(
        channel: OwnedFd,
        pid: libc::pid_t,
        listeners: Vec<(String, Option<SockaddrStorage>)>,
        adopts: bool,
    ) -> Heir {
        Heir {
            channel,
            pid,
            listeners,
            adopts,
            gone: false,
            pending: VecDeque::new(),
            sent: 0,
            last_sent: Instant::now(),
        }
    }

    /// Reads what the heir said since we last looked: adoption, receipts, its end.
    fn read(&mut self) {
        let mut said = [0u8; 64];
        while !self.gone {
            match recv(self.channel.as_raw_fd(), &mut said, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => self.heir_gone(),
                Ok(n) => {
                    for &byte in &said[..n] {
                        match byte {
                            ADOPT_BYTE => self.adopts = true,
                            // The heir holds it now: closing ours closes nothing.
                            ACK_BYTE => drop(self.pending.pop_front()),
                            _ => {}
                        }
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => self.heir_gone(),
            }
        }
    }

    fn heir_gone(&mut self) {
        self.gone = true;
        self.close_pending("its successor exited before taking them");
    }

    /// Closes the connections the heir did not take, in order (a FIN, not a
    /// reset), whatever else holds them.
    fn close_pending(&mut self, why: &str) {
        if self.pending.is_empty() {
            return;
        }
        warning!(
            "closing {} handed-over connections: {why}",
            self.pending.len()
        );
        for connection in self.pending.drain(..) {
            let _ = shutdown(connection.as_raw_fd(), Shutdown::Both);
        }
    }

    /// Sends `connection`, accepted on the listener `name` (`None`: the one
    /// its local address belongs to), to the heir. On success the caller
    /// drops its own descriptor; the heir serves it.
    pub(crate) fn hand_over(
        &mut self,
        connection: BorrowedFd<'_>,
        name: Option<&str>,
    ) -> io::Result<()> {
        // The receipts wait in our buffer; read them every so often (they let
        // us drop our duplicates), and while the heir has not said it adopts.
        if !self.adopts || self.sent % RECEIPTS_EVERY == 0 {
            self.read();
        }
        let pid = self.pid;
        if self.gone {
            return Err(fail(libc::ESRCH, format!("successor {pid} has exited")));
        }
        if !self.adopts {
            return Err(fail(
                libc::ESRCH,
                format!(
                    "successor {pid} does not adopt connections (it never asked with gr_adopt_fd, \
                     or runs an older grestart): close the connection"
                ),
            ));
        }
        if socket_type(connection) != Some(SockType::Stream) {
            return Err(fail(libc::EINVAL, "not a stream socket"));
        }
        getpeername::<SockaddrStorage>(connection.as_raw_fd())
            .map_err(|e| with_context(io::Error::from(e), "the connection is not connected"))?;
        let name = self.listener_of(connection, name)?;
        let ours = connection
            .try_clone_to_owned()
            .map_err(|e| with_context(e, "cannot keep a copy of the connection"))?;
        let fds = [connection.as_raw_fd()];
        let length = [name.len() as u8]; // at most 255, as every listener name
        let message = [IoSlice::new(&length), IoSlice::new(name.as_bytes())];
        let rights = [ControlMessage::ScmRights(&fds)];
        let give_up = Instant::now() + BOUND;
        loop {
            let sent = sendmsg::<()>(
                self.channel.as_raw_fd(),
                &message,
                &rights,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            );
            match sent {
                Ok(_) => {
                    self.pending.push_back(ours);
                    self.sent += 1;
                    self.last_sent = Instant::now();
                    return Ok(());
                }
                Err(Errno::EINTR) => {}
                // The heir's buffer is full, or too many fds are in flight
                // (RLIMIT_NOFILE): wait for it to take some, within the bound.
                Err(Errno::EAGAIN | Errno::ETOOMANYREFS) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.adopts = false; // and the next connections are closed at once
                        return Err(fail(
                            libc::ESRCH,
                            format!(
                                "successor {pid} did not take connections within {BOUND:?}: close the connection"
                            ),
                        ));
                    }
                    let mut fds = [PollFd::new(
                        self.channel.as_fd(),
                        PollFlags::POLLOUT | PollFlags::POLLIN,
                    )];
                    // With fds in flight the buffer may have room: look again soon.
                    let _ = poll(&mut fds, poll_timeout(left.min(Duration::from_millis(1))));
                    self.read();
                    if self.gone {
                        return Err(fail(libc::ESRCH, format!("successor {pid} has exited")));
                    }
                }
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    self.heir_gone();
                    return Err(fail(libc::ESRCH, format!("successor {pid} has exited")));
                }
                Err(e) => {
                    return Err(with_context(e.into(), "cannot hand the connection over"));
                }
            }
        }
    }

    /// The name of the listener `connection` came from: `name` if the heir
    /// has it, else the one whose address the connection was accepted on.
    fn listener_of(&self, connection: BorrowedFd<'_>, name: Option<&str>) -> io::Result<String> {
        if let Some(name) = name {
            if self.listeners.iter().any(|(l, _)| l == name) {
                return Ok(name.to_owned());
            }
            return Err(fail(
                libc::EINVAL,
                format!("no listener named {name:?} was handed to the successor"),
            ));
        }
        let local = getsockname::<SockaddrStorage>(connection.as_raw_fd()).ok();
        (self.listeners.iter())
            .find(|(_, bound)| match (bound, &local) {
                (Some(bound), Some(local)) => accepts(bound, local),
                _ => false,
            })
            .map(|(name, _)| name.clone())
            .ok_or_else(|| {
                fail(
                    libc::EINVAL,
                    "the connection was accepted on none of the listeners handed to the successor",
                )
            })
    }

    /// Waits until the heir took every connection handed to it, or the bound
    /// passed since the last one; then closes, in order, those it did not take.
    pub(crate) fn finish(&mut self) {
        let deadline = self.last_sent + BOUND;
        loop {
            self.read();
            if self.pending.is_empty() || self.gone {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.adopts = false;
                let why = format!("successor {} did not take them within {BOUND:?}", self.pid);
                self.close_pending(&why);
                return;
            }
            let mut fds = [PollFd::new(self.channel.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, poll_timeout(left));
        }
    }
}

/// Whether a listener bound to `bound` accepts connections whose local
/// address is `local`: the same port, and the same address unless the
/// listener's is the wildcard (a dual-stack `[::]` takes IPv4 too); for Unix
/// sockets, the same path.
fn accepts(bound: &SockaddrStorage, local: &SockaddrStorage) -> bool {
    if let (Some(bound), Some(local)) = (bound.as_unix_addr(), local.as_unix_addr()) {
        return bound == local;
    }
    let ip_port = |a: &SockaddrStorage| {
        (a.as_sockaddr_in()
            .map(|v4| (IpAddr::from(v4.ip()), v4.port())))
        .or_else(|| {
            a.as_sockaddr_in6()
                .map(|v6| (IpAddr::from(v6.ip()), v6.port()))
        })
    };
    match (ip_port(bound), ip_port(local)) {
        (Some((bound_ip, bound_port)), Some((local_ip, local_port))) => {
            bound_port == local_port && (bound_ip.is_unspecified() || bound_ip == local_ip)
        }
        _ => false,
    }
}

/// A connection handed over by the previous generation.
pub(crate) struct Handed {
    pub(crate) connection: OwnedFd,
    pub(crate) listener: String,
}

/// The heir's side: the connections received and not yet adopted by the
/// application, and an fd that is readable while there are some.
pub(crate) struct Adoption {
    /// Readable while the queue holds a connection: written when the queue
    /// stops being empty, read back when it becomes empty, both under its lock.
    waiting: EventFd,
    queue: Mutex<VecDeque<Handed>>,
    /// The link to the predecessor, for the receipts; `None` on a fresh start.
    channel: Option<Arc<OwnedFd>>,
}

impl Adoption {
    /// Starts receiving on `channel` (the link to `predecessor`) in a thread
    /// of its own, until the predecessor exits.
    pub(crate) fn start(
        channel: Option<(Arc<OwnedFd>, libc::pid_t)>,
    ) -> io::Result<&'static Adoption> {
        let waiting =
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| with_context(e.into(), "cannot create the adoption eventfd"))?;
        if let Some((channel, predecessor)) = &channel {
            check_peer(channel.as_fd(), *predecessor)?;
        }
        let adoption: &'static Adoption = Box::leak(Box::new(Adoption {
            waiting,
            queue: Mutex::new(VecDeque::new()),
            channel: channel.as_ref().map(|(c, _)| Arc::clone(c)),
        }));
        if let Some((channel, _)) = channel {
            signal::spawn_thread("grestart-adopt", move || adoption.receive(&channel))?;
        }
        Ok(adoption)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.waiting.as_fd()
    }

    /// Receives connections until the predecessor closes the channel.
    fn receive(&self, channel: &OwnedFd) {
        let mut message = [0u8; 1 + NAME_MAX];
        loop {
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut message)];
            let received = recvmsg::<()>(
                channel.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let received = match received {
                Ok(received) => received,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warning!("cannot receive handed-over connections: {e}");
                    return;
                }
            };
            let truncated = received.flags.contains(MsgFlags::MSG_CTRUNC);
            let mut fds = Vec::new();
            for cmsg in received.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(rights) = cmsg {
                    // SAFETY: the kernel installed these fds for us just now.
                    fds.extend(
                        rights
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            let bytes = received.bytes;
            if bytes == 0 && fds.is_empty() {
                debug!("the previous generation has exited; no more connections come");
                return;
            }
            if truncated {
                warning!("a handed-over connection was lost: out of file descriptors");
            }
            let name = (bytes > 0)
                .then(|| &message[1..bytes])
                .filter(|name| name.len() == usize::from(message[0]));
            let Some(listener) = name.map(|n| String::from_utf8_lossy(n).into_owned()) else {
                warning!("ignoring a malformed message from the previous generation");
                continue;
            };
            for connection in fds {
                if socket_type(connection.as_fd()) != Some(SockType::Stream) {
                    warning!("ignoring a handed-over fd that is not a stream socket");
                    continue;
                }
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.push_back(Handed {
                    connection,
                    listener: listener.clone(),
                });
                if queue.len() == 1 {
                    if let Err(e) = self.waiting.write(1) {
                        warning!("cannot signal a handed-over connection: {e}");
                    }
                }
            }
        }
    }

    /// The next connection handed over, waiting up to `timeout` (`None`:
    /// forever) for one; `None` when none came in time; `ERANGE` when its
    /// listener's name does not `fit` (it stays queued). Tells the
    /// predecessor, which then drops its copy.
    pub(crate) fn adopt(
        &self,
        timeout: Option<Duration>,
        fits: impl Fn(&str) -> bool,
    ) -> io::Result<Option<Handed>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let handed = loop {
            {
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(front) = queue.front() {
                    if !fits(&front.listener) {
                        return Err(fail(
                            libc::ERANGE,
                            format!(
                                "the listener name {:?} does not fit the buffer",
                                front.listener
                            ),
                        ));
                    }
                    let handed = queue.pop_front().expect("checked just now");
                    if queue.is_empty() {
                        let _ = self.waiting.read(); // not readable until the next one
                    }
                    break handed;
                }
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.waiting.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, left.map_or(PollTimeout::NONE, poll_timeout));
        };
        if let Some(channel) = &self.channel {
            // A predecessor already gone has nothing left to drop.
            let _ = send(channel.as_raw_fd(), &[ACK_BYTE], MsgFlags::MSG_NOSIGNAL);
        }
        Ok(Some(handed))
    }
}

/// The channel must come from the predecessor, run by our own user.
fn check_peer(channel: BorrowedFd<'_>, predecessor: libc::pid_t) -> io::Result<()> {
    let peer = getsockopt(&channel, sockopt::PeerCredentials)
        .map_err(|e| with_context(e.into(), "cannot check the link to the previous generation"))?;
    let uid = nix::unistd::getuid().as_raw();
    if peer.pid() != predecessor || peer.uid() != uid {
        return Err(fail(
            libc::EPERM,
            format!(
                "the link to the previous generation belongs to pid {} uid {}, not pid {predecessor} \
                 uid {uid}: no connections are taken from it",
                peer.pid(),
                peer.uid()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::SocketAddr;
    use std::os::unix::net::UnixStream;
    use std::thread;

    fn addr(text: &str) -> SockaddrStorage {
        SockaddrStorage::from(text.parse::<SocketAddr>().unwrap())
    }

    #[test]
    fn a_connection_belongs_to_the_listener_on_its_port_and_address() {
        assert!(accepts(&addr("127.0.0.1:80"), &addr("127.0.0.1:80")));
        assert!(accepts(&addr("0.0.0.0:80"), &addr("10.0.0.7:80")));
        assert!(accepts(&addr("[::]:80"), &addr("[::ffff:127.0.0.1]:80")));
        assert!(!accepts(&addr("127.0.0.1:80"), &addr("127.0.0.1:81")));
        assert!(!accepts(&addr("127.0.0.2:80"), &addr("127.0.0.1:80")));
        assert!(!accepts(&addr("[::1]:80"), &addr("127.0.0.1:80")));
    }

    /// A connection handed over long after the heir became ready (say, after
    /// a slow request) still gets the whole bound to be taken: the old
    /// generation must not shut it down under the heir that adopts it.
    #[test]
    fn a_late_hand_over_gets_the_whole_bound() {
        let (old_end, heir_end) = UnixStream::pair().unwrap();
        let mut heir = Heir::new(
            OwnedFd::from(old_end),
            std::process::id() as i32,
            vec![("http".into(), None)],
            true,
        );
        thread::sleep(BOUND + Duration::from_millis(100)); // the heir has been ready a while
        let (connection, mut client) = UnixStream::pair().unwrap();
        heir.hand_over(connection.as_fd(), Some("http")).unwrap();
        drop(connection);
        let adopter = thread::spawn(move || {
            // The heir adopts it a moment later, and keeps it.
            let mut message = [0u8; 64];
            let mut space = nix::cmsg_space!([RawFd; 1]);
            let mut iov = [IoSliceMut::new(&mut message)];
            let received = recvmsg::<()>(
                heir_end.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .unwrap();
            let mut kept = Vec::new();
            for cmsg in received.cmsgs().into_iter().flatten() {
                if let ControlMessageOwned::ScmRights(fds) = cmsg {
                    // SAFETY: installed for us by the kernel just now.
                    kept.extend(
                        fds.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            thread::sleep(Duration::from_millis(50));
            send(heir_end.as_raw_fd(), &[ACK_BYTE], MsgFlags::empty()).unwrap();
            (heir_end, kept)
        });
        heir.finish();
        let _kept = adopter.join().unwrap();
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let read = client.read(&mut [0u8; 1]);
        assert!(
            read.as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock),
            "the adopted connection stays open: {read:?}"
        );
    }
}
