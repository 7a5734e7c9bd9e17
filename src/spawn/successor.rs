//! A started successor: waiting until it says "ready", and killing and
//! reaping one that will not serve.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{MsgFlags, recv};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

#[cfg(doc)]
use super::Channel; // the doc comments link to it
use super::READY_BYTE;
use super::child::{FAILED_BYTE, STAGE_CWD, STAGE_FDS};
use crate::error::{fail, with_context};
use crate::exec_watch::{ExecWatch, Why};
use crate::sys;

/// A started successor that has not reported ready yet.
pub(crate) struct Successor {
    pub pid: i32,
    pub(super) pidfd: OwnedFd,
    /// Our end of the readiness channel.
    pub channel: OwnedFd,
}

/// Why a successor did not become ready.
pub(crate) enum NotReady {
    /// It could not even be started, or died, or closed the channel.
    Failed(io::Error),
    /// It is alive but did not report ready in time.
    TimedOut,
    /// This process was told to stop first (`abandon` turned readable).
    Abandoned,
}

impl Successor {
    /// Waits until the successor reports ready, exits, or `deadline` passes,
    /// or one of `abandon` turns readable (this process must stop: a successor that
    /// becomes ready now would serve on after its parent was told to stop).
    /// Ready, what it said after "ready" (that it adopts handed-over
    /// connections, `handover/`).
    pub(crate) fn wait_ready(
        &self,
        exe: &CStr,
        deadline: Instant,
        abandon: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, NotReady> {
        let mut listening = true;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(NotReady::TimedOut);
            }
            let wait = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                .unwrap_or(PollTimeout::MAX);
            // The exit, the stop, and the channel while it can still say
            // "ready" (after that only the exit counts).
            let mut fds: Vec<PollFd<'_>> = [self.pidfd.as_fd()]
                .into_iter()
                .chain(abandon.iter().copied())
                .chain(listening.then(|| self.channel.as_fd()))
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            let stops = 1..1 + abandon.len();
            match poll(&mut fds, wait) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    // We can no longer tell whether it becomes ready: it must
                    // not serve behind our back, nor stay a zombie.
                    let status = self.kill();
                    return Err(NotReady::Failed(with_context(
                        e.into(),
                        format!(
                            "cannot wait for successor {}; killed it, it {status}",
                            self.pid
                        ),
                    )));
                }
            }
            let exited = fds[0].any() == Some(true);
            if fds[stops.clone()].iter().any(|fd| fd.any() == Some(true)) {
                // Before "ready": the stop wins even over a successor that
                // says it at the same moment.
                return Err(NotReady::Abandoned);
            }
            if listening && fds[stops.end].any() == Some(true) {
                // The channel speaks first: the child may report an exec error and
                // exit at once, and its message is better than its exit status.
                let mut message = [0u8; 6];
                let got = recv(
                    self.channel.as_raw_fd(),
                    &mut message,
                    MsgFlags::MSG_DONTWAIT,
                )
                .unwrap_or(0);
                return match (got, message[0]) {
                    // A successor that said "ready" and died (a crash right
                    // after gr_ready) serves nobody: we must not drain for it.
                    (1.., READY_BYTE) if self.has_exited() => Err(NotReady::Failed(fail(
                        libc::ECHILD,
                        format!(
                            "successor {} said it was ready, then {}",
                            self.pid,
                            self.reap()
                        ),
                    ))),
                    (1.., READY_BYTE) => Ok(message[1..got].to_vec()),
                    (6, FAILED_BYTE) => Err(NotReady::Failed(self.exec_failed(exe, &message))),
                    // EOF or garbage: the channel can no longer say "ready" (the
                    // successor may have closed it on purpose, like a daemon closing
                    // every fd). Stop listening to it and wait for the successor's
                    // exit or the timeout; reaping now could block on a live child.
                    _ => {
                        listening = false;
                        continue;
                    }
                };
            }
            if exited {
                return Err(NotReady::Failed(self.died()));
            }
        }
    }

    /// Decodes the child's report that it could not exec, and reaps it (it
    /// `_exit`s right after reporting: never leave a zombie).
    fn exec_failed(&self, exe: &CStr, message: &[u8; 6]) -> io::Error {
        let errno = i32::from_ne_bytes([message[2], message[3], message[4], message[5]]);
        let what = match message[1] {
            STAGE_FDS => "could not place the listener fds".to_string(),
            STAGE_CWD => "could not enter the working directory".to_string(),
            _ => format!("could not execute {}", exe.to_string_lossy()),
        };
        let reason = io::Error::from_raw_os_error(errno);
        let status = self.reap();
        fail(
            errno,
            format!("successor {}: {what}: {reason}; it {status}", self.pid),
        )
    }

    /// For a [`Channel::ExecReport`] spawn: the error when the program could
    /// not be executed. The spawn returns once the child has exec'd or failed
    /// (`CLONE_VFORK`), so the report, if any, is already there.
    pub(crate) fn exec_error(&self, exe: &CStr) -> Option<io::Error> {
        let mut message = [0u8; 6];
        let got = recv(
            self.channel.as_raw_fd(),
            &mut message,
            MsgFlags::MSG_DONTWAIT,
        );
        match got {
            Ok(6) if message[0] == FAILED_BYTE => Some(self.exec_failed(exe, &message)),
            _ => None,
        }
    }

    /// Whether the successor has exited (its pidfd is readable), now.
    fn has_exited(&self) -> bool {
        let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(1..))
    }

    /// Kills a successor that will never be ready, and reaps it.
    pub(crate) fn kill(&self) -> String {
        // Already gone (ESRCH) is fine: the reap follows either way.
        let _ = sys::pidfd_signal(self.pidfd.as_fd(), libc::SIGKILL);
        self.reap()
    }

    /// The error for a successor its [`ExecWatch`] killed before its exec ended.
    pub(super) fn killed_in_exec(&self, exe: &CStr, why: Why, watch: &ExecWatch) -> io::Error {
        let status = self.kill();
        let exe = exe.to_string_lossy();
        match why {
            Why::TimedOut => fail(
                libc::ETIMEDOUT,
                format!(
                    "successor {} had not finished its exec of {exe} within the ready timeout \
                     of {:?} (a hung file system?); killed it, it {status}",
                    self.pid,
                    watch.timeout()
                ),
            ),
            Why::Abandoned => fail(
                libc::ESHUTDOWN,
                format!(
                    "this process was told to stop while successor {} was executing {exe}; \
                     killed it, it {status}",
                    self.pid
                ),
            ),
        }
    }

    /// The error for a successor that died (or closed the channel) before ready.
    fn died(&self) -> io::Error {
        let status = self.reap();
        fail(
            libc::ECHILD,
            format!("successor {} {status} before it was ready", self.pid),
        )
    }

    /// Waits for the successor to exit and says how it ended. It never stays a zombie.
    fn reap(&self) -> String {
        loop {
            return match waitid(Id::PIDFd(self.pidfd.as_fd()), WaitPidFlag::WEXITED) {
                Ok(WaitStatus::Exited(_, status)) => format!("exited with status {status}"),
                Ok(WaitStatus::Signaled(_, signal, true)) => {
                    format!("was killed by signal {} (core dumped)", signal as i32)
                }
                Ok(WaitStatus::Signaled(_, signal, false)) => {
                    format!("was killed by signal {}", signal as i32)
                }
                Ok(other) => format!("ended ({other:?})"),
                Err(Errno::EINTR) => continue,
                // The application reaps children itself or ignores SIGCHLD.
                Err(Errno::ECHILD) => "exited (its status was collected elsewhere)".to_string(),
                Err(e) => format!("could not be waited for ({e})"),
            };
        }
    }
}
