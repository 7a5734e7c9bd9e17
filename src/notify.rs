//! Telling the service manager and the operator which process serves:
//! systemd's notification datagrams (without libsystemd) and the PID file.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials, recvmsg, sendmsg,
    setsockopt, sockopt,
};
use nix::time::{ClockId, clock_gettime};

/// The probation a generation asks its launcher for, in milliseconds, sent
/// with its `READY=1` (`gr_set_probation_ms`).
pub(crate) const PROBATION: &str = "X_GRESTART_PROBATION_MS";

/// Sends `message` to `NOTIFY_SOCKET`, if systemd gave us one.
///
/// `socket` is the variable's value read at start-up: a path, or `@name` for
/// the abstract namespace. The variable stays in the environment because the
/// successor needs it too (with `NotifyAccess=all`).
pub(crate) fn sd_notify(socket: Option<&OsString>, message: &str) -> io::Result<()> {
    sd_notify_with_fds(socket, message, &[])
}

/// [`sd_notify`] carrying `fds` (`SCM_RIGHTS`), as `FDSTORE=1` wants them.
pub(crate) fn sd_notify_with_fds(
    socket: Option<&OsString>,
    message: &str,
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let Some(socket) = socket else {
        return Ok(());
    };
    let bytes = socket.as_bytes();
    let address = match bytes.first() {
        Some(b'@') => UnixAddr::new_abstract(&bytes[1..])?,
        Some(b'/') => UnixAddr::new(Path::new(socket))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "NOTIFY_SOCKET is neither a path nor @abstract",
            ));
        }
    };
    // Never block: a receiver that is slow or gone (a full queue holds only
    // `net.unix.max_dgram_qlen` datagrams, 10 by default) must not stall a
    // restart; the message is lost and the caller logs it.
    let sender = UnixDatagram::unbound()?;
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    sendmsg(
        sender.as_raw_fd(),
        &[IoSlice::new(message.as_bytes())],
        if raw.is_empty() { &[] } else { &rights },
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        Some(&address),
    )?;
    Ok(())
}

/// Room for the most fds one message can carry (the kernel's `SCM_MAX_FD`):
/// none is ever installed in this process without being owned (and closed).
const MAX_FDS: usize = 253;

/// The receiving end of a notification socket, as systemd holds one: the
/// programs we start send `READY=1`, `MAINPID=`... to it, and the kernel
/// says which process sent each datagram (`SO_PASSCRED`).
pub(crate) struct Listener {
    socket: UnixDatagram,
    /// The `NOTIFY_SOCKET` value that reaches it.
    pub name: OsString,
}

/// One datagram: who sent it, its `KEY=VALUE` lines and the fds it carried
/// (`FDSTORE=1`).
pub(crate) struct Message {
    pub pid: i32,
    pub uid: u32,
    pub text: String,
    pub fds: Vec<OwnedFd>,
}

impl Message {
    /// The value of `key` (`"MAINPID"`), if the message sets it.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.text
            .lines()
            .filter_map(|line| line.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

impl Listener {
    /// A new socket in the abstract namespace (nothing to clean up on disk,
    /// private to this network namespace), with an unpredictable name.
    pub(crate) fn bind() -> io::Result<Listener> {
        let mut random = [0u8; 8];
        File::open("/dev/urandom")?.read_exact(&mut random)?;
        let name = format!(
            "grestart-notify-{}-{:016x}",
            std::process::id(),
            u64::from_ne_bytes(random)
        );
        let socket = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes())?)?;
        Listener::with_socket(socket, OsString::from(format!("@{name}")))
    }

    /// A socket bound earlier (and passed across an exec).
    pub(crate) fn with_socket(socket: UnixDatagram, name: OsString) -> io::Result<Listener> {
        setsockopt(&socket, sockopt::PassCred, &true)?;
        socket.set_nonblocking(true)?;
        Ok(Listener { socket, name })
    }

    pub(crate) fn socket(&self) -> &UnixDatagram {
        &self.socket
    }

    /// The next datagram waiting, if any.
    pub(crate) fn receive(&self) -> Option<Message> {
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(UnixCredentials, [RawFd; MAX_FDS]);
        let (bytes, credentials, fds) = {
            let received = recvmsg::<()>(
                self.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .ok()?;
            let (mut credentials, mut fds) = (None, Vec::new());
            for message in received.cmsgs().ok()? {
                match message {
                    ControlMessageOwned::ScmCredentials(c) => {
                        credentials = Some((c.pid(), c.uid()))
                    }
                    // SAFETY: the kernel just installed these fds in this
                    // process (close-on-exec); nothing else owns them.
                    ControlMessageOwned::ScmRights(raw) => fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    ),
                    _ => {}
                }
            }
            (received.bytes, credentials, fds)
        };
        // Without credentials (SO_PASSCRED not yet set when it was queued)
        // nobody can be believed: pid 0 matches no process.
        let (pid, uid) = credentials.unwrap_or((0, u32::MAX));
        Some(Message {
            pid,
            uid,
            text: String::from_utf8_lossy(&buf[..bytes]).into_owned(),
            fds,
        })
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `RELOADING=1` wants it.
pub(crate) fn monotonic_usec() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC).map_or(0, |now| {
        now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000
    })
}

/// Writes our pid to `path` atomically: readers see the old pid or the new one,
/// never an empty or half-written file.
///
/// The temporary file gets an unpredictable name and is created with
/// `O_EXCL|O_NOFOLLOW`: a root server writing in a shared directory must not
/// follow a symlink planted there and truncate whatever it points to. `rename`
/// replaces a symlink at `path` itself, never its target.
pub(crate) fn write_pid_file(path: &Path) -> io::Result<()> {
    let pid = std::process::id();
    let mut random = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut random)?;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".{pid}.{:016x}.tmp", u64::from_ne_bytes(random)));
    let temporary = PathBuf::from(temporary);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)?;
    let written = file
        .write_all(format!("{pid}\n").as_bytes())
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Removes the PID file if it still names us (a successor may have replaced it).
///
/// Only a regular file is read, and never through a symlink (`O_NOFOLLOW`):
/// [`write_pid_file`] never leaves one, so anything else at the path was put
/// there by someone else. `O_NONBLOCK`, because opening a FIFO planted there
/// would otherwise wait for a writer, and the shutdown with it.
pub(crate) fn remove_pid_file(path: &Path) {
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return;
    };
    let Ok(opened) = file.metadata() else { return };
    let mut text = String::new();
    // A pid and a newline; anything longer is not ours.
    if !opened.is_file() || file.take(32).read_to_string(&mut text).is_err() {
        return;
    }
    // Still the file we read: a successor's rename may have replaced it since.
    let same = std::fs::symlink_metadata(path)
        .is_ok_and(|now| (now.dev(), now.ino()) == (opened.dev(), opened.ino()));
    if text.trim() == std::process::id().to_string() && same {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_reaches_a_datagram_listener() {
        let dir = std::env::temp_dir().join(format!("gr-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        sd_notify(Some(&path.clone().into_os_string()), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(sd_notify(Some(&OsString::from("relative")), "READY=1").is_err());

        let name = format!("grestart-notify-{}", std::process::id());
        let abstract_listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        sd_notify(Some(&OsString::from(format!("@{name}"))), "RELOADING=1").unwrap();
        let n = abstract_listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"RELOADING=1");
        assert!(sd_notify(None, "READY=1").is_ok());

        let pid_file = dir.join("pid");
        write_pid_file(&pid_file).unwrap();
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap(),
            format!("{}\n", std::process::id())
        );
        remove_pid_file(&pid_file);
        assert!(!pid_file.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn removal_never_follows_a_symlink_nor_blocks_on_a_fifo() {
        let dir = std::env::temp_dir().join(format!("gr-pidremove-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A symlink to a file that names us: not a file we wrote, left alone.
        let target = dir.join("elsewhere");
        std::fs::write(&target, format!("{}\n", std::process::id())).unwrap();
        let link = dir.join("link.pid");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        remove_pid_file(&link);
        assert!(
            std::fs::symlink_metadata(&link).is_ok(),
            "the symlink stays"
        );
        assert!(target.exists(), "its target stays");
        // A FIFO nobody writes to: removal returns at once, the FIFO stays.
        let fifo = dir.join("fifo.pid");
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        let (done, finished) = std::sync::mpsc::channel();
        let removing = fifo.clone();
        let remover = std::thread::spawn(move || {
            remove_pid_file(&removing);
            let _ = done.send(());
        });
        let returned = finished.recv_timeout(std::time::Duration::from_secs(5));
        if returned.is_err() {
            // Let the blocked open go, so that the thread ends.
            let _ = OpenOptions::new().write(true).open(&fifo);
        }
        remover.join().unwrap();
        assert!(returned.is_ok(), "removal blocked on a FIFO");
        assert!(fifo.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_pid_file_never_follows_a_planted_symlink() {
        let dir = std::env::temp_dir().join(format!("gr-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let pid_file = dir.join("server.pid");
        // Where a predictable temporary name would have been.
        let planted = dir.join(format!("server.pid.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        // And the PID file itself a symlink to the victim.
        std::os::unix::fs::symlink(&victim, &pid_file).unwrap();
        write_pid_file(&pid_file).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert!(!std::fs::symlink_metadata(&pid_file).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_to_string(&pid_file).unwrap(),
            format!("{}\n", std::process::id())
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp") && dir.join(n) != planted)
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
