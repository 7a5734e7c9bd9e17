//! The heir's side: a thread of its own receives the connections its
//! predecessor hands over, and the receipts tell the predecessor to drop its
//! duplicates.

use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockType, getsockopt, recvmsg, send, sockopt,
};
use once_cell::sync::OnceCell;

use super::poll_timeout;
use super::queue::{Handed, Queue};
use super::wire::{ACK_BYTE, ID_LEN, NAME_MAX, TAKEN_BYTE};
use crate::error::{fail, with_context};
use crate::log::{debug, warning};
use crate::signal;
use crate::sys::socket_type;

/// The heir's side: the connections received and not yet adopted by the
/// application, and an fd that is readable while there are some.
pub(crate) struct Adoption {
    /// The connections received and not yet adopted.
    queue: Queue,
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
            queue: Queue::new(waiting),
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
        self.queue.fd()
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
                self.queue.push_back(Handed {
                    connection,
                    listener: listener.clone(),
                    id,
                });
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
        while let Some(handed) = self.queue.pop(|_| true).ok().flatten() {
            if !forward(handed.connection.as_fd(), &handed.listener) {
                // It stays for the application; unadopted, the predecessor
                // closes it cleanly at the end of its bound.
                self.queue.push_front(handed);
                return;
            }
            self.acknowledge(handed.id);
        }
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

    /// The first connection waiting that was accepted on the listener `name`
    /// (`None`: on any), taken without waiting; the predecessor is told.
    pub(crate) fn take_on(&self, name: Option<&str>) -> Option<Handed> {
        let handed = self.queue.take_on(name)?;
        self.acknowledge(handed.id);
        Some(handed)
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
            if let Some(handed) = self.queue.pop(&fits)? {
                break handed;
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Ok(None);
            }
            let mut fds = [PollFd::new(self.queue.fd(), PollFlags::POLLIN)];
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
