//! Following processes: becoming the reaper of every generation, pidfds,
//! waiting, reaping, and finding a process's children and zombies.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// Makes this process the reaper of its orphaned descendants, so that every
/// generation of a server (each a child of the previous one) ends up as our
/// child once its parent exits, and we can reap it and see it is gone.
pub fn become_subreaper() {
    // SAFETY: prctl with an integer argument.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER");
}

/// A pidfd for `pid`, to wait for its exit without polling.
pub fn pidfd(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that only we hold.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the process behind `pidfd` exited; false if `timeout` passed first.
pub fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let mut fds = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut fds, 1, timeout.as_millis() as i32) == 1 }
}

/// Reaps `pid` if it is our (possibly adopted) child, returning its wait status.
pub fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid on one specific pid.
    (unsafe { libc::waitpid(pid, &mut status, 0) } == pid).then_some(status)
}

/// The pids of the zombie children of `parent`.
pub fn zombie_children(parent: i32) -> Vec<i32> {
    children(parent, true)
}

/// The pids of the children of `parent` (only the zombies, with `zombies`).
pub fn children(parent: i32, zombies_only: bool) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": the comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if (!zombies_only || fields.first() == Some(&"Z"))
            && fields.get(1).and_then(|p| p.parse().ok()) == Some(parent)
        {
            found.push(pid);
        }
    }
    found
}

/// Sends `signal` to `pid` (only ever a server this test started).
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill with a pid we started.
    unsafe { libc::kill(pid, signal) };
}

/// Whether `pid` has a handler installed for `signo` (`SigCgt` in its status).
pub fn catches(pid: i32, signo: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    (status.lines())
        .find_map(|line| line.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask >> (signo - 1) & 1 == 1)
}

/// Runs `command` to its end; what it printed (stdout, then stderr). Panics
/// with that output when it fails.
pub fn run(command: &mut std::process::Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed:\n{text}");
    text
}

/// A port free on 127.0.0.1 now, for a server (or a systemd socket unit,
/// which refuses port 0) that must be told its port: learnt by binding port 0
/// and closing it. Another process could take it in between, which fails the
/// start loudly, never a test silently.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
