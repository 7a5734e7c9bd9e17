//! The C ABI. Conversion only: check pointers, convert types, call the core,
//! map errors to `-1` + `errno` + `gr_last_error()`. No restart logic here.
//!
//! Every function runs inside `call()`, which catches panics, so a bug in
//! grestart surfaces as `-1`/`EIO` and never unwinds into C.

#![allow(non_camel_case_types)] // C names for the C header

use std::cell::RefCell;
use std::ffi::{CStr, CString, OsStr, c_char, c_int, c_void};
use std::io;
use std::os::fd::IntoRawFd;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Duration;

use crate::engine::{engine, engine_in_any_process};
use crate::error::{errno_of, fail};
use crate::log::{self, Level};
use crate::sys::fd_is_open;

/// Nothing is logged.
pub const GR_LOG_OFF: c_int = 0;
/// Only failures are logged.
pub const GR_LOG_ERROR: c_int = 1;
/// Failures and things grestart worked around are logged.
pub const GR_LOG_WARN: c_int = 2;
/// Lifecycle events are logged too (the default).
pub const GR_LOG_INFO: c_int = 3;
/// Everything, including details of each hand-over.
pub const GR_LOG_DEBUG: c_int = 4;

/// A shutdown hook: called once with the `arg` given to `gr_on_shutdown`.
/// It must not unwind (throw a C++ exception or `longjmp`) out of the call.
pub type gr_hook_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;

/// A log destination: called with a `GR_LOG_*` level, one NUL-terminated line
/// (valid only during the call) and the `arg` given to `gr_set_log_callback`.
/// It may be called from any thread, concurrently, and must not unwind.
pub type gr_log_fn =
    Option<unsafe extern "C" fn(level: c_int, message: *const c_char, arg: *mut c_void)>;

thread_local! {
    // Gone once the thread's locals are destroyed (a `gr_` call from a
    // pthread key destructor runs after them): then the message is lost,
    // never a panic, which would abort at the C boundary.
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A `void *` the application promised may be used from any thread.
struct UserArg(*mut c_void);
// SAFETY: the header documents that hooks and loggers run on other threads
// with this argument; the application is responsible for what it points to.
unsafe impl Send for UserArg {}
// SAFETY: as for Send: shared between the threads that run hooks and loggers.
unsafe impl Sync for UserArg {}

impl UserArg {
    fn get(&self) -> *mut c_void {
        self.0
    }
}

fn call(f: impl FnOnce() -> io::Result<c_int>) -> c_int {
    let result = catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(fail(
            libc::EIO,
            "internal error: grestart panicked (please report this bug)",
        ))
    });
    match result {
        Ok(value) => value,
        Err(err) => {
            let message = CString::new(err.to_string().replace('\0', " ")).unwrap_or_default();
            let _ = LAST_ERROR.try_with(|last| *last.borrow_mut() = message);
            // SAFETY: errno is this thread's own.
            unsafe { *libc::__errno_location() = errno_of(&err) };
            -1
        }
    }
}

fn ok(_: ()) -> c_int {
    0
}

/// A C string argument as UTF-8.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives `'a`.
unsafe fn text<'a>(ptr: *const c_char, what: &str) -> io::Result<&'a str> {
    if ptr.is_null() {
        return Err(fail(libc::EINVAL, format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str()
        .map_err(|_| fail(libc::EINVAL, format!("{what} is not valid UTF-8")))
}

/// An fd argument that must be open for the duration of the call.
fn open_fd<'a>(fd: c_int) -> io::Result<BorrowedFd<'a>> {
    if !fd_is_open(fd) {
        return Err(fail(libc::EBADF, format!("fd {fd} is not open")));
    }
    // SAFETY: checked open just now; the caller keeps it open during the call.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// Hands the listening socket `fd` to every future successor under `name`.
///
/// `fd` stays the caller's: grestart keeps a close-on-exec duplicate of it.
/// `name` (copied; the caller keeps ownership) must be printable ASCII without
/// `:`, 1 to 255 bytes, and not registered yet.
///
/// Returns 0, or -1 with errno: `EBADF` fd not open, `ENOTSOCK` not a socket,
/// `EINVAL` a stream socket that is not listening or a bad/NULL name,
/// `EEXIST` the name is taken, `ESHUTDOWN` this process is draining.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_register_listener(fd: c_int, name: *const c_char) -> c_int {
    call(|| {
        // SAFETY: `name` per this function's contract.
        let name = unsafe { text(name, "name") }?;
        engine()?.register(open_fd(fd)?, name).map(ok)
    })
}

/// In an heir, returns the socket fd the previous generation registered as
/// `name`, and registers it again for the next restart.
///
/// `name` is only read during the call. The returned fd belongs to the caller
/// (close-on-exec). Returns -1 with errno `ENOENT` when nothing named `name`
/// was inherited: a fresh start, so create the socket and
/// `gr_register_listener` it. Other errors: `EINVAL` bad/NULL name, `EEXIST`
/// the name is already registered.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_inherit_listener(name: *const c_char) -> c_int {
    call(|| {
        // SAFETY: `name` per this function's contract.
        let name = unsafe { text(name, "name") }?;
        match engine()?.inherit(name)? {
            Some(fd) => Ok(fd.into_raw_fd()),
            None => Err(fail(
                libc::ENOENT,
                format!("no listener named {name:?} was inherited"),
            )),
        }
    })
}

/// Inherit-or-listen in one call: returns an inherited socket bound to
/// `address`, or a new socket bound to it (listening, for streams); either way
/// registered for the next restart.
///
/// `address` is `tcp://HOST:PORT` (also `tcp4://`, `tcp6://`, and `tcp://:PORT`
/// for every address), `udp://HOST:PORT`, `unix:/path` or `unix:@abstract`.
/// Inherited sockets are matched by the address they are bound to, so the names
/// systemd gave them do not matter. `name` may be NULL: the address with every
/// `:` replaced by `_`. Both strings are copied. The returned fd belongs to the
/// caller (close-on-exec).
///
/// Returns the fd, or -1 with errno: `EINVAL` bad address or name, `EEXIST`
/// the name is taken, or the errno of the failed `bind`/`listen` (e.g.
/// `EADDRINUSE`). A Unix socket file nobody listens on (left by a crash) is
/// replaced; one somebody listens on never is.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_listen(address: *const c_char, name: *const c_char) -> c_int {
    call(|| {
        // SAFETY: both pointers per this function's contract.
        let address = unsafe { text(address, "address") }?;
        let name = if name.is_null() {
            None
        } else {
            // SAFETY: as above.
            Some(unsafe { text(name, "name") }?)
        };
        Ok(engine()?.listen(address, name)?.into_raw_fd())
    })
}

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

/// Makes `signo` the restart signal (default `SIGUSR2`); the previous restart
/// signal gets back the disposition it had before grestart installed it.
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

/// Says this process is serving. In an heir the previous generation then
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
/// drains), or -1 with errno: `EAGAIN` not ready yet, or 8 older generations
/// are still draining; `EALREADY` another restart is running; `ESHUTDOWN` draining;
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

/// In a draining process, hands the idle connected socket `fd`, accepted on
/// the listener named `listener` (NULL: the one whose address it was
/// accepted on; only read during the call), to the successor, which serves
/// it as if it had just accepted it. On success close your `fd`: that closes
/// nothing, the successor holds the connection. Idle means the application
/// has nothing of it buffered (no request read and not answered, no response
/// pending); bytes the client sends meanwhile wait in the kernel for the
/// successor.
///
/// Returns 0, or -1 with errno `ESRCH` when no successor takes connections (a
/// plain shutdown, a failed restart, a successor that never called
/// gr_adopt_fd or runs an older grestart, or one that took none within 2 s):
/// then close the connection as you would without grestart. `EINVAL`: no
/// listener of that name was handed over, or `fd` is no stream socket;
/// `ENOTCONN`: it is not connected.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_hand_over(fd: c_int, listener: *const c_char) -> c_int {
    call(|| {
        let name = match listener.is_null() {
            true => None,
            // SAFETY: `listener` per this function's contract.
            false => Some(unsafe { text(listener, "listener") }?),
        };
        engine()?.hand_over(open_fd(fd)?, name).map(ok)
    })
}

/// Returns an fd that is readable while connections handed over by the
/// previous generation wait for gr_adopt, for an event loop (do not read or
/// close it), or -1 with errno when it cannot be made (e.g. `EMFILE`).
/// Calling it tells the previous generation that this process adopts
/// connections: call it before gr_ready, so that it hands them over from the
/// start. On a fresh start the fd never turns readable.
#[unsafe(no_mangle)]
pub extern "C" fn gr_adopt_fd() -> c_int {
    call(|| Ok(engine()?.adopt_fd()?.as_raw_fd()))
}

/// Returns the next connection handed over by the previous generation, a
/// close-on-exec fd the caller owns and serves exactly as a connection just
/// accepted on its listener, waiting up to `timeout_ms` for one (0: not at
/// all, -1: as long as it takes). The name of the listener it was accepted on
/// is copied to `listener` (`size` bytes, NUL-terminated; `listener` may be
/// NULL when `size` is 0). Returns -1 with errno `EAGAIN` when none came in
/// time, `ERANGE` when the name does not fit (the connection stays queued).
/// The first call says this process adopts connections, as gr_adopt_fd does.
/// Unlike `gr_accept`'s, the connection does not count as work in flight (an
/// event loop keeps its own count): a server that lets `gr_shutdown` wait for
/// its connections, as `gr_accept`'s, adopts with `gr_adopt_counted`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_adopt(listener: *mut c_char, size: usize, timeout_ms: c_int) -> c_int {
    // SAFETY: the caller's contract for `listener` and `size`, as documented.
    unsafe { adopt(listener, size, timeout_ms, false) }
}

/// `gr_adopt`, and the connection counts as work in flight, as `gr_accept`'s
/// does: call `gr_work_end` once it is finished (after closing it), because
/// `gr_shutdown` waits for that. For a server that serves each connection on
/// a thread of its own and lets `gr_shutdown` wait for them; an event loop
/// that keeps its own count uses `gr_adopt`. Returns and fails as `gr_adopt`
/// (a connection that fails to come counts nothing).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gr_adopt_counted(
    listener: *mut c_char,
    size: usize,
    timeout_ms: c_int,
) -> c_int {
    // SAFETY: the caller's contract for `listener` and `size`, as documented.
    unsafe { adopt(listener, size, timeout_ms, true) }
}

/// `gr_adopt` and `gr_adopt_counted`: `counted`, the connection is work in flight.
///
/// # Safety
/// `listener` is NULL with `size` 0, or has `size` writable bytes.
unsafe fn adopt(listener: *mut c_char, size: usize, timeout_ms: c_int, counted: bool) -> c_int {
    call(|| {
        if listener.is_null() && size > 0 {
            return Err(fail(libc::EINVAL, "listener is NULL but size is not 0"));
        }
        let timeout = u64::try_from(timeout_ms).ok().map(Duration::from_millis);
        let fits = |name: &str| size == 0 || name.len() < size;
        let engine = engine()?;
        let Some(handed) = engine.adopt(timeout, fits)? else {
            return Err(fail(libc::EAGAIN, "no connection was handed over in time"));
        };
        if size > 0 {
            // SAFETY: the caller gave `size` writable bytes at `listener`;
            // `fits` checked the name and its NUL fit.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    handed.listener.as_ptr(),
                    listener.cast::<u8>(),
                    handed.listener.len(),
                );
                *listener.add(handed.listener.len()) = 0;
            }
        }
        if counted {
            // Counted before the caller holds it, as gr_accept does.
            engine.begin_work();
        }
        Ok(handed.connection.into_raw_fd())
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

/// Waits for a connection on the listening socket `listener` and accepts it;
/// returns -1 with errno `ESHUTDOWN` as soon as this process must drain, so
/// that a blocking accept loop ends when a successor serves (a thread blocked
/// in plain `accept` would go on accepting).
///
/// The returned connection is blocking and close-on-exec, belongs to the
/// caller, and counts as work in flight: call `gr_work_end` once it is
/// finished (after closing it), because `gr_shutdown` waits for that. The
/// listener is made non-blocking (a flag every generation shares). May be
/// called from several threads, and from a forked worker. Other errors (e.g.
/// `EMFILE`, `EBADF`) concern this one accept: the loop may go on. Out of fds
/// or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) it fails only after a
/// pause (5 ms, doubled while it lasts, up to 1 s), so that loop does not spin.
#[unsafe(no_mangle)]
pub extern "C" fn gr_accept(listener: c_int) -> c_int {
    call(|| {
        let engine = engine_in_any_process()?;
        Ok(crate::serve::accept(engine, open_fd(listener)?)?.into_raw_fd())
    })
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

/// Sets how long a successor may take to call `gr_ready` before it is killed
/// (default 60000 ms). Returns 0, or -1 with errno `EINVAL` for 0.
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

/// Logs up to `level` (`GR_LOG_OFF` .. `GR_LOG_DEBUG`); the default is
/// `GRESTART_LOG` from the environment, else `GR_LOG_INFO`. Returns 0, or -1
/// with errno `EINVAL` for another number.
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_log_level(level: c_int) -> c_int {
    call(|| {
        if level != GR_LOG_OFF && Level::from_number(level).is_none() {
            return Err(fail(
                libc::EINVAL,
                format!("log level {level} is not GR_LOG_OFF..GR_LOG_DEBUG"),
            ));
        }
        log::set_level(Level::from_number(level));
        Ok(0)
    })
}

/// Sends log lines to `callback(level, line, arg)` instead of stderr (NULL:
/// back to stderr). The callback may run on any thread. Returns 0 once no
/// thread runs the previous callback any more, so its `arg` may be freed
/// then; called from inside a callback, it returns at once (that callback is
/// still running on this thread).
#[unsafe(no_mangle)]
pub extern "C" fn gr_set_log_callback(callback: gr_log_fn, arg: *mut c_void) -> c_int {
    let arg = UserArg(arg);
    call(|| {
        let logger = callback.map(|callback| {
            let forward = move |level: Level, line: &str| {
                let line = CString::new(line.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the application's callback, a valid C string, its argument.
                unsafe { callback(level as c_int, line.as_ptr(), arg.get()) };
            };
            std::sync::Arc::new(forward) as log::Logger
        });
        log::set_logger(logger);
        Ok(0)
    })
}

/// Returns a message describing the last failure of a `gr_` function on this
/// thread ("" if none). The string belongs to grestart and stays valid until
/// the next failing `gr_` call on this thread. Called while the thread exits
/// (from a thread-local destructor), it may return "".
#[unsafe(no_mangle)]
pub extern "C" fn gr_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|last| last.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// Returns this library's version, e.g. "0.1.0" (static storage; equal to
/// `GR_VERSION` of the header it was built with).
#[unsafe(no_mangle)]
pub extern "C" fn gr_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
