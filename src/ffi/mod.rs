//! The C ABI. Conversion only: check pointers, convert types, call the core,
//! map errors to `-1` + `errno` + `gr_last_error()`. No restart logic here.
//!
//! Every function runs inside `call`, which catches panics, so a bug in
//! grestart surfaces as `-1`/`EIO` and never unwinds into C.
//!
//! One file per area, in the header's order: `listeners.rs`, `lifecycle.rs`
//! (ready, restart, drain, work in flight, shutdown), `connections.rs`
//! (accept, hand over, adopt), `settings.rs` and `logging.rs`. What they share
//! is here, with `gr_last_error` and `gr_version` (cbindgen emits a module's
//! own items before its submodules', so these two open the header).

#![allow(non_camel_case_types)] // C names for the C header

// cbindgen writes the header in the order of these declarations, each a
// group of its own so that rustfmt keeps the order.
mod listeners;

mod lifecycle;

mod connections;

mod settings;

mod logging;

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::error::{errno_of, fail};
use crate::sys::fd_is_open;

// Every item keeps its path, `grestart::ffi::gr_ready` and the like.
pub use connections::*;
pub use lifecycle::*;
pub use listeners::*;
pub use logging::*;
pub use settings::*;

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
