//! Idle connections handed to the successor, so that a restart closes none
//! (see docs/architecture.md, "Connections across a restart").
//!
//! The two generations share a private Unix stream socket pair (made in
//! `spawn.rs`, the heir's end known to `link.rs`). What travels on it:
//!
//! * heir to old: `R` ready (the first byte, as every grestart has said it),
//!   `A` "I adopt connections" (with `R`, or later) followed by `I` "my
//!   receipts name the connection", then per connection adopted `T` and its
//!   id (8 bytes, little-endian), or `K` from an heir that never said `I`;
//! * old to heir: one message per connection: the length of the listener's
//!   name in a byte, the name, the connection's id when the heir said `I`,
//!   and the socket as `SCM_RIGHTS`. The kernel never merges data across a
//!   message that carries fds, so each `recvmsg` returns one whole message.
//!
//! Receipts name the connection, not its place in the order: an heir that
//! loses one (out of fds, `MSG_CTRUNC`) sends no receipt for it, and receipts
//! counted in order would then make the old generation shut down another one,
//! which the heir serves. The heir never waits to send a receipt: each is a
//! small message that takes a whole buffer's worth of the socket's send budget,
//! so a few hundred fill it while a busy old generation reads none; they wait
//! in the heir's memory and its receiving thread sends them when there is room.
//!
//! The old generation keeps its own duplicate of each connection until the
//! heir's receipt for it. An heir that asked for connections but never takes them
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
use once_cell::sync::OnceCell;

use crate::error::{fail, with_context};
use crate::log::{debug, warning};
use crate::signal;
use crate::sys::socket_type;

/// Sent with (or after) "ready": the heir adopts connections.
pub(crate) const ADOPT_BYTE: u8 = b'A';
/// Sent right after `ADOPT_BYTE`: the heir's receipts name the connection.
pub(crate) const IDS_BYTE: u8 = b'I';
/// One connection adopted, from an heir that never said `IDS_BYTE`: the
/// oldest one not yet taken.
const ACK_BYTE: u8 = b'K';
/// One connection adopted: followed by its id.
const TAKEN_BYTE: u8 = b'T';
/// The length of a connection's id, a `u64` little-endian.
const ID_LEN: usize = 8;
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
    /// Its receipts name the connection (it said `IDS_BYTE`).
    ids: bool,
    /// The heir closed the channel: it exited.
    gone: bool,
    /// Our duplicates of the connections sent and not yet taken, oldest
    /// first, with their ids.
    pending: VecDeque<(u64, OwnedFd)>,
    /// The id of the next connection sent.
    next_id: u64,
    /// What the heir said that is not complete yet (a receipt cut in two).
    unread: Vec<u8>,
    /// Connections sent, to read the receipts every so often.
    sent: u64,
    /// When the last one was sent: the heir has until then + BOUND to take it.
    last_sent: Instant,
}

impl Heir {
    /// The successor's pid.
    pub(crate) fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The heir `pid` on `channel`, which said `said` with "ready".
    pub(crate) fn new(
        channel: OwnedFd,
        pid: libc::pid_t,
        listeners: Vec<(String, Option<SockaddrStorage>)>,
        said: &[u8],
    ) -> Heir {
        let mut heir = Heir {
            channel,
            pid,
            listeners,
            adopts: false,
            ids: false,
            gone: false,
            pending: VecDeque::new(),
            next_id: 0,
            unread: said.to_vec(),
            sent: 0,
            last_sent: Instant::now(),
        };
        heir.take_what_was_said();
        heir
    }

    /// Whether the heir adopts connections, as far as it has said.
    pub(crate) fn adopts(&self) -> bool {
        self.adopts
    }

    /// Reads what the heir said since we last looked: adoption, receipts, its end.
    fn read(&mut self) {
        let mut said = [0u8; 4096];
        while !self.gone {
            match recv(self.channel.as_raw_fd(), &mut said, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => self.heir_gone(),
                Ok(n) => {
                    self.unread.extend_from_slice(&said[..n]);
                    self.take_what_was_said();
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => self.heir_gone(),
            }
        }
    }

    /// Acts on the complete part of what the heir said; a receipt cut in two
    /// by the stream waits for its end.
    fn take_what_was_said(&mut self) {
        let mut at = 0;
        while let Some(&byte) = self.unread.get(at) {
            match byte {
                ADOPT_BYTE => self.adopts = true,
                IDS_BYTE => self.ids = true,
                // The heir holds it now: closing ours closes nothing.
                ACK_BYTE => drop(self.pending.pop_front()),
                TAKEN_BYTE => {
                    let Some(id) = self.unread.get(at + 1..at + 1 + ID_LEN) else {
                        break;
                    };
                    let id = u64::from_le_bytes(id.try_into().expect("ID_LEN bytes"));
                    if let Some(i) = self.pending.iter().position(|(sent, _)| *sent == id) {
                        drop(self.pending.remove(i));
                    }
                    at += ID_LEN;
                }
                _ => {}
            }
            at += 1;
        }
        self.unread.drain(..at);
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
        for (_, connection) in self.pending.drain(..) {
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
        let id = self.next_id;
        // An heir that never said IDS_BYTE reads a name and nothing after it.
        let sent_id = self.ids.then_some(id);
        let give_up = Instant::now() + BOUND;
        loop {
            match send_connection(self.channel.as_fd(), &name, sent_id, connection) {
                Ok(_) => {
                    self.pending.push_back((id, ours));
                    self.next_id += 1;
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

/// Sends one connection message, without waiting: the length of the
/// listener's `name`, the name, the connection's `id` if any, and the
/// `connection` itself.
fn send_connection(
    channel: BorrowedFd<'_>,
    name: &str,
    id: Option<u64>,
    connection: BorrowedFd<'_>,
) -> nix::Result<usize> {
    let fds = [connection.as_raw_fd()];
    let length = [name.len() as u8]; // at most 255, as every listener name
    let id = id.map(u64::to_le_bytes);
    let message = [
        IoSlice::new(&length),
        IoSlice::new(name.as_bytes()),
        IoSlice::new(id.as_ref().map_or(&[], |id| &id[..])),
    ];
    let rights = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        channel.as_raw_fd(),
        &message,
        &rights,
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        None,
    )
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
    /// Its id, for the receipt; `None` from a predecessor that sends none.
    id: Option<u64>,
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
    /// Receipts not sent yet: the predecessor's buffer was full.
    receipts: Mutex<Vec<u8>>,
    /// Written when receipts are left unsent: the receiving thread then
    /// waits for room to send them too.
    unsent: EventFd,
    /// Once this generation drains behind a successor of its own, what the
    /// predecessor still hands over goes on to that successor, the newest
    /// generation: our event loop no longer adopts anything.
    relay: OnceCell<Relay>,
}

/// Hands a connection (accepted on the named listener) on; `false` when it cannot.
pub(crate) type Relay = Box<dyn Fn(BorrowedFd<'_>, &str) -> bool + Send + Sync>;

impl Adoption {
    /// Starts receiving on `channel` (the link to `predecessor`) in a thread
    /// of its own, until the predecessor exits.
    pub(crate) fn start(
        channel: Option<(Arc<OwnedFd>, libc::pid_t)>,
    ) -> io::Result<&'static Adoption> {
        let eventfd = || {
            EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
                .map_err(|e| with_context(e.into(), "cannot create the adoption eventfds"))
        };
        let (waiting, unsent) = (eventfd()?, eventfd()?);
        if let Some((channel, predecessor)) = &channel {
            check_peer(channel.as_fd(), *predecessor)?;
        }
        let adoption: &'static Adoption = Box::leak(Box::new(Adoption {
            waiting,
            queue: Mutex::new(VecDeque::new()),
            channel: channel.as_ref().map(|(c, _)| Arc::clone(c)),
            receipts: Mutex::new(Vec::new()),
            unsent,
            relay: OnceCell::new(),
        }));
        if let Some((channel, _)) = channel {
            signal::spawn_thread("grestart-adopt", move || adoption.receive(&channel))?;
        }
        Ok(adoption)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.waiting.as_fd()
    }

    /// Receives connections until the predecessor closes the channel, and
    /// sends the receipts left unsent when there is room.
    fn receive(&self, channel: &OwnedFd) {
        let mut message = [0u8; 1 + NAME_MAX + ID_LEN];
        loop {
            let mut events = PollFlags::POLLIN;
            if !self.receipts().is_empty() {
                events |= PollFlags::POLLOUT;
            }
            let mut fds = [
                PollFd::new(channel.as_fd(), events),
                PollFd::new(self.unsent.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = poll(&mut fds, PollTimeout::NONE) {
                if e != Errno::EINTR {
                    warning!("cannot wait for handed-over connections: {e}");
                    return;
                }
                continue;
            }
            if fds[1].any() == Some(true) {
                let _ = self.unsent.read(); // looked at now
            }
            let link = fds[0].revents().unwrap_or(PollFlags::empty());
            if link.contains(PollFlags::POLLOUT) {
                send_receipts(channel, &mut self.receipts());
            }
            if !link.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
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
            // The name, then the id (from a predecessor that sends ids).
            let length = usize::from(message[0]);
            let id = match bytes.checked_sub(1 + length) {
                Some(0) => None,
                Some(ID_LEN) => {
                    let id = &message[1 + length..bytes];
                    Some(u64::from_le_bytes(id.try_into().expect("ID_LEN bytes")))
                }
                _ => {
                    warning!("ignoring a malformed message from the previous generation");
                    continue;
                }
            };
            let listener = String::from_utf8_lossy(&message[1..1 + length]).into_owned();
            for connection in fds {
                if socket_type(connection.as_fd()) != Some(SockType::Stream) {
                    warning!("ignoring a handed-over fd that is not a stream socket");
                    continue;
                }
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.push_back(Handed {
                    connection,
                    listener: listener.clone(),
                    id,
                });
                if queue.len() == 1 {
                    if let Err(e) = self.waiting.write(1) {
                        warning!("cannot signal a handed-over connection: {e}");
                    }
                }
            }
            self.relay_waiting();
        }
    }

    /// From now on every connection handed to us, waiting or still to come,
    /// goes on through `forward` (the connections' receipts say "taken").
    pub(crate) fn relay(&self, forward: Relay) {
        if self.relay.set(forward).is_ok() {
            self.relay_waiting();
        }
    }

    fn relay_waiting(&self) {
        let Some(forward) = self.relay.get() else {
            return;
        };
        while let Some(handed) = self.pop(|_| true).ok().flatten() {
            if !forward(handed.connection.as_fd(), &handed.listener) {
                // It stays for the application; unadopted, the predecessor
                // closes it cleanly at the end of its bound.
                let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                queue.push_front(handed);
                if queue.len() == 1 {
                    let _ = self.waiting.write(1);
                }
                return;
            }
            self.acknowledge(handed.id);
        }
    }

    /// The first connection waiting, if any; `ERANGE` (and it stays) when
    /// its listener's name does not `fit`.
    fn pop(&self, fits: impl Fn(&str) -> bool) -> io::Result<Option<Handed>> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        let Some(front) = queue.front() else {
            return Ok(None);
        };
        if !fits(&front.listener) {
            return Err(fail(
                libc::ERANGE,
                format!(
                    "the listener name {:?} does not fit the buffer",
                    front.listener
                ),
            ));
        }
        let handed = queue.pop_front();
        if queue.is_empty() {
            let _ = self.waiting.read(); // not readable until the next one
        }
        Ok(handed)
    }

    /// Tells the predecessor a connection was taken: it drops its copy.
    fn acknowledge(&self, id: Option<u64>) {
        if let Some(channel) = &self.channel {
            let mut receipts = self.receipts();
            match id {
                Some(id) => {
                    receipts.push(TAKEN_BYTE);
                    receipts.extend_from_slice(&id.to_le_bytes());
                }
                None => receipts.push(ACK_BYTE),
            }
            send_receipts(channel, &mut receipts);
            if !receipts.is_empty() {
                // Never wait here: the application's event loop runs on this thread.
                let _ = self.unsent.write(1);
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
            if let Some(handed) = self.pop(&fits)? {
                break handed;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.waiting.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, left.map_or(PollTimeout::NONE, poll_timeout));
        };
        self.acknowledge(handed.id);
        Ok(Some(handed))
    }

    fn receipts(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.receipts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends as much of `receipts` as the predecessor has room for, without
/// waiting, and keeps the rest. A predecessor already gone has nothing left
/// to drop: then they are forgotten.
fn send_receipts(channel: &OwnedFd, receipts: &mut Vec<u8>) {
    while !receipts.is_empty() {
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(channel.as_raw_fd(), receipts, flags) {
            Ok(n) => drop(receipts.drain(..n)),
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return,
            Err(_) => receipts.clear(),
        }
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

    /// Receives one connection message on `heir_end`: its id and the fd.
    fn receive_one(heir_end: &UnixStream) -> (u64, OwnedFd) {
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
        let bytes = received.bytes;
        let fd = received.cmsgs().unwrap().find_map(|cmsg| match cmsg {
            // SAFETY: installed for us by the kernel just now.
            ControlMessageOwned::ScmRights(fds) => Some(unsafe { OwnedFd::from_raw_fd(fds[0]) }),
            _ => None,
        });
        let id = u64::from_le_bytes(message[bytes - ID_LEN..bytes].try_into().unwrap());
        (id, fd.unwrap())
    }

    /// The heir loses a connection (out of fds: no receipt for it) and takes
    /// the next: only the lost one is shut down, never one the heir serves.
    #[test]
    fn a_receipt_names_its_connection_so_a_lost_one_closes_only_itself() {
        let (old_end, heir_end) = UnixStream::pair().unwrap();
        let pid = std::process::id() as i32;
        let said = [ADOPT_BYTE, IDS_BYTE];
        let mut heir = Heir::new(
            OwnedFd::from(old_end),
            pid,
            vec![("http".into(), None)],
            &said,
        );
        let mut clients = Vec::new();
        for _ in 0..3 {
            let (connection, client) = UnixStream::pair().unwrap();
            heir.hand_over(connection.as_fd(), Some("http")).unwrap();
            client
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            clients.push(client);
        }
        let (first, kept_first) = receive_one(&heir_end);
        let (_, lost) = receive_one(&heir_end);
        drop(lost);
        let (third, kept_third) = receive_one(&heir_end);
        let mut receipts = vec![TAKEN_BYTE];
        receipts.extend_from_slice(&first.to_le_bytes());
        receipts.push(TAKEN_BYTE);
        receipts.extend_from_slice(&third.to_le_bytes());
        // Cut in two, as a stream may deliver it.
        send(heir_end.as_raw_fd(), &receipts[..5], MsgFlags::empty()).unwrap();
        send(heir_end.as_raw_fd(), &receipts[5..], MsgFlags::empty()).unwrap();
        heir.finish(); // waits the bound for the lost one, then shuts it down
        let mut byte = [0u8; 1];
        for (i, client) in clients.iter_mut().enumerate() {
            let read = client.read(&mut byte);
            if i == 1 {
                assert!(matches!(read, Ok(0)), "the lost one is closed: {read:?}");
            } else {
                let open = read.is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock);
                assert!(open, "connection {i}, adopted, stays open");
            }
        }
        drop((kept_first, kept_third));
    }

    /// The heir never waits to send a receipt, though the old generation
    /// reads none for a while (it is busy): each receipt takes a whole
    /// buffer's worth of the socket's send budget, and a few hundred would
    /// fill it. They all arrive, naming their connections, once it reads.
    #[test]
    fn receipts_never_make_the_heir_wait() {
        const CONNECTIONS: u64 = 1000;
        let (old_end, heir_end) = UnixStream::pair().unwrap();
        let link = Arc::new(OwnedFd::from(heir_end));
        let adoption = Adoption::start(Some((link, std::process::id() as i32))).unwrap();
        let sender = old_end.try_clone().unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        let heir = thread::spawn(move || {
            for id in 0..CONNECTIONS {
                let (connection, _client) = UnixStream::pair().unwrap();
                send_connection(sender.as_fd(), "http", Some(id), connection.as_fd()).unwrap();
                let handed = adoption.adopt(Some(Duration::from_secs(10)), |_| true);
                assert_eq!(handed.unwrap().unwrap().id, Some(id));
            }
            let _ = done.send(());
            sender
        });
        let finished = finished.recv_timeout(Duration::from_secs(10));
        // Now the old generation reads: every receipt comes, in order.
        old_end
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut receipts = vec![0u8; CONNECTIONS as usize * (1 + ID_LEN)];
        (&old_end).read_exact(&mut receipts).unwrap();
        let _sender = heir.join().unwrap();
        assert!(finished.is_ok(), "the heir waited to send a receipt");
        for (id, receipt) in receipts.chunks(1 + ID_LEN).enumerate() {
            assert_eq!(receipt[0], TAKEN_BYTE);
            assert_eq!(
                u64::from_le_bytes(receipt[1..].try_into().unwrap()),
                id as u64
            );
        }
    }

    /// A generation that drains behind a successor of its own relays what
    /// its predecessor still hands over (those waiting and those to come) to
    /// that successor, and says "taken" for each: nothing waits unadopted.
    #[test]
    fn a_draining_heir_relays_to_the_newest_generation() {
        let (old_end, heir_end) = UnixStream::pair().unwrap();
        let link = Arc::new(OwnedFd::from(heir_end));
        let adoption = Adoption::start(Some((link, std::process::id() as i32))).unwrap();
        let (waiting, _client) = UnixStream::pair().unwrap();
        send_connection(old_end.as_fd(), "http", Some(1), waiting.as_fd()).unwrap();
        let relayed = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&relayed);
        // Before the relay is set, the first one waits for the application.
        let mut fds = [PollFd::new(adoption.fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(10_000u16)).unwrap();
        adoption.relay(Box::new(move |_, name| {
            seen.lock().unwrap().push(name.to_string());
            true
        }));
        let (coming, _client) = UnixStream::pair().unwrap();
        send_connection(old_end.as_fd(), "admin", Some(2), coming.as_fd()).unwrap();
        old_end
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut receipts = [0u8; 2 * (1 + ID_LEN)];
        (&old_end).read_exact(&mut receipts).unwrap();
        assert_eq!(*relayed.lock().unwrap(), ["http", "admin"]);
        assert_eq!(
            (receipts[0], receipts[1 + ID_LEN]),
            (TAKEN_BYTE, TAKEN_BYTE)
        );
        assert!(
            adoption
                .adopt(Some(Duration::ZERO), |_| true)
                .unwrap()
                .is_none(),
            "nothing is left for the application"
        );
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
            &[ADOPT_BYTE],
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
