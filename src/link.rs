//! The link between a successor and the generation that started it: a private
//! socket pair whose number travels in `GRESTART_READY_FD`. The heir writes
//! "ready" on it (and that it adopts connections, `handover/`); its end of
//! file tells the heir that its predecessor has exited (every copy of the
//! other end closed), so another hand-over may begin.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{MsgFlags, send};

use crate::error::with_context;
use crate::handover::{ADOPT_BYTE, IDS_BYTE};
use crate::spawn::READY_BYTE;
use crate::sys::peer_closed;

/// The generation that started this one, as a successor sees it.
pub(crate) struct Predecessor {
    /// Shared with the thread that receives handed-over connections.
    channel: Arc<OwnedFd>,
    pub pid: libc::pid_t,
    /// Its pidfd, while it is our parent. A child it forks without exec (to
    /// finish a job while it drains) keeps its end of the channel open after
    /// it exited, so the channel alone would say "still draining" for as long
    /// as that child lives.
    pidfd: Option<OwnedFd>,
}

impl Predecessor {
    pub(crate) fn new(channel: OwnedFd, pid: libc::pid_t) -> Predecessor {
        // Only while it is our parent can its pid not name another process
        // (a parent's pid is not reused before it is reaped); reparented, we
        // have only the channel to go by.
        let pidfd = (nix::unistd::getppid().as_raw() == pid)
            .then(|| crate::sys::pidfd_open(pid).ok())
            .flatten();
        Predecessor {
            channel: Arc::new(channel),
            pid,
            pidfd,
        }
    }

    pub(crate) fn channel(&self) -> Arc<OwnedFd> {
        Arc::clone(&self.channel)
    }

    /// Says "ready" (the predecessor begins to drain), and whether we adopt
    /// its idle connections (and name each in our receipts). "Ready" comes
    /// first: it is all an older grestart reads.
    pub(crate) fn tell_ready(&self, adopting: bool) -> io::Result<()> {
        let message: &[u8] = if adopting {
            &[READY_BYTE, ADOPT_BYTE, IDS_BYTE]
        } else {
            &[READY_BYTE]
        };
        self.tell(message)
    }

    /// Says we adopt connections, once already ready.
    pub(crate) fn tell_adopting(&self) -> io::Result<()> {
        self.tell(&[ADOPT_BYTE, IDS_BYTE])
    }

    fn tell(&self, message: &[u8]) -> io::Result<()> {
        // MSG_NOSIGNAL: a vanished predecessor is EPIPE, not SIGPIPE.
        send(self.channel.as_raw_fd(), message, MsgFlags::MSG_NOSIGNAL)
            .map(drop)
            .map_err(|e| {
                with_context(
                    e.into(),
                    format!("cannot write to the previous generation, pid {}", self.pid),
                )
            })
    }

    /// Whether the predecessor has exited (it has finished draining).
    pub(crate) fn has_exited(&self) -> bool {
        peer_closed(self.channel.as_fd())
            || (self.pidfd.as_ref()).is_some_and(|pidfd| crate::sys::has_exited(pidfd.as_fd()))
    }
}
