//! The control socket: `grestart restart --pid PID` (systemd's `ExecReload=`,
//! a deploy script) asks a running server to restart and hears the outcome,
//! which a signal cannot tell.
//!
//! Every generation (and the launcher, and the stub) listens on a Unix stream
//! socket in the abstract namespace named after its pid and its PID namespace
//! (`grestart-control-NS-PID`: two containers sharing the host's network may
//! both have a PID 1). A client sends `restart\n`; the answer is one line:
//! `ok PID` (the new generation serves), `error ERRNO MESSAGE` (this process
//! serves on), `serving PID` (ask that one: this process hands over to it, or
//! is the stub that supervises it) or `supervised PID` (the launcher: ask that
//! one, then ask the launcher `probation NEW`, answered `ok NEW` once the new
//! generation passed its probation or `error` when it was rolled back). Only a
//! client of our user, or root, is heard.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, sockopt};

use crate::error::{errno_of, fail, with_context};
use crate::log::warning;

/// What a process says to a restart request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Restarted: this pid serves now.
    Restarted(i32),
    /// Not restarted (this process serves on): errno and why.
    Failed(i32, String),
    /// Ask this pid, which serves.
    Ask(i32),
    /// Ask this pid, which serves; then ask us how its probation ends
    /// (`probation PID`): we are its launcher.
    Supervised(i32),
}

impl Reply {
    pub(crate) fn of(outcome: &io::Result<i32>) -> Reply {
        match outcome {
            Ok(pid) => Reply::Restarted(*pid),
            Err(e) => Reply::Failed(errno_of(e), e.to_string()),
        }
    }

    fn line(&self) -> String {
        match self {
            Reply::Restarted(pid) => format!("ok {pid}\n"),
            Reply::Failed(errno, why) => format!("error {errno} {}\n", why.replace('\n', " ")),
            Reply::Ask(pid) => format!("serving {pid}\n"),
            Reply::Supervised(pid) => format!("supervised {pid}\n"),
        }
    }

    fn parse(line: &str) -> Option<Reply> {
        let (word, rest) = line.trim_end().split_once(' ')?;
        match word {
            "ok" => rest.parse().ok().map(Reply::Restarted),
            "serving" => rest.parse().ok().map(Reply::Ask),
            "supervised" => rest.parse().ok().map(Reply::Supervised),
            "error" => {
                let (errno, why) = rest.split_once(' ').unwrap_or((rest, ""));
                Some(Reply::Failed(errno.parse().ok()?, why.to_string()))
            }
            _ => None,
        }
    }
}

/// The address of `pid`'s control socket, as seen from this process.
fn address(pid: i32) -> io::Result<SocketAddr> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/pid"))
        .map_err(|e| with_context(e, format!("pid {pid}")))?;
    // "pid:[4026531836]"
    let namespace: String = (link.to_string_lossy().chars())
        .filter(char::is_ascii_digit)
        .collect();
    SocketAddr::from_abstract_name(format!("grestart-control-{namespace}-{pid}"))
}

/// A process's listening control socket.
pub(crate) struct Control {
    listener: UnixListener,
}

impl Control {
    /// Listens for this process (close-on-exec, non-blocking).
    pub(crate) fn bind() -> io::Result<Control> {
        let listener = UnixListener::bind_addr(&address(std::process::id() as i32)?)
            .map_err(|e| with_context(e, "cannot listen on the control socket"))?;
        listener.set_nonblocking(true)?;
        Ok(Control { listener })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }

    /// The restart requests waiting now, from clients we trust.
    pub(crate) fn requests(&self) -> Vec<Request> {
        let mut requests = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            match Request::read(stream) {
                Ok(request) => requests.push(request),
                Err(e) => warning!("ignoring a control request: {e}"),
            }
        }
        requests
    }
}

/// A client waiting for the outcome of its restart request.
pub(crate) struct Request {
    stream: UnixStream,
    pub asked: Asked,
}

/// What a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Asked {
    /// `restart`: restart, and answer with the outcome.
    Restart,
    /// `probation PID`: answer when that generation's probation ended (a
    /// supervisor's: `ok PID`, or `error` when it was rolled back).
    Probation(i32),
}

impl Request {
    fn read(stream: UnixStream) -> io::Result<Request> {
        let peer = getsockopt(&stream, sockopt::PeerCredentials)?;
        let ours = nix::unistd::geteuid().as_raw();
        if peer.uid() != ours && peer.uid() != 0 {
            return Err(fail(
                libc::EPERM,
                format!(
                    "pid {} of uid {} may not restart us",
                    peer.pid(),
                    peer.uid()
                ),
            ));
        }
        // The client writes its line at once; one that does not is not waited for.
        stream.set_nonblocking(false)?;
        // Bounded: a client that connects and says nothing holds up restarts
        // only this long (it is one of ours: root or our user).
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let asked = match line.trim_end().split_once(' ') {
            None if line.trim_end() == "restart" => Some(Asked::Restart),
            Some(("probation", pid)) => pid.parse().ok().map(Asked::Probation),
            _ => None,
        };
        let Some(asked) = asked else {
            let answer = Reply::Failed(libc::EINVAL, format!("unknown request {line:?}"));
            let _ = (&stream).write_all(answer.line().as_bytes());
            return Err(fail(libc::EINVAL, format!("unknown request {line:.40?}")));
        };
        Ok(Request { stream, asked })
    }

    pub(crate) fn answer(self, reply: &Reply) {
        let _ = self
            .stream
            .set_write_timeout(Some(Duration::from_millis(500)));
        let _ = (&self.stream).write_all(reply.line().as_bytes());
    }
}

/// Asks `pid` to restart and waits up to `timeout` for the outcome,
/// following `serving PID` answers (the launcher, a draining generation).
pub(crate) fn request_restart(mut pid: i32, timeout: Duration) -> io::Result<Reply> {
    let deadline = Instant::now() + timeout;
    let mut supervisor = None;
    for _ in 0..4 {
        match ask(pid, "restart", deadline)? {
            Reply::Supervised(next) => (supervisor, pid) = (Some(pid), next),
            Reply::Ask(next) if next != pid => pid = next,
            // The restart is a success once the new generation is past the
            // probation its supervisor keeps.
            Reply::Restarted(new) if supervisor.is_some() => {
                let supervisor = supervisor.expect("checked");
                return ask(supervisor, &format!("probation {new}"), deadline);
            }
            reply => return Ok(reply),
        }
    }
    Err(fail(libc::ELOOP, "the serving generation kept changing"))
}

/// Sends `pid` one request line and reads its answer, by `deadline`.
fn ask(pid: i32, request: &str, deadline: Instant) -> io::Result<Reply> {
    let stream = UnixStream::connect_addr(&address(pid)?).map_err(|e| {
        with_context(
            e,
            format!(
                "pid {pid} has no grestart control socket (not a grestart server, or in \
                 another network namespace)"
            ),
        )
    })?;
    let left = deadline.saturating_duration_since(Instant::now());
    stream.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
    (&stream).write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    match BufReader::new(&stream).read_line(&mut line) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            return Err(fail(
                libc::ETIMEDOUT,
                format!("no outcome from pid {pid} in time"),
            ));
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Reply::parse(&line).ok_or_else(|| {
        fail(
            libc::EPROTO,
            format!("pid {pid} answered {line:.80?}, or nothing (it exited?)"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_survive_the_wire() {
        for reply in [
            Reply::Restarted(42),
            Reply::Ask(7),
            Reply::Supervised(8),
            Reply::Failed(libc::ENOENT, "cannot execute /srv/app: No such file".into()),
        ] {
            assert_eq!(Reply::parse(&reply.line()), Some(reply));
        }
        assert_eq!(Reply::parse("hello\n"), None);
        assert_eq!(Reply::parse("ok many\n"), None);
    }

    #[test]
    fn a_request_is_answered_on_the_socket_named_for_our_pid() {
        let control = Control::bind().unwrap();
        let client = std::thread::spawn(|| {
            request_restart(std::process::id() as i32, Duration::from_secs(10))
        });
        let mut fds = [nix::poll::PollFd::new(
            control.fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).unwrap();
        let mut requests = control.requests();
        assert_eq!(requests.len(), 1);
        requests.pop().unwrap().answer(&Reply::Restarted(99));
        assert_eq!(client.join().unwrap().unwrap(), Reply::Restarted(99));
    }
}
