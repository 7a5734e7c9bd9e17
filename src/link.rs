//! The links between a successor and the generations before it.
//!
//! To the one that started it, a private socket pair whose number travels in
//! `GRESTART_READY_FD`. The successor writes "ready" on it (and that it adopts
//! connections, `handover/`); its end of file tells the successor that its
//! predecessor has exited (every copy of the other end closed), so another
//! hand-over may begin.
//!
//! To the older ones that still drained when it started, a pidfd each
//! (`GRESTART_DRAINING_PIDS`): at each restart the successor counts those still
//! alive against the cap on generations draining at once.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{MsgFlags, send};

use crate::error::with_context;
use crate::handover::{ADOPT_BYTE, BATCHES_BYTE, IDS_BYTE};
use crate::log::warning;
use crate::protocol::Draining;
use crate::spawn::READY_BYTE;
use crate::sys::{has_exited, peer_closed, pidfd_open};

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
            .then(|| pidfd_open(pid).ok())
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
    /// its idle connections (and name each in our receipts, and read them in
    /// batches). "Ready" comes first: it is all an older grestart reads.
    pub(crate) fn tell_ready(&self, adopting: bool) -> io::Result<()> {
        let message: &[u8] = if adopting {
            &[READY_BYTE, ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE]
        } else {
            &[READY_BYTE]
        };
        self.tell(message)
    }

    /// Says we adopt connections, once already ready.
    pub(crate) fn tell_adopting(&self) -> io::Result<()> {
        self.tell(&[ADOPT_BYTE, IDS_BYTE, BATCHES_BYTE])
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
            || (self.pidfd.as_ref()).is_some_and(|pidfd| has_exited(pidfd.as_fd()))
    }
}

/// The generations older than our predecessor that may still drain.
pub(crate) enum Older {
    /// Those that were alive when we started, by pidfd: exactly those still alive.
    Known(Vec<(libc::pid_t, OwnedFd)>),
    /// Only how many, with our predecessor (an older grestart passes no pids,
    /// or a pidfd could not be had): counted for as long as it lives.
    Counted(u32),
}

impl Older {
    /// Opens a pidfd for each generation our predecessor said still drained,
    /// but the predecessor itself (`predecessor`, whose link tells better: its
    /// end of file also comes when it re-executes into a container's stub).
    ///
    /// A pid that names no process is a generation that has exited. One that
    /// exited and whose pid was reused between our predecessor's check and
    /// this one names an unrelated process, counted then until that one exits:
    /// the count can only be too high (a restart refused that the cap would
    /// allow), never too low, since a pidfd never names another process once
    /// open. So is a container's first generation that still drained when we
    /// started: re-executed into the stub, it stays counted. At most `GR_MAX_DRAINING` fds (`protocol::parse` refuses longer
    /// lists); close-on-exec, and a successor gets only the fds its spawn
    /// plans, so none leaks into it.
    pub(crate) fn open(draining: Draining, predecessor: Option<libc::pid_t>) -> Older {
        let pids = match draining {
            Draining::Known(pids) => pids,
            Draining::Counted(count) => return Older::Counted(count),
        };
        let mut known = Vec::new();
        for &pid in pids.iter().filter(|&&pid| Some(pid) != predecessor) {
            match pidfd_open(pid) {
                Ok(pidfd) => known.push((pid, pidfd)),
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    warning!(
                        "cannot watch older generation {pid} ({e}); counting all {} as \
                         draining while our predecessor lives",
                        pids.len()
                    );
                    return Older::Counted(pids.len() as u32);
                }
            }
        }
        Older::Known(known)
    }

    /// The generations older than us draining now, `predecessor` included
    /// when it has not exited.
    pub(crate) fn draining(&self, predecessor: Option<&Predecessor>) -> Draining {
        let predecessor = predecessor.filter(|p| !p.has_exited());
        match self {
            Older::Counted(count) if predecessor.is_some() => Draining::Counted(*count),
            // The predecessor exited, and all it counted for.
            Older::Counted(_) => Draining::Known(Vec::new()),
            Older::Known(known) => Draining::Known(
                (known.iter())
                    .filter(|(_, pidfd)| !has_exited(pidfd.as_fd()))
                    .map(|(pid, _)| *pid)
                    .chain(predecessor.map(|p| p.pid))
                    .collect(),
            ),
        }
    }
}
