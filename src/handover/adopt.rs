//! The heir's side: a thread of its own receives the connections its
//! predecessor hands over, and the receipts tell the predecessor to drop its
//! duplicates.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{MsgFlags, getsockopt, send, sockopt};
use once_cell::sync::OnceCell;

use super::poll_timeout;
use super::queue::{Handed, Queue};
use super::send::BATCH_WAIT;
use super::wire::{
    ACK_BYTE, BATCH_MARK, HEAD_LEN, ID_LEN, Incoming, MAX_BATCH, RECORD_MAX, TAKEN_BYTE,
};
use crate::error::{fail, with_context};
use crate::log::{debug, warning};
use crate::signal;

/// The heir's side: the connections received and not yet adopted by the
/// application, and an fd that is readable while there are some.
pub(crate) struct Adoption {
    /// The connections received and not yet adopted.
    queue: Queue,
    /// The link to the predecessor, for the receipts; `None` on a fresh start.
    channel: Option<Arc<OwnedFd>>,
    /// Receipts not sent yet: more adoptions follow, or the predecessor's
    /// buffer was full.
    receipts: Mutex<Receipts>,
    /// Written when receipts are left unsent: the receiving thread then
    /// sends them when due, once there is room.
    unsent: EventFd,
    /// The receiving thread runs (it stops early only on an error).
    receiving: AtomicBool,
    /// Once this generation drains behind a successor of its own, what the
    /// predecessor still hands over goes on to that successor, the newest
    /// generation: our event loop no longer adopts anything.
    relay: OnceCell<Relay>,
}

/// Receipts not sent yet, and since when the oldest waits.
struct Receipts {
    bytes: Vec<u8>,
    since: Instant,
}

/// Receipts go out together when so many wait (a stream socket's message
/// takes a buffer's worth of send budget, whatever its size).
const RECEIPTS_AT_ONCE: usize = 4096;

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
            receipts: Mutex::new(Receipts {
                bytes: Vec::new(),
                since: Instant::now(),
            }),
            unsent,
            receiving: AtomicBool::new(channel.is_some()),
            relay: OnceCell::new(),
        }));
        if let Some((channel, _)) = channel {
            signal::spawn_thread("grestart-adopt", move || {
                adoption.receive(&channel);
                // No thread sends what waits from now on: the application's calls do.
                adoption.receiving.store(false, Ordering::Relaxed);
                send_receipts(&channel, &mut adoption.receipts().bytes);
            })?;
        }
        Ok(adoption)
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.queue.fd()
    }

    /// Receives connections until the predecessor closes the channel, and
    /// sends the receipts left unsent when there is room.
    fn receive(&self, channel: &OwnedFd) {
        let mut message = vec![0u8; HEAD_LEN + MAX_BATCH * RECORD_MAX];
        let mut incoming = Incoming::default();
        loop {
            let (mut events, mut timeout) = (PollFlags::POLLIN, PollTimeout::NONE);
            let receipts = self.receipts();
            if !receipts.bytes.is_empty() {
                let left = (receipts.since + BATCH_WAIT).saturating_duration_since(Instant::now());
                if left.is_zero() {
                    events |= PollFlags::POLLOUT;
                } else {
                    timeout = poll_timeout(left);
                }
            }
            drop(receipts);
            let mut fds = [
                PollFd::new(channel.as_fd(), events),
                PollFd::new(self.unsent.as_fd(), PollFlags::POLLIN),
            ];
            if let Err(e) = poll(&mut fds, timeout) {
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
                send_receipts(channel, &mut self.receipts().bytes);
            }
            if !link.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                continue;
            }
            let (count, fds, truncated) = match receive_message(channel, &mut message) {
                Ok(received) => received,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    warning!("cannot receive handed-over connections: {e}");
                    return;
                }
            };
            let bytes = &message[..count];
            if bytes.is_empty() && fds.is_empty() {
                debug!("the previous generation has exited; no more connections come");
                return;
            }
            let handed = if incoming.is_empty() && bytes.first() != Some(&BATCH_MARK) {
                one_connection(bytes, fds, truncated) // from an older grestart
            } else {
                incoming.add(bytes, fds, truncated);
                let mut records = Vec::new();
                match incoming.take(&mut records) {
                    Ok(0) => {}
                    Ok(lost) => {
                        warning!(
                            "{lost} handed-over connections were lost: out of file descriptors"
                        )
                    }
                    Err(e) => {
                        warning!("cannot read what the previous generation hands over: {e}");
                        return;
                    }
                }
                records.into_iter().map(Handed::from).collect()
            };
            // The predecessor checked each is a connected stream socket.
            self.queue.push_all(handed);
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

    /// Tells the predecessor a connection was taken: it drops its copy. The
    /// receipts of a burst of adoptions go together: once the application has
    /// taken every connection waiting, else by the receiving thread when due.
    fn acknowledge(&self, id: Option<u64>) {
        let Some(channel) = &self.channel else {
            return;
        };
        let caught_up = self.queue.is_empty();
        let mut receipts = self.receipts();
        let first = receipts.bytes.is_empty();
        if first {
            receipts.since = Instant::now();
        }
        match id {
            Some(id) => {
                receipts.bytes.push(TAKEN_BYTE);
                receipts.bytes.extend_from_slice(&id.to_le_bytes());
            }
            None => receipts.bytes.push(ACK_BYTE),
        }
        let now = caught_up || !self.receiving.load(Ordering::Relaxed);
        if now || receipts.bytes.len() >= RECEIPTS_AT_ONCE {
            send_receipts(channel, &mut receipts.bytes);
            if receipts.bytes.is_empty() {
                return;
            }
        } else if !first {
            return; // the receiving thread knows
        }
        // Never wait here: the application's event loop runs on this thread.
        let _ = self.unsent.write(1);
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

    fn receipts(&self) -> std::sync::MutexGuard<'_, Receipts> {
        self.receipts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One `recvmsg` on `channel`: the bytes it put in `message`, the fds it
/// brought, and whether some were lost (out of fds). Read by hand, not with
/// nix's iterator, which gives nothing when some were lost: the fds that did
/// come would leak.
fn receive_message(
    channel: &OwnedFd,
    message: &mut [u8],
) -> nix::Result<(usize, Vec<OwnedFd>, bool)> {
    // SAFETY: CMSG_SPACE only computes a length.
    let room = unsafe { libc::CMSG_SPACE((MAX_BATCH * size_of::<RawFd>()) as u32) } as usize;
    let mut space = vec![0u64; room.div_ceil(8)]; // u64s: aligned for a cmsghdr
    let mut iov = libc::iovec {
        iov_base: message.as_mut_ptr().cast(),
        iov_len: message.len(),
    };
    // SAFETY: zero is a valid msghdr; every pointer in it outlives the call.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = space.as_mut_ptr().cast();
    header.msg_controllen = room;
    // SAFETY: `header` describes buffers we own, for the kernel to fill.
    let bytes = unsafe { libc::recvmsg(channel.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
    let bytes = usize::try_from(bytes).map_err(|_| Errno::last())?;
    let mut fds = Vec::new();
    // SAFETY: the kernel filled the control buffer `header` points to.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&header) };
    while !cmsg.is_null() {
        // SAFETY: a header within the control buffer, as CMSG_FIRSTHDR and
        // CMSG_NXTHDR give them.
        let (level, kind, length) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN only computes a length.
            let count = (length - unsafe { libc::CMSG_LEN(0) } as usize) / size_of::<RawFd>();
            // SAFETY: the message's data holds `count` fds the kernel installed for us.
            let data = unsafe { libc::CMSG_DATA(cmsg) }.cast::<RawFd>();
            for i in 0..count {
                // SAFETY: within the message's data (unaligned: read as bytes are).
                let fd = unsafe { data.add(i).read_unaligned() };
                // SAFETY: installed for us just now, and ours alone.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
        // SAFETY: `cmsg` is a header of this message.
        cmsg = unsafe { libc::CMSG_NXTHDR(&header, cmsg) };
    }
    Ok((bytes, fds, header.msg_flags & libc::MSG_CTRUNC != 0))
}

/// The connection of a message from a predecessor that sends no batches:
/// the length of its listener's name, the name, and its id, if it sends ids.
fn one_connection(message: &[u8], fds: Vec<OwnedFd>, truncated: bool) -> Vec<Handed> {
    if truncated {
        warning!("a handed-over connection was lost: out of file descriptors");
    }
    let length = usize::from(message[0]);
    let id = match message.len().checked_sub(1 + length) {
        Some(0) => None,
        Some(ID_LEN) => {
            let id = &message[1 + length..];
            Some(u64::from_le_bytes(id.try_into().expect("ID_LEN bytes")))
        }
        _ => {
            warning!("ignoring a malformed message from the previous generation");
            return Vec::new();
        }
    };
    let listener = String::from_utf8_lossy(&message[1..1 + length]).into_owned();
    (fds.into_iter())
        .map(|connection| Handed {
            connection,
            listener: listener.clone(),
            id,
        })
        .collect()
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
