//! How this process was started, so that a successor is started the same way.
//!
//! Deploys flip a symlink (`/srv/app/current -> releases/v42`) and then signal
//! the server, so the successor must be exec'd through the path the operator
//! used, not through `/proc/self/exe`, which names the old release's inode:
//!
//! * an `argv[0]` with a `/` is resolved against the start-up directory;
//! * a bare `argv[0]` is looked up on `PATH`, as the shell did;
//! * the start-up directory is `$PWD` when it names the same directory as
//!   `getcwd()` (the shell keeps the symlinked path there; `getcwd()` gives
//!   the resolved one, which a deploy may delete after the flip);
//! * only when `argv[0]` does not lead to the running binary (a program that
//!   set it to something else) is `/proc/self/exe` used; a release the
//!   launcher restored from a kept copy (`GRESTART_RESTORED`) runs another
//!   binary than its `argv[0]` on purpose, and restarts through it.
//!
//! All of it is captured by a constructor before `main` (or when the library is
//! loaded), so an application that changes directory or rewrites its argv
//! (setproctitle) first still restarts right.

use std::ffi::{CStr, CString, OsStr, OsString, c_char, c_int};
use std::fmt;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use once_cell::sync::OnceCell;

/// What a successor is started as.
#[derive(Clone, Debug)]
pub(crate) struct Origin {
    pub exe: CString,
    pub argv: Vec<CString>,
    pub cwd: CString,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in {}",
            self.exe.to_string_lossy(),
            self.cwd.to_string_lossy()
        )
    }
}

static CAPTURED: OnceCell<Result<Origin, String>> = OnceCell::new();

/// The origin captured at start-up (or, where no constructor ran, now).
pub(crate) fn get() -> Result<Origin, String> {
    CAPTURED
        .get_or_init(|| {
            let cmdline = std::fs::read("/proc/self/cmdline")
                .map_err(|e| format!("/proc/self/cmdline: {e}"))?;
            let argv = (cmdline.strip_suffix(&[0]).unwrap_or(&cmdline))
                .split(|&b| b == 0)
                .map(<[u8]>::to_vec)
                .collect();
            capture(argv)
        })
        .clone()
}

/// Runs before `main` in a program linked with grestart, and when `dlopen`
/// loads it (Python's ctypes): glibc passes `argc`, `argv` and `envp` to
/// `.init_array` functions.
#[cfg(target_env = "gnu")]
#[used]
#[unsafe(link_section = ".init_array")]
static CAPTURE_AT_START: extern "C" fn(c_int, *const *const c_char, *const *const c_char) =
    capture_at_start;

#[cfg(target_env = "gnu")]
extern "C" fn capture_at_start(
    argc: c_int,
    argv: *const *const c_char,
    _envp: *const *const c_char,
) {
    // A constructor must never unwind; a failure leaves `get` to try later.
    let _ = std::panic::catch_unwind(|| {
        // A watched generation re-executed itself to supervise its successors.
        crate::stub::run_if_asked();
        if argv.is_null() || argc < 1 {
            return;
        }
        let args = (0..argc as usize)
            // SAFETY: glibc passes the program's argc and argv, argv[i] being
            // NUL-terminated strings for i < argc.
            .map(|i| unsafe { *argv.add(i) })
            .take_while(|arg| !arg.is_null())
            // SAFETY: non-NULL and NUL-terminated, see above.
            .map(|arg| unsafe { CStr::from_ptr(arg) }.to_bytes().to_vec())
            .collect();
        let _ = CAPTURED.set(capture(args));
    });
}

fn capture(argv: Vec<Vec<u8>>) -> Result<Origin, String> {
    // When /proc/self/exe cannot be read no candidate matches, and the
    // fallback below says why.
    // A kept copy of an older release (the launcher's rollback) runs from an
    // fd: its argv[0] leads to the release on disk, which its restarts start.
    let restored = std::env::var_os(crate::protocol::RESTORED).is_some();
    let is_running_binary = |candidate: &Path| {
        same_file(candidate, Path::new("/proc/self/exe")) || (restored && candidate.is_file())
    };
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    let pwd = std::env::var_os("PWD").map(PathBuf::from);
    let start_dir = start_dir(pwd, cwd, same_file);
    let argv0 = argv
        .first()
        .map(|a| OsStr::from_bytes(a))
        .unwrap_or_default();
    let path_var = std::env::var_os("PATH");
    let exe = match as_invoked(argv0, &start_dir, path_var.as_deref(), is_running_binary) {
        Some(exe) => exe,
        None => proc_self_exe()?,
    };
    let c = |bytes: Vec<u8>| CString::new(bytes).map_err(|_| "a path contains NUL".to_string());
    Ok(Origin {
        exe: c(exe.into_os_string().into_vec())?,
        argv: argv.into_iter().map(c).collect::<Result<_, _>>()?,
        cwd: c(start_dir.into_os_string().into_vec())?,
    })
}

/// `$PWD` when it is an absolute path to the same directory as `cwd`, else `cwd`.
fn start_dir(pwd: Option<PathBuf>, cwd: PathBuf, same: impl Fn(&Path, &Path) -> bool) -> PathBuf {
    match pwd {
        Some(pwd) if pwd.is_absolute() && same(&pwd, &cwd) => pwd,
        _ => cwd,
    }
}

/// The path the program was started through, if `argv0` leads to the running
/// binary: against `start_dir` when it has a `/`, else on `path_var` as a shell
/// searches it (an empty entry is the current directory).
fn as_invoked(
    argv0: &OsStr,
    start_dir: &Path,
    path_var: Option<&OsStr>,
    is_running_binary: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    if argv0.as_bytes().contains(&b'/') {
        let candidate = start_dir.join(argv0);
        return is_running_binary(&candidate).then_some(candidate);
    }
    path_var?
        .as_bytes()
        .split(|&b| b == b':')
        .map(|dir| start_dir.join(OsStr::from_bytes(if dir.is_empty() { b"." } else { dir })))
        .map(|dir| dir.join(argv0))
        .find(|candidate| is_running_binary(candidate))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The running binary's path. After a rename over it the link reads
/// "PATH (deleted)"; PATH is where the new binary is.
fn proc_self_exe() -> Result<PathBuf, String> {
    let exe = std::fs::read_link("/proc/self/exe").map_err(|e| format!("/proc/self/exe: {e}"))?;
    let mut exe = exe.into_os_string().into_vec();
    if let Some(stripped) = exe.strip_suffix(b" (deleted)") {
        exe.truncate(stripped.len());
    }
    Ok(PathBuf::from(OsString::from_vec(exe)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoked(argv0: &str, path: Option<&str>, binary: &str) -> Option<PathBuf> {
        as_invoked(
            OsStr::new(argv0),
            Path::new("/srv/app/current"),
            path.map(OsStr::new),
            |p| p == Path::new(binary),
        )
    }

    #[test]
    fn argv0_with_a_slash_is_resolved_against_the_start_up_directory() {
        let srv = "/srv/app/current/srv";
        assert_eq!(invoked("/srv/app/current/srv", None, srv), Some(srv.into()));
        assert_eq!(
            invoked("./srv", None, "/srv/app/current/./srv"),
            Some("/srv/app/current/./srv".into())
        );
        assert_eq!(
            invoked("bin/srv", None, "/srv/app/current/bin/srv"),
            Some("/srv/app/current/bin/srv".into())
        );
        // argv[0] set to something else by the program: no guess.
        assert_eq!(invoked("/usr/bin/other", None, srv), None);
        assert_eq!(invoked("", None, srv), None);
    }

    #[test]
    fn a_bare_name_is_looked_up_on_path_like_the_shell() {
        let path = Some("/usr/bin::bin:/srv/app/current");
        assert_eq!(
            invoked("srv", path, "/srv/app/current/srv"),
            Some("/srv/app/current/srv".into())
        );
        // An empty entry is the current directory, a relative one is below it.
        assert_eq!(
            invoked("srv", path, "/srv/app/current/./srv"),
            Some("/srv/app/current/./srv".into())
        );
        assert_eq!(
            invoked("srv", path, "/srv/app/current/bin/srv"),
            Some("/srv/app/current/bin/srv".into())
        );
        assert_eq!(invoked("srv", None, "/srv/app/current/srv"), None);
        assert_eq!(
            invoked("srv", Some("/usr/bin"), "/srv/app/current/srv"),
            None
        );
    }

    #[test]
    fn pwd_wins_only_when_it_is_the_same_directory() {
        let cwd = PathBuf::from("/srv/app/releases/v1");
        let same = |_: &Path, _: &Path| true;
        let other = |_: &Path, _: &Path| false;
        let pwd = Some(PathBuf::from("/srv/app/current"));
        assert_eq!(
            start_dir(pwd.clone(), cwd.clone(), same),
            PathBuf::from("/srv/app/current")
        );
        assert_eq!(start_dir(pwd, cwd.clone(), other), cwd);
        assert_eq!(start_dir(Some("relative".into()), cwd.clone(), same), cwd);
        assert_eq!(start_dir(None, cwd.clone(), same), cwd);
    }

    #[test]
    fn this_test_binary_was_captured_before_main() {
        let origin = get().expect("origin");
        // cargo runs test binaries by absolute path.
        assert_eq!(
            std::fs::canonicalize(Path::new(OsStr::from_bytes(origin.exe.as_bytes()))).unwrap(),
            std::fs::canonicalize("/proc/self/exe").unwrap()
        );
        assert_eq!(origin.argv.len(), std::env::args().count());
    }
}
