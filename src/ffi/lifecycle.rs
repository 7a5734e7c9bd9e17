//! One generation's lifecycle: shutdown hooks, ready, restart, the drain and
//! the wait for it, work in flight, shutdown, the generation number.

use std::ffi::{c_int, c_void};
use std::os::fd::AsRawFd;
use std::time::Duration;

use super::{UserArg, call, ok};
use crate::engine::{engine, engine_in_any_process};
use crate::error::fail;

/// A shutdown hook: called once with the `arg` given to `gr_on_shutdown`.
/// It must not unwind (throw a C++ exception or `longjmp`) out of the call.
pub type gr_hook_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

/// Runs `hook(arg)` once when this process shuts down (in `gr_shutdown`, after
/// the drain). Hooks run in reverse order of registration, on the thread that
/// calls `gr_shutdown` (or grestart's drain-deadline thread).
///
/// `arg` is passed through untouched and may be NULL. Returns 0, or -1 with
/// errno `EINVAL` (NULL hook) or `ESHUTDOWN` (the hooks already ran).
#[unsafe(no_mangle)]
pub extern "C" fn gr_on_shutdown(hook: gr_hook_fn, arg: *mut c_void) -> c_int {
    let arg = UserArg(arg);
    call(|| {
        let hook = hook.ok_or_else(|| fail(libc::EINVAL, "hook is NULL"))?;
        // SAFETY: the application's hook with the application's argument.
        let run = move || unsafe { hook(arg.get()) };
        engine()?.on_shutdown(Box::new(run)).map(ok)
    })
}

/// Says this process is serving. In a successor the previous generation then
/// starts to drain; under systemd, `MAINPID=` and `READY=1` are sent; the PID
/// file is written; inherited sockets nobody claimed are closed.
///
/// Returns 0 (also when already ready), or -1 with errno `ESHUTDOWN` when this
/// process is already draining.
#[unsafe(no_mangle)]
pub extern "C" fn gr_ready() -> c_int {
    call(|| engine()?.ready().map(ok))
}

/// Restarts now, as the restart signal would, and blocks until the outcome.
///
/// Returns the new generation's pid once it is ready (this process then
/// drains), or -1 with errno: `EAGAIN` not ready yet; `EBUSY` `GR_MAX_DRAINING` older
/// generations are still draining; `EALREADY` another restart is running; `ESHUTDOWN` draining;
/// `ENOENT`/`EACCES` the executable cannot be run; `ECHILD` the successor
/// exited before it was ready; `ETIMEDOUT` it was not ready in time and was
/// killed. On failure this process serves on, unchanged.
#[unsafe(no_mangle)]
pub extern "C" fn gr_restart() -> c_int {
    call(|| engine()?.restart())
}

/// Returns an fd that turns readable (and stays readable) when this process
/// must drain: poll it in the event loop next to the listeners.
///
/// The fd belongs to grestart: do not read from it or close it. A child forked
/// after grestart started (a prefork worker) shares it with its master, so the
/// worker sees the master's drain. Returns the fd, or -1 with errno when
/// grestart could not start (e.g. `EMFILE`).
#[unsafe(no_mangle)]
pub extern "C" fn gr_shutdown_fd() -> c_int {
    call(|| {
        let engine = engine_in_any_process()?;
        Ok(engine.shutdown_fd().as_raw_fd())
    })
}

/// Blocks until this process must drain, for at most `timeout_ms`
/// milliseconds (a negative value waits forever): the blocking form of
/// polling `gr_shutdown_fd`. Works in a forked worker too, which sees its
/// master's drain.
///
/// Returns 1 when this process must drain, 0 when the time passed first, or -1
/// with errno when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_wait_shutdown(timeout_ms: c_int) -> c_int {
    let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
    call(|| Ok(c_int::from(engine_in_any_process()?.wait_shutdown(timeout))))
}

/// Counts one more piece of work in flight (a request being served, a job
/// being finished): `gr_shutdown` waits until every one has ended with
/// `gr_work_end`, or the drain deadline passed. Returns 0, or -1 with errno
/// when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_work_begin() -> c_int {
    call(|| {
        engine_in_any_process()?.begin_work();
        Ok(0)
    })
}

/// Ends one piece of work counted by `gr_accept`, `gr_adopt_counted` or
/// `gr_work_begin`. Returns 0, or -1 with errno `EINVAL` when no work is in
/// flight.
#[unsafe(no_mangle)]
pub extern "C" fn gr_work_end() -> c_int {
    call(|| engine_in_any_process()?.end_work().map(ok))
}

/// Starts draining if not already, stops a successor that is still starting
/// (killed and reaped: it must not serve once we were told to stop), waits
/// until no work is in flight (see `gr_work_begin`), then runs the shutdown
/// hooks in reverse order of registration, once. A second caller, on any
/// thread, returns when the hooks have finished; a hook that calls it (a
/// cleanup helper) gets 0 at once.
///
/// Returns 0, or -1 with errno when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_shutdown() -> c_int {
    call(|| {
        engine()?.shutdown();
        Ok(0)
    })
}

/// Returns this process's generation: 1 for a fresh start, one more with every
/// hand-over; or -1 with errno when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_generation() -> i64 {
    let mut generation = 0;
    let status = call(|| {
        generation = engine_in_any_process()?.generation() as i64;
        Ok(0)
    });
    if status < 0 { -1 } else { generation }
}
