//! The link between an heir and the generation that started it: a private
//! socket pair whose number travels in `GRESTART_READY_FD`. The heir writes
//! "ready" on it; its end of file tells the heir that its predecessor has
//! exited (every copy of the other end closed), so another hand-over may begin.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{MsgFlags, send};

use crate::error::with_context;
use crate::spawn::READY_BYTE;
use crate::sys::peer_closed;

/// The generation that started this one, as an heir sees it.
pub(crate) struct Predecessor {
    channel: OwnedFd,
    pub pid: libc::pid_t,
}

impl Predecessor {
    pub(crate) fn new(channel: OwnedFd, pid: libc::pid_t) -> Predecessor {
        Predecessor { channel, pid }
    }

    /// Says "ready": the predecessor begins to drain.
    pub(crate) fn tell_ready(&self) -> io::Result<()> {
        // MSG_NOSIGNAL: a vanished predecessor is EPIPE, not SIGPIPE.
        send(
            self.channel.as_raw_fd(),
            &[READY_BYTE],
            MsgFlags::MSG_NOSIGNAL,
        )
        .map(drop)
        .map_err(|e| {
            with_context(
                e.into(),
                format!("cannot tell pid {} we are ready", self.pid),
            )
        })
    }

    /// Whether the predecessor has exited (it has finished draining).
    pub(crate) fn has_exited(&self) -> bool {
        peer_closed(self.channel.as_fd())
    }
}
