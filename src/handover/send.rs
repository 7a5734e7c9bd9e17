//! The old generation's side: idle connections handed to its ready heir, in
//! batches, a duplicate of each kept until the heir's receipt for it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, poll};
use nix::sys::socket::{
    MsgFlags, Shutdown, SockType, SockaddrStorage, getpeername, recv, shutdown,
};

use super::listeners::listener_of;
use super::poll_timeout;
use super::wire::{
    ACK_BYTE, ADOPT_BYTE, BATCHES_BYTE, ID_LEN, IDS_BYTE, MAX_BATCH, TAKEN_BYTE, add_record,
    empty_batch, send_batch, send_connection, send_rest,
};
use crate::error::{fail, with_context};
use crate::log::warning;
use crate::sys::{socket_type, tcp_state};

pub(crate) use crate::limits::HAND_OVER_BOUND as BOUND;
/// How many connections are handed over between two reads of the receipts.
const RECEIPTS_EVERY: u64 = 64;
/// A connection handed over less than this after the last message went out
/// waits in the batch, which goes out when it is full or this long after its
/// first connection: a burst travels in few messages, a lone connection at once.
pub(crate) const BATCH_WAIT: Duration = Duration::from_micros(500);

/// What became of a connection offered to the heir.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// The heir holds it now, or will with the next batch.
    Taken,
    /// No heir takes it (why): close it as without grestart.
    Declined(String),
}

/// The old generation's side: its ready heir, the connections handed to it
/// that it has not taken yet, and the batch not sent yet.
pub(crate) struct Heir {
    channel: OwnedFd,
    pid: libc::pid_t,
    /// The listeners the heir inherited: the names a connection may carry,
    /// and the addresses they are bound to.
    listeners: Vec<(String, Option<SockaddrStorage>)>,
    adopts: bool,
    /// Its receipts name the connection (it said `IDS_BYTE`).
    ids: bool,
    /// It reads batches (it said `BATCHES_BYTE`).
    batches: bool,
    /// The heir closed the channel: it exited.
    gone: bool,
    /// Our duplicates of the connections handed over and not yet taken,
    /// oldest first, with their ids; the last `unsent` are in `batch`.
    pending: VecDeque<(u64, OwnedFd)>,
    /// The batch not sent yet: its head and the records of its connections.
    batch: Vec<u8>,
    unsent: usize,
    /// When the first connection of the batch was handed over.
    batch_began: Instant,
    /// The id of the next connection handed over.
    next_id: u64,
    /// What the heir said that is not complete yet (a receipt cut in two).
    unread: Vec<u8>,
    /// When the last message went out: the heir has until then + BOUND to
    /// take what it carried.
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
        let now = Instant::now();
        let mut heir = Heir {
            channel,
            pid,
            listeners,
            adopts: false,
            ids: false,
            batches: false,
            gone: false,
            pending: VecDeque::new(),
            batch: empty_batch(),
            unsent: 0,
            batch_began: now,
            next_id: 0,
            unread: said.to_vec(),
            last_sent: now,
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
                BATCHES_BYTE => self.batches = true,
                // The heir holds it now: closing ours closes nothing. (Only
                // one sent can be taken: the last `unsent` are still ours.)
                ACK_BYTE if self.pending.len() > self.unsent => drop(self.pending.pop_front()),
                TAKEN_BYTE => {
                    let Some(id) = self.unread.get(at + 1..at + 1 + ID_LEN) else {
                        break;
                    };
                    let id = u64::from_le_bytes(id.try_into().expect("ID_LEN bytes"));
                    // Receipts come in order, but for the lost ones: look from the front.
                    let sent = self.pending.len() - self.unsent;
                    if let Some(i) = self.pending.iter().take(sent).position(|(s, _)| *s == id) {
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
    /// reset), whatever else holds them; the batch not sent goes with them.
    fn close_pending(&mut self, why: &str) {
        self.batch = empty_batch();
        self.unsent = 0;
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

    /// Whether the heir takes connections, as far as it has said: it adopts,
    /// and was there at the last hand-over. Costs no system call.
    pub(crate) fn takes_connections(&self) -> bool {
        self.adopts && !self.gone
    }

    /// Sends `connection`, accepted on the listener `name` (`None`: the one
    /// its local address belongs to), to the heir, with the next batch. Taken,
    /// the caller drops its own descriptor and the heir serves it; declined,
    /// the caller closes it. An error is a connection that cannot be handed
    /// over by anyone.
    pub(crate) fn hand_over(
        &mut self,
        connection: BorrowedFd<'_>,
        name: Option<&str>,
    ) -> io::Result<Offer> {
        // The receipts wait in our buffer; read them every so often (they let
        // us drop our duplicates), and while the heir has not said it adopts.
        if !self.adopts || self.next_id % RECEIPTS_EVERY == 0 {
            self.read();
        }
        let pid = self.pid;
        if self.gone {
            return Ok(Offer::Declined(format!("successor {pid} has exited")));
        }
        if !self.adopts {
            return Ok(Offer::Declined(format!(
                "successor {pid} does not adopt connections (it never asked with gr_adopt_fd, \
                 or runs an older grestart): close the connection"
            )));
        }
        connected_stream(connection)?;
        let name = listener_of(&self.listeners, connection, name)?;
        let ours = connection
            .try_clone_to_owned()
            .map_err(|e| with_context(e, "cannot keep a copy of the connection"))?;
        let id = self.next_id;
        self.next_id += 1;
        if !self.batches {
            // An heir that never said IDS_BYTE reads a name and nothing after it.
            let sent_id = self.ids.then_some(id);
            let sent =
                self.send_waiting(|channel| send_connection(channel, &name, sent_id, connection));
            if let Err(why) = sent {
                return Ok(Offer::Declined(format!("{why}: close the connection")));
            }
            self.pending.push_back((id, ours));
            return Ok(Offer::Taken);
        }
        if self.unsent == 0 {
            self.batch_began = Instant::now();
        }
        add_record(&mut self.batch, &name, id);
        self.pending.push_back((id, ours));
        self.unsent += 1;
        if self.unsent == MAX_BATCH || self.last_sent.elapsed() >= BATCH_WAIT {
            if let Err(why) = self.send_batch() {
                if self.unsent > 0 {
                    // Not sent: this call's connection goes back to its caller untouched.
                    self.pending.pop_back();
                    self.unsent -= 1;
                }
                self.give_up(&why);
                return Ok(Offer::Declined(format!("{why}: close the connection")));
            }
        }
        Ok(Offer::Taken)
    }

    /// When the batch not sent yet is due to go, if there is one.
    pub(crate) fn batch_due(&self) -> Option<Instant> {
        (self.unsent > 0).then(|| self.batch_began + BATCH_WAIT)
    }

    /// Sends the batch (waiting, within the bound, for the heir to make room).
    /// When it cannot, hand-over ends and the batch's connections are closed,
    /// in order: `Err` says why.
    pub(crate) fn flush(&mut self) -> Result<(), String> {
        let flushed = self.send_batch();
        if let Err(why) = &flushed {
            self.give_up(why);
        }
        flushed
    }

    /// Hand-over ends: the next connections are declined at once, and those
    /// of the batch not sent are closed in order. Those sent wait for their
    /// receipts until `finish`'s deadline, as ever.
    fn give_up(&mut self, why: &str) {
        self.adopts = false;
        let unsent = self.pending.split_off(self.pending.len() - self.unsent);
        self.batch = empty_batch();
        self.unsent = 0;
        if !unsent.is_empty() {
            warning!("closing {} handed-over connections: {why}", unsent.len());
        }
        for (_, connection) in unsent {
            let _ = shutdown(connection.as_raw_fd(), Shutdown::Both);
        }
    }

    fn send_batch(&mut self) -> Result<(), String> {
        if self.unsent == 0 {
            return Ok(());
        }
        let mut fds: [RawFd; MAX_BATCH] = [-1; MAX_BATCH];
        let batch = self.pending.range(self.pending.len() - self.unsent..);
        for ((_, connection), fd) in batch.zip(fds.iter_mut()) {
            *fd = connection.as_raw_fd();
        }
        let batch = std::mem::replace(&mut self.batch, empty_batch());
        let fds = &fds[..self.unsent];
        let mut sent = self.send_waiting(|channel| send_batch(channel, &batch, fds))?;
        self.unsent = 0;
        // The rest of a batch sent in part (its fds went with the first part).
        while sent < batch.len() {
            sent += self.send_waiting(|channel| send_rest(channel, &batch[sent..]))?;
        }
        Ok(())
    }

    /// Sends what `send` sends, without waiting, trying again while the heir's
    /// buffer is full or too many fds are in flight (`RLIMIT_NOFILE`), within
    /// the bound: `Err` says why it could not.
    fn send_waiting(
        &mut self,
        mut send: impl FnMut(BorrowedFd<'_>) -> nix::Result<usize>,
    ) -> Result<usize, String> {
        let pid = self.pid;
        let give_up = Instant::now() + BOUND;
        loop {
            match send(self.channel.as_fd()) {
                Ok(n) => {
                    self.last_sent = Instant::now();
                    return Ok(n);
                }
                Err(Errno::EINTR) => {}
                Err(e @ (Errno::EAGAIN | Errno::ETOOMANYREFS)) => {
                    let left = give_up.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.adopts = false; // and the next connections are closed at once
                        return Err(format!(
                            "successor {pid} did not take connections within {BOUND:?}"
                        ));
                    }
                    // Too many fds in flight: the buffer has room (POLLOUT) but
                    // the heir must take some first; look again soon either way.
                    let events = match e {
                        Errno::EAGAIN => PollFlags::POLLOUT | PollFlags::POLLIN,
                        _ => PollFlags::POLLIN,
                    };
                    let mut fds = [PollFd::new(self.channel.as_fd(), events)];
                    let _ = poll(&mut fds, poll_timeout(left.min(Duration::from_millis(1))));
                    self.read();
                    if self.gone {
                        return Err(format!("successor {pid} has exited"));
                    }
                }
                Err(Errno::EPIPE | Errno::ECONNRESET) => {
                    self.heir_gone();
                    return Err(format!("successor {pid} has exited"));
                }
                Err(e) => {
                    self.adopts = false;
                    return Err(format!(
                        "cannot hand connections over to successor {pid}: {e}"
                    ));
                }
            }
        }
    }

    /// Sends the batch, then waits until the heir took every connection
    /// handed to it, or the bound passed since the last message; then closes,
    /// in order, those it did not take.
    pub(crate) fn finish(&mut self) {
        let _ = self.flush();
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

/// `gr_hand_over`'s contract: `connection` is a connected stream socket
/// (`EINVAL` when it is no stream socket, `ENOTCONN` when not connected). A
/// TCP socket, the common case, takes one system call, its state (on the
/// rule `getpeername` has: not connected while closed, listening or still
/// connecting); any other, its type and its peer address.
fn connected_stream(connection: BorrowedFd<'_>) -> io::Result<()> {
    const NOT_CONNECTED: &str = "the connection is not connected";
    // The kernel's TCP_SYN_SENT, TCP_CLOSE and TCP_LISTEN (include/net/tcp_states.h).
    const UNCONNECTED: [u8; 3] = [2, 7, 10];
    if let Some(state) = tcp_state(connection) {
        return match UNCONNECTED.contains(&state) {
            true => Err(fail(libc::ENOTCONN, NOT_CONNECTED)),
            false => Ok(()),
        };
    }
    if socket_type(connection) != Some(SockType::Stream) {
        return Err(fail(libc::EINVAL, "not a stream socket"));
    }
    getpeername::<SockaddrStorage>(connection.as_raw_fd())
        .map_err(|e| with_context(io::Error::from(e), NOT_CONNECTED))?;
    Ok(())
}
