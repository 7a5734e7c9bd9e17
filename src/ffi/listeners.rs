//! Listeners: registered for every successor, inherited, or inherit-or-listen.

use std::ffi::{c_char, c_int};
use std::os::fd::IntoRawFd;

use super::{call, ok, open_fd, text};
use crate::engine::engine;
use crate::error::fail;

/// Hands the listening socket `fd` to every future successor under `name`.
///
/// `fd` stays the caller's: grestart keeps a close-on-exec duplicate of it.
/// `name` (copied; the caller keeps ownership) must be printable ASCII without
/// `:`, 1 to `GR_NAME_MAX` bytes, and not registered yet.
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

/// In a successor, returns the socket fd the previous generation registered as
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
