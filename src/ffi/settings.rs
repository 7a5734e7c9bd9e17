//! Settings: the restart and stop signals, the ready timeout, the drain
//! deadline, the PID file and the executable successors start from.

use std::ffi::{CStr, OsStr, c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::{call, ok};
use crate::engine::engine;
use crate::error::fail;

/// Makes `signo` the restart signal (default `SIGUSR2`); the previous restart
/// signal gets back the disposition it had before grestart installed it (if a
/// restart runs, when it is over: until then a restart signal sent by its old
/// number still joins that restart).
///
/// Returns 0, or -1 with errno `EINVAL` for `SIGKILL`, `SIGSTOP`, fault signals
/// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP`, `SIGSYS`), signals the
/// C library reserves, and numbers that are no signal.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_signal(signo: c_int) -> c_int {
    call(|| crate::set_signal(signo).map(ok))
}

/// Makes `signo` the stop signal (0: none, the default): when it arrives this
/// process drains as after a hand-over (the shutdown fd turns readable,
/// `gr_wait_shutdown` returns) and the application finishes with
/// `gr_shutdown`, as it does after a restart. Typically `SIGTERM`, so that
/// `docker stop` and `systemctl stop` end the server gracefully. The previous
/// stop signal gets back its old disposition. A child forked after this call
/// (a prefork worker) still dies of the signal as it would without grestart.
///
/// Returns 0, or -1 with errno `EINVAL` for the signals `gr_set_signal`
/// refuses and for the restart signal.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_stop_signal(signo: c_int) -> c_int {
    call(|| crate::set_stop_signal((signo != 0).then_some(signo)).map(ok))
}

/// Sets how long a successor may take to call `gr_ready` before it is killed
/// (default `GR_DEFAULT_READY_TIMEOUT_MS`). Returns 0, or -1 with errno `EINVAL` for 0.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_ready_timeout_ms(timeout_ms: u64) -> c_int {
    call(|| {
        engine()?
            .set_ready_timeout(Duration::from_millis(timeout_ms))
            .map(ok)
    })
}

/// Sets how long a draining process may take: when `deadline_ms` milliseconds
/// after the drain began it has not exited, grestart runs the hooks that have
/// not run, flushes the standard output, and exits the process with status 0.
/// When the application's own `gr_shutdown` ran (or runs) the hooks, the
/// deadline leaves the exit to the application. 0 (the default) means no
/// deadline. Applies to drains that begin after the call. Returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_drain_deadline_ms(deadline_ms: u64) -> c_int {
    let deadline = (deadline_ms > 0).then(|| Duration::from_millis(deadline_ms));
    call(|| {
        engine()?.set_drain_deadline(deadline);
        Ok(0)
    })
}

/// Sets how long this generation asks to be kept on probation after it took
/// over, when it runs under `grestart run` (which otherwise applies its
/// `--probation`, default 10 s): if it dies or fails the launcher's health
/// check within that, the launcher starts the last good release in its place,
/// on the same sockets. 0: no probation. Sent with the notification that it is
/// ready, so it applies from the next `gr_ready`; without a launcher it has no
/// effect. Returns 0.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_probation_ms(probation_ms: u64) -> c_int {
    call(|| {
        engine()?.set_probation(Duration::from_millis(probation_ms));
        Ok(0)
    })
}

/// Sets the PID file each generation writes atomically when it becomes ready
/// (NULL: none, the default). `path` is copied. After a failed restart (whose
/// successor may have written it) the serving process writes it again. A
/// generation that hands over never removes it; one that shuts down without a
/// successor removes it if it still names that process (a regular file, never
/// read through a symlink).
/// Returns 0, or -1 with errno `EINVAL` for an empty path.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_set_pid_file(path: *const c_char) -> c_int {
    call(|| {
        let path = if path.is_null() {
            None
        } else {
            // SAFETY: non-NULL and NUL-terminated per this function's contract.
            let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
            if bytes.is_empty() {
                return Err(fail(libc::EINVAL, "the PID file path is empty"));
            }
            Some(Path::new(OsStr::from_bytes(bytes)).to_path_buf())
        };
        engine()?.set_pid_file(path);
        Ok(0)
    })
}

/// Starts successors from `path` instead of the executable this process was
/// started from, with `argv` (a NULL-terminated array, copied) or, when `argv`
/// is NULL, this process's own arguments. Returns 0, or -1 with errno `EINVAL`
/// when `path` is NULL or empty.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_set_executable(
    path: *const c_char,
    argv: *const *const c_char,
) -> c_int {
    call(|| {
        if path.is_null() {
            return Err(fail(libc::EINVAL, "path is NULL"));
        }
        // SAFETY: non-NULL and NUL-terminated per this function's contract.
        let exe = unsafe { CStr::from_ptr(path) }.to_owned();
        if exe.is_empty() {
            return Err(fail(libc::EINVAL, "path is empty"));
        }
        let argv = (!argv.is_null()).then(|| {
            let mut args = Vec::new();
            // SAFETY: a NULL-terminated array of C strings per the contract.
            unsafe {
                while !(*argv.add(args.len())).is_null() {
                    args.push(CStr::from_ptr(*argv.add(args.len())).to_owned());
                }
            }
            args
        });
        engine()?.set_executable(exe, argv);
        Ok(0)
    })
}
