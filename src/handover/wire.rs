//! What travels on the link between two generations, as the module comment
//! tells it: the heir's bytes, and the old generation's messages: batches of
//! connections, or one connection a message for an heir that takes no batches.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, MsgFlags, send, sendmsg};

/// Sent with (or after) "ready": the heir adopts connections.
pub(crate) const ADOPT_BYTE: u8 = b'A';
/// Sent right after `ADOPT_BYTE`: the heir's receipts name the connection.
pub(crate) const IDS_BYTE: u8 = b'I';
/// Sent after `IDS_BYTE`: the heir reads batches.
pub(crate) const BATCHES_BYTE: u8 = b'B';
/// One connection adopted, from an heir that never said `IDS_BYTE`: the
/// oldest one not yet taken.
pub(super) const ACK_BYTE: u8 = b'K';
/// One connection adopted: followed by its id.
pub(super) const TAKEN_BYTE: u8 = b'T';
/// The length of a connection's id, a `u64` little-endian.
pub(super) const ID_LEN: usize = 8;
pub(super) use crate::limits::GR_NAME_MAX as NAME_MAX;
/// A batch's first byte, where a message of one connection has the length of
/// a listener name, which is never empty.
pub(super) const BATCH_MARK: u8 = 0;
/// The most connections in one batch: the most fds one message can carry
/// (the kernel's `SCM_MAX_FD`).
pub(super) const MAX_BATCH: usize = 253;
/// A batch's head: `BATCH_MARK` and the number of connections in it.
pub(super) const HEAD_LEN: usize = 2;
/// The longest record of a connection in a batch.
pub(super) const RECORD_MAX: usize = 1 + NAME_MAX + ID_LEN;

/// A batch of no connection yet: its head.
pub(super) fn empty_batch() -> Vec<u8> {
    vec![BATCH_MARK, 0]
}

/// Adds the record of one connection to `batch` (of fewer than `MAX_BATCH`):
/// the length of its listener's `name` (a byte: at most `NAME_MAX`, as every
/// listener name), the name, its id.
pub(super) fn add_record(batch: &mut Vec<u8>, name: &str, id: u64) {
    batch[1] += 1;
    batch.push(name.len() as u8);
    batch.extend_from_slice(name.as_bytes());
    batch.extend_from_slice(&id.to_le_bytes());
}

/// Sends as much of `batch` as fits, without waiting, with its
/// `connections` (in the order of their records): the bytes sent.
pub(super) fn send_batch(
    channel: BorrowedFd<'_>,
    batch: &[u8],
    connections: &[RawFd],
) -> nix::Result<usize> {
    send_with(channel, &[IoSlice::new(batch)], connections)
}

/// Sends one connection message to an heir that takes no batches, without
/// waiting: the length of the listener's `name`, the name, the connection's
/// `id` if any, and the `connection` itself.
pub(super) fn send_connection(
    channel: BorrowedFd<'_>,
    name: &str,
    id: Option<u64>,
    connection: BorrowedFd<'_>,
) -> nix::Result<usize> {
    let length = [name.len() as u8];
    let id = id.map(u64::to_le_bytes);
    let message = [
        IoSlice::new(&length),
        IoSlice::new(name.as_bytes()),
        IoSlice::new(id.as_ref().map_or(&[], |id| &id[..])),
    ];
    send_with(channel, &message, &[connection.as_raw_fd()])
}

/// Sends the rest of a batch sent in part (its fds went with the first part),
/// as much as fits, without waiting: the bytes sent.
pub(super) fn send_rest(channel: BorrowedFd<'_>, rest: &[u8]) -> nix::Result<usize> {
    send(channel.as_raw_fd(), rest, FLAGS)
}

/// Never waits, and a vanished heir is `EPIPE`, not `SIGPIPE`.
const FLAGS: MsgFlags = MsgFlags::MSG_DONTWAIT.union(MsgFlags::MSG_NOSIGNAL);

/// Sends `message` with the `fds`, without waiting: the bytes sent.
fn send_with(
    channel: BorrowedFd<'_>,
    message: &[IoSlice<'_>],
    fds: &[RawFd],
) -> nix::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    sendmsg::<()>(channel.as_raw_fd(), message, &rights, FLAGS, None)
}

/// One connection received in a batch.
pub(super) struct Record {
    pub(super) connection: OwnedFd,
    pub(super) listener: String,
    pub(super) id: u64,
}

/// The batches as the stream brings them, until each is whole. The kernel
/// delivers a message's fds with its first bytes, and may cut its bytes in
/// parts, so that the fds of each batch are kept, in order, until its last
/// record comes.
#[derive(Default)]
pub(super) struct Incoming {
    bytes: Vec<u8>,
    /// The fds of each batch whose records are not all here, and whether
    /// some of them were lost (`MSG_CTRUNC`: the heir is out of fds).
    fds: VecDeque<(Vec<OwnedFd>, bool)>,
}

impl Incoming {
    /// Whether nothing of a batch is waiting: the next bytes begin a message.
    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Adds what one `recvmsg` brought.
    pub(super) fn add(&mut self, bytes: &[u8], fds: Vec<OwnedFd>, truncated: bool) {
        self.bytes.extend_from_slice(bytes);
        if !fds.is_empty() || truncated {
            self.fds.push_back((fds, truncated));
        }
    }

    /// Moves the connections of the batches that are whole `into` a list;
    /// returns how many of theirs were lost, or `Err` when the stream is not
    /// made of batches.
    pub(super) fn take(&mut self, into: &mut Vec<Record>) -> Result<usize, &'static str> {
        let mut lost = 0;
        let mut at = 0;
        while let Some((records, end)) = whole_batch(&self.bytes[at..])? {
            let Some((fds, truncated)) = self.fds.pop_front() else {
                break; // the fds come with the first part: not yet
            };
            if fds.len() > records.len() || (fds.len() < records.len() && !truncated) {
                return Err("a batch whose fds do not match its records");
            }
            lost += records.len() - fds.len();
            for (connection, (listener, id)) in fds.into_iter().zip(records) {
                let listener = String::from_utf8_lossy(listener).into_owned();
                into.push(Record {
                    connection,
                    listener,
                    id,
                });
            }
            at += end;
        }
        self.bytes.drain(..at);
        Ok(lost)
    }
}

/// The listener name and id of each connection in a batch.
type Records<'a> = Vec<(&'a [u8], u64)>;

/// The records of the batch `bytes` begin with, and where it ends, once it
/// is whole.
fn whole_batch(bytes: &[u8]) -> Result<Option<(Records<'_>, usize)>, &'static str> {
    let Some(&[mark, count]) = bytes.get(..HEAD_LEN) else {
        return Ok(None);
    };
    if mark != BATCH_MARK || usize::from(count) > MAX_BATCH {
        return Err("a message that is no batch");
    }
    let mut records = Vec::with_capacity(usize::from(count));
    let mut next = HEAD_LEN;
    for _ in 0..count {
        let Some(&length) = bytes.get(next) else {
            return Ok(None);
        };
        let name = next + 1..next + 1 + usize::from(length);
        let Some(id) = bytes.get(name.end..name.end + ID_LEN) else {
            return Ok(None);
        };
        let id = u64::from_le_bytes(id.try_into().expect("ID_LEN bytes"));
        records.push((&bytes[name.clone()], id));
        next = name.end + ID_LEN;
    }
    Ok(Some((records, next)))
}
