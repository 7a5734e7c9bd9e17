//! What travels on the link between two generations, as the module comment
//! tells it: the heir's bytes, and the old generation's messages, one per
//! connection.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};

/// Sent with (or after) "ready": the heir adopts connections.
pub(crate) const ADOPT_BYTE: u8 = b'A';
/// Sent right after `ADOPT_BYTE`: the heir's receipts name the connection.
pub(crate) const IDS_BYTE: u8 = b'I';
/// One connection adopted, from an heir that never said `IDS_BYTE`: the
/// oldest one not yet taken.
pub(super) const ACK_BYTE: u8 = b'K';
/// One connection adopted: followed by its id.
pub(super) const TAKEN_BYTE: u8 = b'T';
/// The length of a connection's id, a `u64` little-endian.
pub(super) const ID_LEN: usize = 8;
pub(super) use crate::limits::GR_NAME_MAX as NAME_MAX;

/// Sends one connection message, without waiting: the length of the
/// listener's `name`, the name, the connection's `id` if any, and the
/// `connection` itself.
pub(super) fn send_connection(
    channel: BorrowedFd<'_>,
    name: &str,
    id: Option<u64>,
    connection: BorrowedFd<'_>,
) -> nix::Result<usize> {
    let fds = [connection.as_raw_fd()];
    let length = [name.len() as u8]; // at most NAME_MAX, as every listener name: a byte
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
