//! A generation whose exit would end the service, and the stub it becomes.
//!
//! A container's PID 1, a child of tini or dumb-init, a systemd `Type=simple`
//! service: whatever started the first generation watches that one process,
//! and when it exits the service ends (the kernel kills a PID namespace with
//! its init; tini and dumb-init exit with their child). The successor is the
//! first generation's child, so a plain hand-over takes the service down.
//!
//! Such a generation is *watched*: nobody follows `MAINPID=` for it (no
//! `NOTIFY_SOCKET`) and it is PID 1 or a child of PID 1. It then
//! - becomes a child subreaper (a successor's successor is reparented to it,
//!   not to the init, when the successor exits);
//! - gives its successors a `NOTIFY_SOCKET` of its own, so that every later
//!   generation's `MAINPID=` says who serves;
//! - once it has drained and exits, re-executes itself (`/proc/self/exe`, with
//!   this library preloaded when it is not part of the executable) into the
//!   stub: [`run_if_asked`] runs in the library's constructor before `main`,
//!   so the stub holds none of the old generation's memory, and it stays the
//!   watched process ([`Supervisor`]) until the service stops, exiting with the
//!   serving generation's status.
//!
//! Its cost is a small process for the life of the service and an exec when
//! the first generation leaves; the hand-over itself is unchanged.

use std::ffi::{CStr, CString, OsString, c_void};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::net::UnixDatagram;
use std::ptr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::log::{error, info, warning};
use crate::notify;
use crate::supervise::{FORWARDED, Supervisor};

/// Tells the re-executed process to be the stub: `FD:PID` (the notification
/// socket, the serving generation).
const STUB: &str = "GRESTART_STUB";

/// The watched generation's side: the notification socket its successors
/// report to, and the generation that serves after it.
pub(crate) struct Watch {
    listener: notify::Listener,
    /// The newest generation that said `MAINPID=` (0: none yet).
    serving: AtomicI32,
    /// Held while a notification is read and applied; the exec takes it for
    /// good, so that no datagram is read and then forgotten.
    reading: Mutex<()>,
}

/// Whether this process's exit would end the service (see the module comment).
pub(crate) fn watched(notify_socket: Option<&OsString>) -> bool {
    notify_socket.is_none() && (std::process::id() == 1 || nix::unistd::getppid().as_raw() == 1)
}

impl Watch {
    pub(crate) fn start() -> std::io::Result<Watch> {
        if std::process::id() != 1 {
            nix::sys::prctl::set_child_subreaper(true)?;
        }
        let listener = notify::Listener::bind()?;
        // SAFETY: a plain C function pointer that never unwinds, registered once.
        if unsafe { libc::atexit(leave_at_exit) } != 0 {
            warning!("cannot register the stub at exit; a restart would end the service");
        }
        info!(
            "this process's exit would end the service (PID 1, or a child of an init); \
             after a restart it stays as a stub that supervises its successors"
        );
        Ok(Watch {
            listener,
            serving: AtomicI32::new(0),
            reading: Mutex::new(()),
        })
    }

    /// The `NOTIFY_SOCKET=` entry for a successor's environment.
    pub(crate) fn notify_entry(&self) -> CString {
        let mut entry = b"NOTIFY_SOCKET=".to_vec();
        entry.extend_from_slice(self.listener.name.as_bytes());
        CString::new(entry).expect("an abstract socket name holds no NUL")
    }

    /// The successor `pid` serves now; while we drain, later generations'
    /// `MAINPID=` are followed too (the socket's queue holds only a few
    /// datagrams, so they must be read as they come).
    pub(crate) fn follow(&'static self, pid: i32) {
        self.serving.store(pid, Ordering::SeqCst);
        let spawned = crate::signal::spawn_thread("grestart-watch", move || {
            loop {
                let mut fds = [PollFd::new(
                    self.listener.socket().as_fd(),
                    PollFlags::POLLIN,
                )];
                let _ = poll(&mut fds, PollTimeout::NONE);
                let _reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(message) = self.listener.receive() {
                    if let Some(pid) = message.get("MAINPID").and_then(|p| p.parse().ok()) {
                        if pid == message.pid {
                            self.serving.store(pid, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
        if let Err(e) = spawned {
            warning!("cannot follow the generations after ours: {e}");
        }
    }

    /// The serving generation, if a successor took over.
    pub(crate) fn serving(&self) -> Option<i32> {
        Some(self.serving.load(Ordering::SeqCst)).filter(|&pid| pid > 0)
    }

    /// Re-executes this process into the stub, if a successor serves; returns
    /// only when there is none or the exec failed (logged).
    pub(crate) fn become_stub(&self) {
        // Never released: no datagram is read from now on but by the stub.
        std::mem::forget(self.reading.lock().unwrap_or_else(|e| e.into_inner()));
        let Some(serving) = self.serving() else {
            return;
        };
        let socket = self.listener.socket().as_raw_fd();
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(key, _)| key != STUB && key != "LD_PRELOAD")
            .filter_map(|(key, value)| entry(key, value))
            .collect();
        env.extend(entry(STUB.into(), format!("{socket}:{serving}").into()));
        if let Some(preload) = preload() {
            env.extend(entry("LD_PRELOAD".into(), preload));
        }
        let argv = [c"grestart-stub".as_ptr(), ptr::null()];
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(ptr::null());
        info!("exited after the hand-over to {serving}; staying as the stub that supervises it");
        keep_only_stdio_and(socket);
        // The operator's signals must not find the default disposition between
        // the exec and the stub's signalfd: blocked, they stay pending across
        // the exec and the stub reads them.
        let _ = Supervisor::handled(&FORWARDED).thread_block();
        // SAFETY: NUL-terminated argv and envp arrays of C strings that live
        // until the call; on success it does not return.
        unsafe { libc::execve(c"/proc/self/exe".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        error!(
            "cannot become the stub ({}); the service ends with this process",
            std::io::Error::last_os_error()
        );
    }
}

/// An `atexit` handler: the watched generation leaves as the stub.
extern "C" fn leave_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(watch) = crate::engine::watch() {
            // Buffered C stdio is lost at exec: write it out first.
            // SAFETY: fflush(NULL) flushes every open C stream.
            unsafe { libc::fflush(ptr::null_mut()) };
            watch.become_stub();
        }
    });
}

fn entry(key: OsString, value: OsString) -> Option<CString> {
    let mut entry = key.into_vec();
    entry.push(b'=');
    entry.extend(value.into_vec());
    CString::new(entry).ok()
}

/// This library's file, when it is not the executable itself (a C program
/// linking `libgrestart.so`, Python's ctypes): the stub preloads it, so that
/// its constructor runs before the program's `main`. `LD_PRELOAD` is then
/// theirs plus ours.
fn preload() -> Option<OsString> {
    // SAFETY: all-zero is a valid Dl_info; dladdr fills it for an address of ours.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let address = run_if_asked as *const c_void;
    // SAFETY: `address` is a function of this library; `info` is writable.
    if unsafe { libc::dladdr(address, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dladdr gave a NUL-terminated file name that lives as long as the library.
    let ours = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
        unsafe { CStr::from_ptr(info.dli_fname) }.to_bytes(),
    ));
    let ours = ours.canonicalize().ok()?;
    if std::fs::canonicalize("/proc/self/exe").ok()? == ours {
        return None;
    }
    let mut preload = ours.into_os_string();
    if let Some(theirs) = std::env::var_os("LD_PRELOAD") {
        preload.push(":");
        preload.push(theirs);
    }
    Some(preload)
}

/// Marks every fd but 0, 1, 2 and `keep` close-on-exec, and `keep` not.
fn keep_only_stdio_and(keep: RawFd) {
    // SAFETY: fcntl and close_range only change flags of fds of this process,
    // which is about to exec.
    unsafe {
        libc::fcntl(keep, libc::F_SETFD, 0);
        for (first, last) in [(3, keep - 1), (keep + 1, i32::MAX)] {
            if first <= last {
                libc::syscall(
                    libc::SYS_close_range,
                    first as u32,
                    last as u32,
                    libc::CLOSE_RANGE_CLOEXEC,
                );
            }
        }
    }
}

/// In the library's constructor: when this process was exec'd to be the stub,
/// supervise until the service stops and exit; otherwise return at once.
pub(crate) fn run_if_asked() {
    let Some(value) = std::env::var_os(STUB) else {
        return;
    };
    // SAFETY: before main, one thread: nobody reads the environment meanwhile.
    unsafe { std::env::remove_var(STUB) };
    let parsed = value.to_str().and_then(|v| {
        let (fd, pid) = v.split_once(':')?;
        Some((fd.parse::<RawFd>().ok()?, pid.parse::<i32>().ok()?))
    });
    let status = match parsed {
        Some((fd, serving)) if crate::sys::fd_is_socket(fd) => supervise(fd, serving),
        _ => {
            error!("{STUB}={value:?} is not FD:PID of a socket; the stub cannot supervise");
            1
        }
    };
    // SAFETY: the stub is done; nothing of a program runs here to clean up.
    unsafe { libc::_exit(status) }
}

fn supervise(fd: RawFd, serving: i32) -> i32 {
    // SAFETY: the watched generation passed us this socket, and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    crate::sys::set_cloexec(&socket);
    let socket = UnixDatagram::from(socket);
    let supervisor = notify::Listener::with_socket(socket, OsString::new())
        .and_then(|listener| Supervisor::new(listener, FORWARDED.to_vec(), None));
    // What `ps` and `/proc/PID/comm` show, rather than the executable's name.
    let _ = nix::sys::prctl::set_name(c"grestart-stub");
    match supervisor {
        Ok(mut supervisor) => {
            supervisor.serve(serving);
            supervisor.run()
        }
        Err(e) => {
            error!("the stub cannot supervise pid {serving}: {e}");
            1
        }
    }
}
