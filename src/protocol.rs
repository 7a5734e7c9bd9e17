//! The hand-over protocol as it travels in the environment.
//!
//! The listeners follow systemd's socket-activation convention exactly
//! (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`, fds from 3), so a successor also
//! works when systemd starts it. Variables of our own ride along: the fd of the
//! private readiness channel, the generation number, the older generations
//! still draining, and what the successor must start with.
//!
//! Parsing is pure (the environment and the fd probe are passed in), so that
//! hostile input can be tested without touching the process.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use crate::error::fail;
use crate::limits::{GR_MAX_DRAINING, GR_NAME_MAX};

pub(crate) const LISTEN_FDS: &str = "LISTEN_FDS";
pub(crate) const LISTEN_PID: &str = "LISTEN_PID";
pub(crate) const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";
pub(crate) const READY_FD: &str = "GRESTART_READY_FD";
pub(crate) const GENERATION: &str = "GRESTART_GENERATION";
/// The restart signal, which the successor starts with ignored.
pub(crate) const RESTART_SIGNAL: &str = "GRESTART_SIGNAL";
/// The pid of the process that started the successor. Not `getppid()`: by the
/// heir's first grestart call its predecessor may have exited, and the heir
/// been reparented.
pub(crate) const PREDECESSOR: &str = "GRESTART_PREDECESSOR_PID";
/// The signals the first generation was started with ignored (a hexadecimal
/// mask, bit `signo - 1`): every generation starts its successor so.
pub(crate) const IGNORED: &str = "GRESTART_IGNORED";
/// How many older generations may still be draining when the successor
/// starts, its parent included: each generation counts against the cap on
/// generations draining at once. All a grestart before `DRAINING_PIDS` reads.
pub(crate) const DRAINING: &str = "GRESTART_DRAINING";
/// Which ones: their pids, comma-separated, the parent's last. The count alone
/// only grows along a chain of quick restarts (each generation counts what its
/// predecessor counted, while that one lives), long after the older ones exited.
pub(crate) const DRAINING_PIDS: &str = "GRESTART_DRAINING_PIDS";
/// Set by the launcher when it starts a kept copy of the last good release
/// (`supervise/recovery.rs`): its `argv[0]` leads to the newer release on
/// disk, which its own restarts must try again (`origin.rs`).
pub(crate) const RESTORED: &str = "GRESTART_RESTORED";

/// Every variable this protocol owns; a successor removes them all once read.
pub(crate) const VARIABLES: [&str; 11] = [
    LISTEN_FDS,
    LISTEN_PID,
    LISTEN_FDNAMES,
    READY_FD,
    GENERATION,
    RESTART_SIGNAL,
    PREDECESSOR,
    IGNORED,
    DRAINING,
    DRAINING_PIDS,
    RESTORED,
];

/// The first passed fd, as in `sd_listen_fds` (`SD_LISTEN_FDS_START`).
pub(crate) const FIRST_FD: RawFd = 3;

/// More than this many passed fds is taken as garbage rather than trusted.
pub(crate) const MAX_FDS: usize = 65_536;

/// The name systemd gives a passed fd that has none.
pub(crate) const UNNAMED: &str = "unknown";

/// Checks a listener name against systemd's rules for `FileDescriptorName=`.
pub fn check_name(name: &str) -> io::Result<()> {
    let problem = if name.is_empty() {
        "is empty"
    } else if name.len() > GR_NAME_MAX {
        "is longer than 255 bytes" // GR_NAME_MAX, as a test checks
    } else if name.contains(':') {
        "contains ':', which separates names in LISTEN_FDNAMES"
    } else if !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        "contains a byte that is not printable ASCII"
    } else {
        return Ok(());
    };
    let shown: String = name.chars().take(40).collect();
    Err(fail(
        libc::EINVAL,
        format!("listener name {shown:?} {problem}"),
    ))
}

/// What the environment says this process inherited from whoever started it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Heritage {
    /// Passed fds with their names, in order (fd `FIRST_FD + i`).
    pub fds: Vec<(String, RawFd)>,
    /// The write side of the readiness channel to a grestart parent.
    pub ready_fd: Option<RawFd>,
    /// 1 for a fresh start, one more for every hand-over since.
    pub generation: u64,
    /// The parent's restart signal, which this process was started with ignored.
    pub restart_signal: Option<i32>,
    /// The process that started this one (a grestart parent says it).
    pub predecessor: Option<i32>,
    /// The signals the first generation was started with ignored.
    pub ignored: Option<u64>,
    /// The older generations that were draining when this one started.
    pub draining: Draining,
    /// Why some variables were ignored, for the log.
    pub problems: Vec<String>,
}

/// The generations that may drain while a successor serves, its parent included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Draining {
    /// Their pids (`DRAINING_PIDS`): the successor tells which are still alive.
    Known(Vec<i32>),
    /// Only how many (`DRAINING` alone, from an older grestart): an upper bound.
    Counted(u32),
}

impl Default for Draining {
    fn default() -> Draining {
        Draining::Counted(0)
    }
}

impl Draining {
    /// How many: `DRAINING`, which every grestart reads.
    pub fn count(&self) -> u32 {
        match self {
            Draining::Known(pids) => pids.len() as u32,
            Draining::Counted(count) => *count,
        }
    }
}

/// Reads the protocol variables through `var`; `is_socket` says whether an fd is
/// an open socket.
///
/// Nothing is trusted unless `LISTEN_PID` names `pid`: the variables may have been
/// meant for a parent that forgot to remove them. An fd list that names an fd
/// that is not an open socket is ignored as a whole, and none of its fds is
/// touched: handing out, or closing, an fd that is not ours would be worse.
pub fn parse(
    var: impl Fn(&str) -> Option<String>,
    pid: u32,
    is_socket: impl Fn(RawFd) -> bool,
) -> Heritage {
    let mut heritage = Heritage {
        generation: 1,
        ..Heritage::default()
    };
    let problems = &mut heritage.problems;
    let Some(listen_pid) = var(LISTEN_PID) else {
        if var(LISTEN_FDS).is_some() || var(READY_FD).is_some() {
            problems.push("LISTEN_PID is not set; ignoring the passed fds".into());
        }
        return heritage;
    };
    if parse_number(&listen_pid) != Some(u64::from(pid)) {
        problems.push(format!(
            "LISTEN_PID={listen_pid:.20} is not this process ({pid}); ignoring the passed fds"
        ));
        return heritage;
    }

    let count = match var(LISTEN_FDS).map(|v| (parse_number(&v), v)) {
        None => 0,
        Some((Some(n), _)) if n as usize <= MAX_FDS => n as usize,
        Some((_, v)) => {
            problems.push(format!(
                "LISTEN_FDS={v:.20} is not a number of fds; ignoring the passed fds"
            ));
            0
        }
    };
    let last = FIRST_FD + count as RawFd;
    if let Some(fd) = (FIRST_FD..last).find(|&fd| !is_socket(fd)) {
        problems.push(format!(
            "LISTEN_FDS={count} but fd {fd} is not an open socket; ignoring the passed fds"
        ));
    } else {
        let names = names_for(var(LISTEN_FDNAMES), count, problems);
        heritage.fds = names.into_iter().zip(FIRST_FD..last).collect();
    }

    if let Some(v) = var(READY_FD) {
        match parse_number(&v) {
            Some(fd) if fd >= last as u64 && fd <= RawFd::MAX as u64 && is_socket(fd as RawFd) => {
                heritage.ready_fd = Some(fd as RawFd);
            }
            _ => problems.push(format!(
                "{READY_FD}={v:.20} is not an open socket after the listeners; not reporting readiness"
            )),
        }
    }
    if let Some(v) = var(RESTART_SIGNAL) {
        match parse_number(&v) {
            Some(signo @ 1..=64) => heritage.restart_signal = Some(signo as i32),
            _ => problems.push(format!("{RESTART_SIGNAL}={v:.20} is not a signal number")),
        }
    }
    if let Some(v) = var(PREDECESSOR) {
        match parse_number(&v) {
            Some(pid @ 1..) if pid <= i32::MAX as u64 => heritage.predecessor = Some(pid as i32),
            _ => problems.push(format!("{PREDECESSOR}={v:.20} is not a process id")),
        }
    }
    if let Some(v) = var(DRAINING) {
        match parse_number(&v) {
            Some(n) if n <= u64::from(u32::MAX) => heritage.draining = Draining::Counted(n as u32),
            _ => problems.push(format!("{DRAINING}={v:.20} is not a number of generations")),
        }
    }
    if let Some(v) = var(DRAINING_PIDS) {
        match parse_pids(&v) {
            Some(pids) => heritage.draining = Draining::Known(pids),
            None => problems.push(format!(
                "{DRAINING_PIDS}={v:.40} is not a list of at most {GR_MAX_DRAINING} process ids"
            )),
        }
    }
    if let Some(v) = var(IGNORED) {
        match u64::from_str_radix(v.trim(), 16) {
            Ok(mask) => heritage.ignored = Some(mask),
            Err(_) => problems.push(format!("{IGNORED}={v:.20} is not a signal mask")),
        }
    }
    if let Some(v) = var(GENERATION) {
        match parse_number(&v) {
            Some(g) if g >= 1 => heritage.generation = g,
            _ => problems.push(format!("{GENERATION}={v:.20} is not a generation number")),
        }
    }
    heritage
}

/// The names for `count` fds: systemd's `unknown` for each when the list is missing or bad.
fn names_for(list: Option<String>, count: usize, problems: &mut Vec<String>) -> Vec<String> {
    let unnamed = vec![UNNAMED.to_string(); count];
    let Some(list) = list else {
        return unnamed;
    };
    let names: Vec<String> = if count == 0 {
        Vec::new()
    } else {
        list.split(':').map(String::from).collect()
    };
    if names.len() != count {
        problems.push(format!(
            "LISTEN_FDNAMES has {} names for {count} fds; treating all as unnamed",
            names.len()
        ));
        return unnamed;
    }
    names
        .into_iter()
        .map(|name| match check_name(&name) {
            Ok(()) => name,
            Err(e) => {
                problems.push(format!("LISTEN_FDNAMES: {e}; treating it as unnamed"));
                UNNAMED.to_string()
            }
        })
        .collect()
}

/// Comma-separated process ids, at most `GR_MAX_DRAINING` of them: a parent
/// never lists more (it refuses the restart first), so a longer list is
/// garbage, and each pid costs the heir a pidfd.
fn parse_pids(list: &str) -> Option<Vec<i32>> {
    let pids = (list.split(','))
        .map(|pid| match parse_number(pid)? {
            pid @ 1.. if pid <= i32::MAX as u64 => Some(pid as i32),
            _ => None,
        })
        .collect::<Option<Vec<i32>>>()?;
    (pids.len() <= GR_MAX_DRAINING as usize).then_some(pids)
}

/// A plain decimal number: no sign, no spaces, no overflow.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The successor's environment, less `LISTEN_PID` (which only the child can know).
///
/// Starts from `current`, drops every protocol variable in it, and describes
/// `names.len()` listeners at fds 3.., the readiness channel right after them,
/// the next generation, the restart signal `signo`, the `predecessor`'s pid
/// (ours), and the generations that may drain while it serves.
pub fn successor_env(
    current: impl IntoIterator<Item = (OsString, OsString)>,
    names: &[&str],
    generation: u64,
    signo: i32,
    predecessor: u32,
    ignored: u64,
    draining: &Draining,
) -> Vec<CString> {
    let mut env: Vec<CString> = current
        .into_iter()
        .filter(|(key, _)| !VARIABLES.iter().any(|v| OsStr::new(v) == key))
        .filter_map(|(key, value)| {
            let mut entry = key.into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry).ok()
        })
        .collect();
    let ready_fd = FIRST_FD + names.len() as RawFd;
    for entry in [
        format!("{LISTEN_FDS}={}", names.len()),
        format!("{LISTEN_FDNAMES}={}", names.join(":")),
        format!("{READY_FD}={ready_fd}"),
        format!("{GENERATION}={}", generation.saturating_add(1)),
        format!("{RESTART_SIGNAL}={signo}"),
        format!("{PREDECESSOR}={predecessor}"),
        format!("{IGNORED}={ignored:x}"),
        format!("{DRAINING}={}", draining.count()),
    ]
    .into_iter()
    .chain(match draining {
        Draining::Known(pids) => {
            let pids: Vec<String> = pids.iter().map(i32::to_string).collect();
            Some(format!("{DRAINING_PIDS}={}", pids.join(",")))
        }
        Draining::Counted(_) => None,
    }) {
        env.push(CString::new(entry).expect("protocol entries hold no NUL"));
    }
    env
}

/// Runs before `main` in a program linked with grestart (and when Python
/// loads it): notes the signal dispositions the process started with and
/// guards the restart signal (`signal::at_start`), and marks the fds handed
/// to this process close-on-exec at once.
/// The engine does so too, but only at the first grestart call; a C heir that
/// starts a helper program before that would hand it the listeners. Only
/// what [`parse`] accepts is touched (open sockets named by `LISTEN_FDS` for
/// this very pid); the environment is left for the engine to read.
#[cfg(target_env = "gnu")]
#[used]
#[unsafe(link_section = ".init_array")]
static AT_START: extern "C" fn() = at_start;

#[cfg(target_env = "gnu")]
extern "C" fn at_start() {
    // A constructor must never unwind.
    let _ = std::panic::catch_unwind(|| {
        let heritage = parse(
            |k| std::env::var(k).ok(),
            std::process::id(),
            crate::sys::fd_is_socket,
        );
        // As the engine's start reads it: a number no restart signal may be
        // (SIGSEGV, say) is not guarded.
        let inherited =
            (heritage.restart_signal).filter(|&signo| crate::signal::check(signo).is_ok());
        let restart = inherited.unwrap_or(libc::SIGUSR2);
        // The parent's grestart ignored it for the exec, unless the first
        // generation was started with it ignored.
        let parents_ignore = inherited.is_some()
            && (heritage.ignored).is_none_or(|mask| mask & crate::signal::bit(restart) == 0);
        crate::signal::at_start(restart, parents_ignore);
        for fd in heritage
            .fds
            .iter()
            .map(|(_, fd)| *fd)
            .chain(heritage.ready_fd)
        {
            // SAFETY: `parse` found it an open socket; borrowed for one fcntl.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let _ = nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            );
        }
    });
}

#[cfg(test)]
mod tests;
