//! Following processes: becoming the reaper of every generation, pidfds,
//! waiting, reaping, finding a process's children and zombies, and which
//! process holds a connection.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

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

/// The server ends of the IPv4 TCP connections to `server_port`: each
/// client's port, and the socket's inode, which `/proc/net/tcp` gives only
/// while an fd refers to it (0 while it waits in a listener's accept queue).
pub fn server_ends(server_port: u16) -> Vec<(u16, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let local = format!(":{server_port:04X}");
    (table.lines().skip(1))
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields[1].ends_with(&local))
        .filter_map(|fields| {
            let client = u16::from_str_radix(fields[2].rsplit(':').next()?, 16).ok()?;
            Some((client, fields[9].parse().ok()?))
        })
        .collect()
}

/// The sockets process `pid` holds: each fd's number and its socket's inode
/// (none once the process has gone).
pub fn sockets_of(pid: i32) -> Vec<(i32, u64)> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten();
    (fds.flatten())
        .filter_map(|entry| {
            let link = std::fs::read_link(entry.path()).ok()?;
            let inode = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some((
                entry.file_name().to_str()?.parse().ok()?,
                inode.parse().ok()?,
            ))
        })
        .collect()
}

/// Waits until `pid` has accepted `client`'s connection and holds it as an
/// fd: out of the accept queue, where another process sharing the listener
/// (the next generation) could have taken it. False if `timeout` passed first.
pub fn wait_held_by(pid: i32, client: &TcpStream, timeout: Duration) -> bool {
    let server_port = client.peer_addr().unwrap().port();
    let client_port = client.local_addr().unwrap().port();
    let deadline = Instant::now() + timeout;
    loop {
        let inode = (server_ends(server_port).into_iter())
            .find(|&(port, inode)| port == client_port && inode != 0)
            .map(|(_, inode)| inode);
        let held =
            inode.is_some_and(|inode| sockets_of(pid).iter().any(|&(_, held)| held == inode));
        if held || Instant::now() > deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
