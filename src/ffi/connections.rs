//! Connections: the accept that ends on the drain, idle connections handed to
//! the successor, and those adopted from the predecessor.

use std::ffi::{c_char, c_int};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::time::Duration;

use super::{call, open_fd, text};
use crate::engine::{engine, engine_in_any_process};
use crate::error::fail;
use crate::handover::Offer;

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
        match crate::serve::accept(engine, open_fd(listener)?)? {
            Some(connection) => Ok(connection.into_raw_fd()),
            None => Err(fail(
                libc::ESHUTDOWN,
                "this process is draining: its successor accepts the connections now",
            )),
        }
    })
}

/// In a draining process, hands the idle connected socket `fd`, accepted on
/// the listener named `listener` (NULL: the one whose address it was
/// accepted on; only read during the call), to the successor, which serves
/// it as if it had just accepted it. On success close your `fd`: that closes
/// nothing, grestart holds the connection until the successor does (it goes
/// with others in one message, within half a millisecond, at `gr_shutdown`, or
/// at the latest when the process exits). Idle means the application
/// has nothing of it buffered (no request read and not answered, no response
/// pending); bytes the client sends meanwhile wait in the kernel for the
/// successor.
///
/// Returns 0, or -1 with errno `ESRCH` when no successor takes connections (a
/// plain shutdown, a failed restart, a successor that never called
/// gr_adopt_fd or runs an older grestart, or one that took none within `GR_HAND_OVER_BOUND_MS`):
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
        match engine()?.hand_over(open_fd(fd)?, name)? {
            Offer::Taken => Ok(0),
            Offer::Declined(why) => Err(fail(libc::ESRCH, why)),
        }
    })
}

/// Returns 1 when a ready successor takes the connections handed to it (a
/// `gr_hand_over` now would hand the connection over), 0 when none does: no
/// restart, a failed one, a successor that does not adopt, or one that has
/// exited or stopped taking them. For a draining server deciding whether to
/// keep an idle connection for the hand-over or to answer `Connection: close`.
/// Returns -1 with errno when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_successor_adopts() -> c_int {
    call(|| Ok(c_int::from(engine()?.successor_adopts())))
}

/// Returns an fd that is readable exactly while no work is in flight in this
/// process (every connection from `gr_accept` and `gr_adopt_counted` ended,
/// every `gr_work_begin` matched by its `gr_work_end`), for an event loop that
/// waits, as it drains, for its last connection (do not read or close it).
/// Returns -1 with errno `EPERM` in a forked worker (it counts its own work,
/// which nothing polls) or when grestart could not start.
#[unsafe(no_mangle)]
pub extern "C" fn gr_idle_fd() -> c_int {
    call(|| Ok(engine()?.idle_fd().as_raw_fd()))
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
